import numpy as np
import pytest
import torch

from sibeatgan import train_state
from sibeatgan.config import TrainCfg
from sibeatgan.models import build_models
from sibeatgan.train import fit, train_step


def toy_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 320)
    normal = np.sin(2 * np.pi * 3 * t)[None, None] + 0.05 * rng.standard_normal((n, 1, 320))
    odd = np.sign(np.sin(2 * np.pi * 7 * t))[None, None] + 0.05 * rng.standard_normal((32, 1, 320))
    val_x = np.concatenate([normal[:32], odd]).astype(np.float32)
    val_y = np.array([0] * 32 + [1] * 32)
    return normal.astype(np.float32).clip(-1, 1), val_x.clip(-1, 1), val_y


def cfg(**kw):
    base = dict(epochs=2, batch_size=16, log_every=1, threads=1)
    return TrainCfg(**{**base, **kw})


def test_d_loss_does_not_reach_g():
    """x' is detached for the D step: after it, no G parameter has a gradient."""
    g, d = build_models(1, 8, 4, 0)
    x = torch.rand(8, 1, 320) * 2 - 1
    opt_g = torch.optim.Adam(g.parameters())
    grads_seen = []

    class SpyOpt(torch.optim.Adam):
        def step(self, closure=None):
            grads_seen.append([p.grad is not None for p in g.parameters()])
            return super().step(closure)

    opt_d = SpyOpt(d.parameters())
    train_step(g, d, opt_g, opt_d, x, w_adv=1.0)
    assert not any(grads_seen[0]), "the D step put gradients on G"


def test_g_step_leaves_d_unchanged():
    g, d = build_models(1, 8, 4, 0)
    x = torch.rand(8, 1, 320) * 2 - 1
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    before = {k: v.clone() for k, v in d.state_dict().items()}
    train_step(g, d, opt_g, opt_d, x, w_adv=1.0)
    changed_once = {k for k, v in d.state_dict().items() if not torch.equal(v, before[k])}
    assert changed_once  # the D step did update D
    assert all(p.requires_grad for p in d.parameters()), "D must be trainable again after G step"


