import torch

from sibeatgan.models import build_models, count_params


def test_published_sizes():
    g, d = build_models(nc=1, nz=50, width=32, seed=0)
    assert count_params(g) == 1_908_800
    assert count_params(d) == 703_488


def test_shapes_and_features():
    g, d = build_models(nc=2, nz=50, width=16, seed=0)
    x = torch.randn(4, 2, 320)
    x_rec, maps = g.forward_with_features(x)
    assert x_rec.shape == x.shape and x_rec.abs().max() <= 1
    assert [tuple(m.shape[1:]) for m in maps] == [
        (16, 160),
        (32, 80),
        (64, 40),
        (128, 20),
        (256, 10),
    ]
    assert d(x).shape == (4,) and ((d(x) > 0) & (d(x) < 1)).all()
    assert d.features(x).shape == (4, 256, 10)


def test_half_width_has_about_a_quarter_of_the_multiply_adds():
    def macs(width):
        g, _ = build_models(1, 50, width, 0)
        total = 0

        def hook(m, inp, out):
            nonlocal total
            # each weight is used once per output (conv) or input (transposed conv) position
            positions = out.shape[-1] if isinstance(m, torch.nn.Conv1d) else inp[0].shape[-1]
            total += positions * m.weight.numel()

        for m in g.modules():
            if isinstance(m, torch.nn.Conv1d | torch.nn.ConvTranspose1d):
                m.register_forward_hook(hook)
        g(torch.randn(1, 1, 320))
        return total

    ratio = macs(16) / macs(32)
    assert 0.2 < ratio < 0.3
