from contextlib import nullcontext

import numpy as np
import pytest
import torch

from sibeatgan.config import TrainCfg
from sibeatgan.models import build_models
from sibeatgan.training import state as train_state
from sibeatgan.training.loop import (
    Checkpoint,
    FitData,
    Forward,
    Hooks,
    Nets,
    d_step,
    fit,
    g_step,
    train_step,
)


def toy_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 320)
    normal = np.sin(2 * np.pi * 3 * t)[None, None] + 0.05 * rng.standard_normal((n, 1, 320))
    odd = np.sign(np.sin(2 * np.pi * 7 * t))[None, None] + 0.05 * rng.standard_normal((32, 1, 320))
    val_x = np.concatenate([normal[:32], odd]).astype(np.float32)
    val_y = np.array([0] * 32 + [1] * 32)
    return normal.astype(np.float32).clip(-1, 1), val_x.clip(-1, 1), val_y


def cfg(**kw):
    base = dict(epochs=2, batch_size=16, lr=1e-4)
    base |= dict(ema=0.0, lr_schedule="constant", warmup_steps=0)  # the paper's optimiser
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
    """The G step alone: G moves, D's parameters neither move nor get a gradient (its
    BatchNorm statistics do follow the batch, as in the published loop)."""
    g, d = build_models(1, 8, 4, 0)
    x = torch.rand(8, 1, 320) * 2 - 1
    opt_g = torch.optim.Adam(g.parameters())
    d_before = {k: v.detach().clone() for k, v in d.named_parameters()}
    g_before = {k: v.detach().clone() for k, v in g.named_parameters()}
    x_rec, maps = g.forward_with_features(x)
    rec = torch.nn.functional.mse_loss(x_rec, x)
    terms = g_step(d, opt_g, Forward(x, x_rec, maps, rec), 1.0, None, nullcontext())
    assert set(terms) == {"g", "rec", "adv"} and terms["adv"] > 0
    assert all(torch.equal(v, d_before[k]) for k, v in d.named_parameters())
    assert all(p.grad is None for p in d.parameters()), "no gradient reaches D"
    assert any(not torch.equal(v, g_before[k]) for k, v in g.named_parameters())
    assert all(p.requires_grad for p in d.parameters()), "D must be trainable again after G step"


def test_d_step_moves_d_only():
    g, d = build_models(1, 8, 4, 0)
    x = torch.rand(8, 1, 320) * 2 - 1
    opt_d = torch.optim.Adam(d.parameters())
    d_before = {k: v.detach().clone() for k, v in d.named_parameters()}
    x_rec, _ = g.forward_with_features(x)
    d_step(d, opt_d, x, x_rec, nullcontext())
    assert any(not torch.equal(v, d_before[k]) for k, v in d.named_parameters())
    assert all(p.grad is None for p in g.parameters()), "x' is detached: nothing reaches G"


def test_fit_logs_each_epoch_and_keeps_the_best():
    g, d = build_models(1, 8, 4, 0)
    train_x, val_x, val_y = toy_data()
    epochs, steps = [], []
    hooks = Hooks(on_step=lambda s, v: steps.append((s, v)), on_epoch=epochs.append, log_every=1)
    result = fit(Nets(g, d), FitData(train_x, val_x, val_y), cfg(epochs=3), seed=0, hooks=hooks)
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
    result = fit(
        Nets(g, d), FitData(train_x, val_x, val_y), cfg(epochs=3, selection=selection), seed=0
    )
    if selection == "last":
        assert result.best_epoch == 3
    else:
        recon = [r["val_recon_n"] for r in result.history]
        assert result.best_epoch == int(np.argmin(recon)) + 1


def test_d_reset_resets_d_and_counts():
    g, d = build_models(1, 8, 4, 0)
    train_x, val_x, val_y = toy_data()
    result = fit(
        Nets(g, d), FitData(train_x, val_x, val_y), cfg(epochs=1, d_reset_below=1e9), seed=0
    )
    assert result.d_resets == len(train_x) // 16


def test_same_seed_same_result():
    train_x, val_x, val_y = toy_data()
    runs = []
    for _ in range(2):
        g, d = build_models(1, 8, 4, 0)
        runs.append(fit(Nets(g, d), FitData(train_x, val_x, val_y), cfg(epochs=1), seed=3))
    for k, v in runs[0].g_state.items():
        assert torch.equal(v, runs[1].g_state[k]), k


def test_augmentation_runs_and_keeps_length():
    from sibeatgan.data.augment import time_warp

    x = np.random.default_rng(0).random((5, 2, 320)).astype(np.float32)
    y = time_warp(x, np.random.default_rng(1))
    assert y.shape == x.shape and not np.allclose(x, y)
    g, d = build_models(1, 8, 4, 0)
    train_x, val_x, val_y = toy_data()
    result = fit(
        Nets(g, d), FitData(train_x, val_x, val_y), cfg(epochs=1, augment_copies=1), seed=0
    )
    assert result.history[0]["train_samples_per_s"] > 0