def test_fit_logs_each_epoch_and_keeps_the_best():
    g, d = build_models(1, 8, 4, 0)
    train_x, val_x, val_y = toy_data()
    epochs, steps = [], []
    result = fit(
        g,
        d,
        train_x,
        val_x,
        val_y,
        cfg(epochs=3),
        seed=0,
        on_step=lambda s, v: steps.append((s, v)),
        on_epoch=epochs.append,
    )
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert len(steps) == 3 * (len(train_x) // 16)
    assert {"loss_d", "loss_g", "loss_rec", "loss_adv"} <= set(steps[0][1])
    aucs = [r["val_auc"] for r in result.history]
    assert result.history[result.best_epoch - 1]["val_auc"] == max(aucs)
    assert result.history[-1]["best_val_auc"] == max(aucs)
    assert all(0 <= a <= 1 for a in aucs)


@pytest.mark.parametrize("selection", ["last", "val_recon"])
def test_unsupervised_selection(selection):
    g, d = build_models(1, 8, 4, 0)
    train_x, val_x, val_y = toy_data()
    result = fit(g, d, train_x, val_x, val_y, cfg(epochs=3, selection=selection), seed=0)
    if selection == "last":
        assert result.best_epoch == 3
    else:
        recon = [r["val_recon_n"] for r in result.history]
        assert result.best_epoch == int(np.argmin(recon)) + 1


def test_d_reset_resets_d_and_counts():
    g, d = build_models(1, 8, 4, 0)
    train_x, val_x, val_y = toy_data()
    result = fit(g, d, train_x, val_x, val_y, cfg(epochs=1, d_reset_below=1e9), seed=0)
    assert result.d_resets == len(train_x) // 16


def test_same_seed_same_result():
    train_x, val_x, val_y = toy_data()
    runs = []
    for _ in range(2):
        g, d = build_models(1, 8, 4, 0)
        runs.append(fit(g, d, train_x, val_x, val_y, cfg(epochs=1), seed=3))
    for k, v in runs[0].g_state.items():
        assert torch.equal(v, runs[1].g_state[k]), k


def test_augmentation_runs_and_keeps_length():
    from sibeatgan.augment import time_warp

    x = np.random.default_rng(0).random((5, 2, 320)).astype(np.float32)
    y = time_warp(x, np.random.default_rng(1))
    assert y.shape == x.shape and not np.allclose(x, y)
    g, d = build_models(1, 8, 4, 0)
    train_x, val_x, val_y = toy_data()
    result = fit(g, d, train_x, val_x, val_y, cfg(epochs=1, augment_copies=1), seed=0)
    assert result.history[0]["train_samples_per_s"] > 0


def test_bf16_autocast_trains():
    g, d = build_models(1, 8, 4, 0)
    train_x, val_x, val_y = toy_data()
    result = fit(g, d, train_x, val_x, val_y, cfg(epochs=1, precision="bf16"), seed=0)
    assert np.isfinite(result.history[0]["mean_loss_g"])
    assert all(v.dtype == torch.float32 for v in result.g_state.values() if v.is_floating_point())


def test_warmup_then_cosine_schedule():
    from sibeatgan.train import make_schedule

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sched = make_schedule(opt, cfg(lr_schedule="cosine", warmup_steps=4, lr_min_ratio=0.1), 20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_ema_weights_are_what_is_scored_and_kept():
    g, d = build_models(1, 8, 4, 0)
    train_x, val_x, val_y = toy_data()
    result = fit(g, d, train_x, val_x, val_y, cfg(epochs=1, ema=0.9), seed=0)
    raw = g.state_dict()
    differs = [
        k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], result.g_state[k])
    ]
    assert differs, "with EMA the kept generator is the average, not the last weights"
    assert set(result.g_state) >= {k for k in raw if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("ratio,moves", [(1.0, True), (1e-6, False)])
def test_d_lr_ratio_sets_ds_learning_rate(ratio, moves):
    g, d = build_models(1, 8, 8, seed=0)
    before = {k: v.detach().clone() for k, v in d.named_parameters()}  # not BatchNorm's stats
    train_x, val_x, val_y = toy_data()
    result = fit(g, d, train_x, val_x, val_y, cfg(epochs=1, d_lr_ratio=ratio), seed=0)
    change = max((result.d_state[k] - v).abs().max().item() for k, v in before.items())
    assert (change > 1e-5) is moves, change


@pytest.mark.parametrize("real_label", [1.0, 0.9])
def test_one_sided_label_smoothing_keeps_d_from_certainty(real_label):
    """With real label 0.9 the D loss cannot fall below the entropy of 0.9 (0.325); with 1.0 a
    D that wins drives it towards 0."""
    g, d = build_models(1, 8, 4, 0)
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters(), lr=1e-2)
    x = torch.rand(16, 1, 320) * 2 - 1
    losses = [train_step(g, d, opt_g, opt_d, x, 1.0, real_label=real_label)["d"] for _ in range(30)]
    floor = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert bool(min(losses) >= floor - 1e-4) is (real_label == 0.9), min(losses)


def test_g_pretrains_alone_then_the_game_starts(monkeypatch):
    import sibeatgan.train as train

    seen = []
    real_step = train.train_step

    def spy(g, d, *rest, **kw):
        out = real_step(g, d, *rest, **kw)
        seen.append((d is not None, "d" in out, "adv" in out))
        return out

    monkeypatch.setattr(train, "train_step", spy)
    g, d = build_models(1, 8, 4, 0)
    before = {k: v.detach().clone() for k, v in d.named_parameters()}
    train_x, val_x, val_y = toy_data(n=64)
    fit(g, d, train_x, val_x, val_y, cfg(epochs=2, pretrain_g_steps=5), seed=0)
    assert seen == [(False, False, False)] * 5 + [(True, True, True)] * 3
    assert any(not torch.equal(v, before[k]) for k, v in d.named_parameters())

    g, d = build_models(1, 8, 4, 0)
    fit(g, d, train_x, val_x, val_y, cfg(epochs=2, pretrain_g_steps=100), seed=0)
    assert all(torch.equal(v, before[k]) for k, v in d.named_parameters()), "D never trained"


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_instance_noise_reaches_ds_step_only(noise, monkeypatch):
    g, d = build_models(1, 8, 4, 0)
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    x = torch.rand(16, 1, 320) * 2 - 1
    seen = []
    real_features = d.features
    monkeypatch.setattr(
        d, "features", lambda t: seen.append(t.detach().clone()) or real_features(t)
    )
    train_step(g, d, opt_g, opt_d, x, 1.0, d_noise=noise)
    d_real, g_real = seen[0], seen[2]  # D's step: real, fake; G's step: real, fake
    assert torch.equal(g_real, x), "feature matching compares clean beats"
    assert torch.equal(d_real, x) is (noise == 0)
    if noise:
        assert abs((d_real - x).std().item() - noise) < 0.05


