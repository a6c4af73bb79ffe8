import pytest
import torch
import torch.nn.functional as F

from sibeatgan.models import (
    PLAIN,
    Conv1d,
    ConvTranspose1d,
    build_models,
    count_params,
    to_1d,
    to_2d,
)


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


@pytest.mark.parametrize(
    "layer_cls, torch_op, c_in, c_out, k, stride, pad, length",
    [
        (Conv1d, F.conv1d, 1, 8, 4, 2, 1, 32),  # one input channel: windows @ weight
        (Conv1d, F.conv1d, 6, 8, 4, 2, 1, 32),  # oneDNN, channels-last
        (Conv1d, F.conv1d, 6, 5, 10, 1, 0, 10),  # kernel spans the input: one matmul
        (ConvTranspose1d, F.conv_transpose1d, 5, 8, 10, 1, 0, 1),  # from one position: matmul
        (ConvTranspose1d, F.conv_transpose1d, 8, 4, 4, 2, 1, 10),
        (ConvTranspose1d, F.conv_transpose1d, 4, 1, 4, 2, 1, 20),
    ],
)
@pytest.mark.parametrize("bias", [False, True])
def test_layers_match_torch_1d_ops(layer_cls, torch_op, c_in, c_out, k, stride, pad, length, bias):
    layer = layer_cls(c_in, c_out, k, stride, pad, bias=bias)
    x = torch.randn(3, c_in, length, requires_grad=True)
    ours = to_1d(layer(to_2d(x)))
    ref = torch_op(x, layer.weight, layer.bias, stride, pad)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(ours.square().sum(), [x, layer.weight])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, layer.weight])
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_networks_equal_the_plain_1d_networks():
    """The same state dict in torch's own 1-D layers (the original network) computes the same
    outputs and gradients, in train mode (batch statistics) and in eval mode."""
    g, d = build_models(1, 50, 8, seed=0)
    g_plain, d_plain = build_models(1, 50, 8, seed=1, layers=PLAIN)
    g_plain.load_state_dict(g.state_dict())
    d_plain.load_state_dict(d.state_dict())
    x = torch.randn(6, 1, 320)
    for train in (True, False):
        for model, plain in ((g, g_plain), (d, d_plain)):
            model.train(train)
            plain.train(train)
            out, ref = model(x), plain(x)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g.train()
    g_plain.train()
    x_rec, maps = g.forward_with_features(x)
    ref_rec, ref_maps = g_plain.forward_with_features(x)
    for a, b in zip(maps, ref_maps, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    loss, ref_loss = (x_rec - x).square().mean(), (ref_rec - x).square().mean()
    grads = torch.autograd.grad(loss, list(g.parameters()))
    ref_grads = torch.autograd.grad(ref_loss, list(g_plain.parameters()))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