def test_bf16_autocast_trains():
    g, d = build_models(1, 8, 4, 0)
    train_x, val_x, val_y = toy_data()
    result = fit(
        Nets(g, d), FitData(train_x, val_x, val_y), cfg(epochs=1, precision="bf16"), seed=0
    )
    assert np.isfinite(result.history[0]["mean_loss_g"])
    assert all(v.dtype == torch.float32 for v in result.g_state.values() if v.is_floating_point())


def test_warmup_then_cosine_schedule():
    from sibeatgan.training.loop import make_schedule

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
    result = fit(Nets(g, d), FitData(train_x, val_x, val_y), cfg(epochs=1, ema=0.9), seed=0)
    raw = g.state_dict()
    differs = [
        k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], result.g_state[k])
    ]
    assert differs, "with EMA the kept generator is the average, not the last weights"
    assert set(result.g_state) >= {k for k in raw if not k.endswith("num_batches_tracked")}


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
        fit(Nets(g, d), FitData(train_x, val_x, val_y), cfg_, 0, distiller=distiller_of(),
            hooks=Hooks(on_epoch=_stop_after(1)), checkpoint=Checkpoint(state_path))  # fmt: skip
    g, d = build(99)
    resume = Checkpoint(state_path, resume_from=train_state.read(state_path))
    result = fit(Nets(g, d), FitData(train_x, val_x, val_y), cfg_, 0, distiller=distiller_of(),
                 checkpoint=resume)  # fmt: skip
    return g, result


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        # every stateful part: G's average, a schedule, both random generators (time-warp
        # draws from numpy's, D's re-initialisation from torch's)
        {"ema": 0.9, "lr_schedule": "cosine", "warmup_steps": 3, "augment_copies": 1,
         "d_reset_below": 0.7},
    ],
)  # fmt: skip
def test_a_resumed_fit_trains_exactly_as_one_that_never_stopped(knobs, tmp_path):
    c = cfg(epochs=3, **knobs)
    train_x, val_x, val_y = toy_data()
    g, d = build_models(1, 8, 4, 0)
    straight = fit(Nets(g, d), FitData(train_x, val_x, val_y), c, seed=0)
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
    first = fit(
        Nets(g, d),
        FitData(train_x, val_x, val_y),
        cfg(epochs=2),
        0,
        checkpoint=Checkpoint(state_path),
    )
    epochs = []
    g, d = build_models(1, 8, 4, 5)
    resume = Checkpoint(state_path, resume_from=train_state.read(state_path))
    again = fit(Nets(g, d), FitData(train_x, val_x, val_y), cfg(epochs=2), 0,
                hooks=Hooks(on_epoch=epochs.append), checkpoint=resume)  # fmt: skip
    assert epochs == [] and again.resumed_from == 2 and again.best_epoch == first.best_epoch
    for k, v in first.g_state.items():
        assert torch.equal(v, again.g_state[k]), k


def _fit_reading_every(interval: int, monkeypatch, **kw):
    """fit() with the losses read every `interval` steps, as on an accelerator."""
    from sibeatgan.training import loop

    monkeypatch.setattr(loop, "sync_interval", lambda device, c: interval)
    train_x, val_x, val_y = toy_data()
    g, d = build_models(1, 8, 4, 0)
    steps: list[tuple[int, dict]] = []
    log_every = kw.pop("log_every")
    hooks = Hooks(on_step=lambda s, v: steps.append((s, v)), log_every=log_every)
    result = fit(Nets(g, d), FitData(train_x, val_x, val_y), cfg(**kw), seed=0, hooks=hooks)
    return result, steps


def test_losses_read_every_log_every_steps_are_those_read_every_step(monkeypatch):
    every, steps_every = _fit_reading_every(1, monkeypatch, log_every=3)
    lazy, steps_lazy = _fit_reading_every(3, monkeypatch, log_every=3)
    assert steps_lazy == steps_every and [s for s, _ in steps_lazy] == [3, 6, 9, 12]
    losses = [k for k in every.history[0] if k.startswith("mean_loss_")]
    assert losses, "mean losses are in each epoch's row"
    for a, b in zip(every.history, lazy.history, strict=True):
        assert all(a[k] == b[k] for k in losses), "the same sums, to the last bit"
    assert all(torch.equal(every.g_state[k], lazy.g_state[k]) for k in every.g_state)