def test_instance_noise_anneals_to_zero_over_the_game():
    from sibeatgan.train import _anneal

    assert [_anneal(s, 10) for s in (-5, 0, 5, 10, 20)] == [1.0, 1.0, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("skip_below,moves", [(0.0, True), (1.99, False)])
def test_d_skips_its_update_while_its_loss_is_below_the_threshold(skip_below, moves):
    """A fresh D's loss is about 2 ln 2 = 1.39, below 1.99: D must then stay as it is."""
    g, d = build_models(1, 8, 4, 0)
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    before = {k: v.detach().clone() for k, v in d.named_parameters()}
    x = torch.rand(16, 1, 320) * 2 - 1
    out = train_step(g, d, opt_g, opt_d, x, 1.0, d_skip_below=skip_below)
    assert out["d"] < 1.99
    assert any(not torch.equal(v, before[k]) for k, v in d.named_parameters()) is moves


class _Stop(Exception):
    pass


def _stop_after(epoch: int):
    def on_epoch(row):
        if row["epoch"] == epoch:
            raise _Stop

    return on_epoch


def fit_stopped_then_resumed(cfg_, state_path, build=None, distiller_of=None):
    """Fit until epoch 1 ends, stop as a killed process would, then resume on fresh models
    (from another seed, so only the restored state can make the two parts match)."""
    build = build or (lambda seed: build_models(1, 8, 4, seed))
    distiller_of = distiller_of or (lambda: None)
    train_x, val_x, val_y = toy_data()
    g, d = build(0)
    with pytest.raises(_Stop):
        fit(g, d, train_x, val_x, val_y, cfg_, 0, distiller_of(),
            on_epoch=_stop_after(1), state_path=state_path)  # fmt: skip
    g, d = build(99)
    result = fit(g, d, train_x, val_x, val_y, cfg_, 0, distiller_of(), state_path=state_path,
                 resume_from=train_state.read(state_path))  # fmt: skip
    return g, result


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        # every stateful part: G's average, a schedule, both random generators (time-warp
        # draws from numpy's, D's re-initialisation and instance noise from torch's)
        {"ema": 0.9, "lr_schedule": "cosine", "warmup_steps": 3, "augment_copies": 1,
         "d_noise": 0.1, "d_reset_below": 0.7},
    ],
)  # fmt: skip
def test_a_resumed_fit_trains_exactly_as_one_that_never_stopped(knobs, tmp_path):
    c = cfg(epochs=3, **knobs)
    train_x, val_x, val_y = toy_data()
    g, d = build_models(1, 8, 4, 0)
    straight = fit(g, d, train_x, val_x, val_y, c, seed=0)
    state_path = tmp_path / "state.pt"
    g2, resumed = fit_stopped_then_resumed(c, state_path)
    assert resumed.resumed_from == 1 and straight.resumed_from == 0
    keys = ("epoch", "val_auc", "val_recon_n", "mean_loss_g", "mean_loss_d")
    assert [{k: r[k] for k in keys} for r in resumed.history] == [
        {k: r[k] for k in keys} for r in straight.history
    ]
    for k, v in g.state_dict().items():
        assert torch.equal(v, g2.state_dict()[k]), k
    for k, v in straight.g_state.items():
        assert torch.equal(v, resumed.g_state[k]), k
    assert resumed.best_epoch == straight.best_epoch
    assert resumed.d_resets == straight.d_resets
    assert resumed.train_time_s > resumed.history[-1]["epoch_time_s"], "time of both sessions"
    assert state_path.exists(), "fit leaves the state; its caller removes it once done"


def test_a_finished_state_resumes_to_the_same_result_without_training(tmp_path):
    train_x, val_x, val_y = toy_data()
    state_path = tmp_path / "state.pt"
    g, d = build_models(1, 8, 4, 0)
    first = fit(g, d, train_x, val_x, val_y, cfg(epochs=2), seed=0, state_path=state_path)
    epochs = []
    g, d = build_models(1, 8, 4, 5)
    again = fit(g, d, train_x, val_x, val_y, cfg(epochs=2), 0, state_path=state_path,
                on_epoch=epochs.append, resume_from=train_state.read(state_path))  # fmt: skip
    assert epochs == [] and again.resumed_from == 2 and again.best_epoch == first.best_epoch
    for k, v in first.g_state.items():
        assert torch.equal(v, again.g_state[k]), k