def test_a_collapsed_d_is_reset_at_the_next_read(monkeypatch):
    """With every loss below the threshold, D is reset at each read: every step on the CPU,
    every `log_every` steps where reads are deferred."""
    every, _ = _fit_reading_every(1, monkeypatch, log_every=4, d_reset_below=1e9)
    lazy, _ = _fit_reading_every(4, monkeypatch, log_every=4, d_reset_below=1e9)
    assert (every.d_resets, lazy.d_resets) == (12, 3)  # 2 epochs of 6 batches


def test_the_moving_average_is_torch_s_with_a_python_decay_to_the_last_bit():
    """update_average reads the count on the host (no wait for a GPU per tensor) and must
    average exactly as AveragedModel.update_parameters with the decay as a Python float, for
    float weights and integer buffers (BatchNorm's batch count) alike."""
    from torch.optim.swa_utils import AveragedModel

    from sibeatgan.training.loop import update_average

    def reference(averaged, current, n, decay=0.999):
        k = float(n)
        d = min(decay, (1 + k) / (10 + k))
        return d * averaged + (1 - d) * current

    g, _ = build_models(1, 8, 4, 0)
    ours = AveragedModel(g, use_buffers=True)
    torch_s = AveragedModel(g, avg_fn=reference, use_buffers=True)
    for _ in range(30):
        with torch.no_grad():
            for p in g.parameters():
                p.add_(torch.randn_like(p))
            for b in g.buffers():
                b.add_(7 if b.dtype == torch.long else 0.5)
        update_average(ours, g, 0.999)
        torch_s.update_parameters(g)
    pairs = zip(ours.state_dict().values(), torch_s.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert int(ours.n_averaged) == 30


def test_adam_state_zeroed_in_place_updates_as_a_fresh_adam():
    """D's reset under a CUDA graph zeroes Adam's state in its memory instead of dropping it:
    the next update must be a fresh optimiser's."""
    from sibeatgan.training.graphs import reset_adam_state

    w = torch.nn.Parameter(torch.randn(10))
    used = torch.optim.Adam([w], lr=0.1)
    for _ in range(5):
        used.zero_grad()
        (w**2).sum().backward()
        used.step()
    start = w.detach().clone()
    reset_adam_state(used)
    fresh_w = torch.nn.Parameter(start.clone())
    fresh = torch.optim.Adam([fresh_w], lr=0.1)
    for param, opt in ((w, used), (fresh_w, fresh)):
        opt.zero_grad()
        (param**2).sum().backward()
        opt.step()
    assert torch.equal(w, fresh_w)


def test_the_graph_path_is_not_taken_without_cuda_and_a_failed_capture_stops(monkeypatch):
    from sibeatgan.training import graphs

    assert graphs.graph_blockers(torch.device("cpu"), "constant", 0) == [
        "no CUDA device (training on cpu)"
    ]
    assert graphs.graph_blockers(torch.device("cuda"), "constant", 0) == []
    assert graphs.graph_blockers(torch.device("cuda"), "cosine", 0)
    assert graphs.graph_blockers(torch.device("cuda"), "constant", 200)
    assert graphs.graph_blockers(torch.device("cuda"), "constant", 0, rank=True)
    monkeypatch.setenv(graphs.OPT_OUT, "0")
    assert graphs.graph_blockers(torch.device("cuda"), "constant", 0) == [f"{graphs.OPT_OUT}=0"]

    step = graphs.GraphedStep(lambda x: {"d": x.sum()})
    step.warmed = graphs.WARMUP_STEPS  # past the warm-up: the next call captures

    def broken(x):
        raise RuntimeError("operation not permitted when stream is capturing")

    step._capture = broken
    with pytest.raises(RuntimeError, match=f"could not be captured.*{graphs.OPT_OUT}=0"):
        step(torch.ones(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_graphed_fit_trains_as_the_eager_one_does(monkeypatch):
    """On a GPU: the same seed through the captured step and the eager one ends close (not
    bit-equal: the GPU's kernels are not), with D's reset at work in both."""
    from sibeatgan.training import graphs

    results = []
    for opt_out in ("1", "0"):
        monkeypatch.setenv(graphs.OPT_OUT, opt_out)
        train_x, val_x, val_y = toy_data()
        g, d = build_models(1, 8, 4, 0)
        g, d = g.cuda(), d.cuda()
        kw = dict(epochs=2, d_reset_below=0.5)
        hooks = Hooks(log_every=2)
        results.append(
            fit(Nets(g, d), FitData(train_x, val_x, val_y), cfg(**kw), seed=0, hooks=hooks)
        )
    graphed, eager = results
    assert graphed.d_resets > 0 and eager.d_resets > 0
    for a, b in zip(graphed.history, eager.history, strict=True):
        assert abs(a["val_auc"] - b["val_auc"]) < 0.05
