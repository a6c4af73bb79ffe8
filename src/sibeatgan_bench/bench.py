"""Training and scoring speed, against a step written the way the original code trains.

Everything runs on the same machine, same data shapes (nc=1, 320 samples, published widths),
in one process. FLOPs are counted from the layer shapes (multiply-adds of every convolution
for one beat, times 2), so achieved GFLOP/s can be compared with a large matmul's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sibeatgan.config import BEAT_LENGTH, TrainCfg
from sibeatgan.evaluation.scoring import beat_scores, compiled_generator
from sibeatgan.models import PLAIN, build_models, conv_macs
from sibeatgan.training.loop import autocast, bf16_supported, make_optimizer, train_step
from sibeatgan_bench.kernels import kernels_of, matrix_engine_share, summary_lines


def step_flops(g_macs: int, d_macs: int) -> int:
    """FLOPs of one beat in our step. Passes: G forward (1 G); D on x and on detached x' (2 D),
    their backward with weight gradients (4 D); D on x without grad (1 D); D on x' (1 D) with
    input gradients only (1 D); G backward (2 G). A backward pass costs about twice its
    forward (input and weight gradients), once when only input gradients are needed."""
    return 2 * (3 * g_macs + 9 * d_macs)


class _Float64Beats(Dataset):
    """The original pipeline: float64 numpy beats, converted to a tensor per item."""

    def __init__(self, x: np.ndarray):
        self.x = x.astype(np.float64)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], 0.0


def reference_steps(x: np.ndarray, batch_size: int, seed: int = 0) -> Callable[[int], None]:
    """Steps the way the original code takes them (kept here only for comparison): a DataLoader
    over float64 numpy converted per batch, fp32; the D step backpropagates into G because x'
    is not detached, and the G step runs G and D again with D's weights still taking
    gradients. The networks are torch's plain 1-D layers, as the original builds them."""
    g, d = build_models(1, 50, 32, seed, layers=PLAIN)
    opt_g, opt_d = (
        make_optimizer(g.parameters(), TrainCfg(lr=1e-4)),  # the original's Adam
        make_optimizer(d.parameters(), TrainCfg(lr=1e-4)),
    )
    loader = DataLoader(_Float64Beats(x), batch_size=batch_size, shuffle=True, drop_last=True)

    def run(n_steps: int) -> None:
        done = 0
        while done < n_steps:
            for xb, _ in loader:
                xb = xb.float()
                d.zero_grad()
                real_logits = d.classify(d.features(xb))
                fake = g(xb)  # not detached: D's loss reaches G
                fake_logits = d.classify(d.features(fake))
                loss_d = F.binary_cross_entropy_with_logits(
                    real_logits, torch.ones_like(real_logits)
                ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
                loss_d.backward()
                opt_d.step()
                g.zero_grad()
                fake = g(xb)
                loss_g = F.mse_loss(fake, xb) + F.mse_loss(d.features(fake), d.features(xb))
                loss_g.backward()
                opt_g.step()
                done += 1
                if done == n_steps:
                    return

    return run


def our_steps(x: np.ndarray, batch_size: int, precision: str, seed: int = 0):
    """Our training step (train.train_step) on tensors held in memory."""
    g, d = build_models(1, 50, 32, seed)
    cfg = TrainCfg(batch_size=batch_size, precision=precision)
    opt_g, opt_d = make_optimizer(g.parameters(), cfg), make_optimizer(d.parameters(), cfg)
    data = torch.from_numpy(x)
    device = torch.device("cpu")

    amp = autocast(device, precision)

    def run(n_steps: int) -> None:
        for i in range(n_steps):
            start = (i * batch_size) % (len(data) - batch_size)
            train_step(g, d, opt_g, opt_d, data[start : start + batch_size], 1.0, amp=amp)

    return run


TRIALS = 3  # timings are the best of this many trials: other load only ever slows a trial


def timed(run: Callable[[int], None], steps: int, warmup: int, trials: int = TRIALS) -> float:
    """Seconds per step, after `warmup` steps: the best of `trials` timings of `steps` steps."""
    run(warmup)
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        run(steps)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """GFLOP/s of an n x n x n matmul, done two ways: torch.matmul (the BLAS torch uses) and
    the same product as a 1x1 convolution (oneDNN, which the networks' convolutions use; on
    some CPUs it is the faster of the two). The larger is the machine's peak for `dtype`."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    x, w = a.T.contiguous()[None], b.T.contiguous()[:, :, None]  # conv1d(x, w)[0].T == a @ b
    ways = {"matmul": lambda: a @ b, "conv1x1": lambda: F.conv1d(x, w)}

    def repeat(op: Callable[[], torch.Tensor]) -> Callable[[int], None]:
        def run(k: int) -> None:
            for _ in range(k):
                op()

        return run

    with torch.no_grad():
        seconds = {name: timed(repeat(op), repeats, 2, 2 * TRIALS) for name, op in ways.items()}
    return {name: 2 * n**3 / sec / 1e9 for name, sec in seconds.items()}


@torch.no_grad()
def scoring_speed(precision: str, batch: int, beats: int, compile: bool = False) -> float:
    """Seconds per beat for scoring (G forward in eval mode, per-beat MSE); `compile` uses
    scoring.compiled_generator (compiled once before timing)."""
    g, _ = build_models(1, 50, 32, 0)
    g.eval()
    forward = compiled_generator(g) if compile else g
    x = torch.rand(batch, 1, BEAT_LENGTH) * 2 - 1
    device = torch.device("cpu")
    n_calls = max(beats // batch, 20 if batch == 1 else 3)

    def run(k: int) -> None:
        for _ in range(k):
            beat_scores(forward(x).float(), x)

    with autocast(device, precision):
        return timed(run, n_calls, 3) / batch


@dataclass
class Setting:
    name: str
    batch_size: int
    precision: str


def run_bench(
    steps: int = 30,
    warmup: int = 5,
    default_batch: int = 64,
    default_precision: str = "fp32",
    echo=print,
) -> dict:
    rng = np.random.default_rng(0)
    g, d = build_models(1, 50, 32, 0)
    g_macs, d_macs = conv_macs(g), conv_macs(d)
    flops_per_beat = step_flops(g_macs, d_macs)
    has_bf16 = bf16_supported(torch.device("cpu"))
    out: dict = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_bf16": has_bf16,
        "g_macs_per_beat": g_macs,
        "d_macs_per_beat": d_macs,
        "step_flops_per_beat": flops_per_beat,
    }
    echo(
        f"threads {out['threads']}, bf16 {'yes' if has_bf16 else 'no'}; "
        f"G {g_macs / 1e6:.1f} M MACs/beat, D {d_macs / 1e6:.1f} M; "
        f"step {flops_per_beat / 1e6:.0f} MFLOP/beat"
    )

    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if has_bf16 else {})}
    ways = {k: matmul_gflops(dt) for k, dt in dtypes.items()}
    peak = {k: max(v.values()) for k, v in ways.items()}
    out["matmul_gflops"] = ways
    for k, v in ways.items():
        echo(
            f"peak matmul {k}: {peak[k]:.0f} GFLOP/s "
            f"(torch.matmul {v['matmul']:.0f}, as 1x1 conv {v['conv1x1']:.0f})"
        )

    def beats_for(batch: int) -> np.ndarray:
        return rng.uniform(-1, 1, (batch * 8, 1, BEAT_LENGTH)).astype(np.float32)

    # the original trains at batch 64; also time it at our default batch for an equal-batch ratio
    refs = {}
    for batch in sorted({64, default_batch}):
        refs[batch] = batch / timed(reference_steps(beats_for(batch), batch), steps, warmup)
        echo(f"reference step (batch {batch}, fp32): {refs[batch]:.0f} samples/s")
    ref = refs[64]
    out["reference_samples_per_s"] = ref
    out["reference_samples_per_s_by_batch"] = refs

    settings = [Setting("default", default_batch, default_precision)]
    for batch in sorted({64, default_batch, 256, 512}):
        for precision in ["fp32"] + (["bf16"] if has_bf16 else []):
            if (batch, precision) != (default_batch, default_precision):
                settings.append(Setting(f"b{batch}-{precision}", batch, precision))
    results = {}
    for s in settings:
        n = max(steps * 64 // s.batch_size, 5)
        sec = timed(our_steps(beats_for(s.batch_size), s.batch_size, s.precision), n, warmup)
        sps = s.batch_size / sec
        gflops = sps * flops_per_beat / 1e9
        same_batch_ref = refs.get(s.batch_size)
        results[s.name] = {
            "batch_size": s.batch_size,
            "precision": s.precision,
            "samples_per_s": sps,
            "gflops": gflops,
            "x_reference_b64": sps / ref,
            "x_reference_same_batch": sps / same_batch_ref if same_batch_ref else None,
            "fraction_of_peak": gflops / peak[s.precision],
        }
        same = f", {sps / same_batch_ref:.2f}x at equal batch" if same_batch_ref else ""
        echo(
            f"ours {s.name:10s} batch {s.batch_size:4d} {s.precision}: {sps:6.0f} samples/s "
            f"({sps / ref:.2f}x reference b64{same}), {gflops:.0f} GFLOP/s = "
            f"{100 * gflops / peak[s.precision]:.0f}% of {s.precision} peak"
        )
    fastest = max(results, key=lambda k: results[k]["samples_per_s"])
    out.update(
        settings=results,
        default_samples_per_s=results["default"]["samples_per_s"],
        fastest_setting=fastest,
        fastest_samples_per_s=results[fastest]["samples_per_s"],
        fastest_gflops=results[fastest]["gflops"],
        peak_gflops=peak[results[fastest]["precision"]],
        peak_gflops_by_dtype=peak,
    )
    echo(f"fastest: {fastest}, {out['fastest_samples_per_s'] / ref:.2f}x reference")
    out["kernels"] = {}
    for name in dict.fromkeys(["default", fastest]):
        s = next(s for s in settings if s.name == name)
        run = our_steps(beats_for(s.batch_size), s.batch_size, s.precision)
        run(2)  # oneDNN picks and caches its kernels on the first calls
        totals = kernels_of(lambda run=run: run(1))
        share = matrix_engine_share(totals)
        out["kernels"][name] = {"matrix_engine_share": share, "onednn_ms": totals}
        where = (
            "no oneDNN kernels seen"
            if not totals
            else (
                f"{100 * share:.0f}% of convolution/matmul time on AMX" if share is not None else ""
            )
        )
        echo(f"kernels of one step, {name} ({s.batch_size} {s.precision}): {where}")
        for line in summary_lines(totals, top=6):
            echo(line)

    score_precision = "bf16" if has_bf16 else "fp32"
    ways = {
        f"b1024_{score_precision}": (score_precision, 1024, 8192, False),
        "b1024_fp32": ("fp32", 1024, 8192, False),
        "b1024_fp32_compiled": ("fp32", 1024, 8192, True),
        "b1_fp32": ("fp32", 1, 500, False),
        "b1_fp32_compiled": ("fp32", 1, 500, True),
    }
    scoring = {name: scoring_speed(*args) for name, args in ways.items()}
    out["scoring_s_per_beat"] = scoring
    best_b1024 = min((k for k in scoring if k.startswith("b1024")), key=scoring.__getitem__)
    best_b1 = min((k for k in scoring if k.startswith("b1_")), key=scoring.__getitem__)
    out.update(
        score_beats_per_s_b1024=1 / scoring[best_b1024],
        score_b1024_way=best_b1024,
        score_ms_per_beat_b1=1000 * scoring[best_b1],
        score_b1_way=best_b1,
    )
    for name, sec in scoring.items():
        echo(f"scoring {name:20s}: {1 / sec:7.0f} beats/s, {1000 * sec:.3f} ms/beat")
    return out


PAPER_TRAIN_BEATS = 62_858  # N beats in fold 0's train part (intra split): one epoch's data


def device_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10):
    """TFLOP/s of an n x n x n matmul on `device` (synchronised timing)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))

    def run(k: int) -> None:
        for _ in range(k):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()

    return 2 * n**3 / timed(run, repeats, 2) / 1e12


def step_speed(device: torch.device, batch: int, steps: int, graphed: bool) -> float:
    """Seconds per training step of the paper's recipe (fp32, constant lr, G's moving average as
    by default) on `device`, through the loop's own step and what follows it (`graphed`: the
    CUDA graph of training.graphs, warm-up included before timing)."""
    from sibeatgan.training.loop import after_step, new_game
    from sibeatgan.training.state import Progress

    g, d = build_models(1, 50, 32, 0)
    g, d = g.to(device), d.to(device)
    cfg = TrainCfg(batch_size=batch, lr=1e-4, lr_schedule="constant", warmup_steps=0, ema=0.999)
    game = new_game(g, d, batch * (steps + 10), cfg, None, graphs=graphed)
    data = torch.rand(batch * 8, 1, BEAT_LENGTH, device=device) * 2 - 1
    progress = Progress()

    def run(k: int) -> None:
        for i in range(k):
            after_step(game, game.step(data[(i % 8) * batch : (i % 8 + 1) * batch]), cfg, progress)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return timed(run, steps, 5)


def run_step_bench(device: torch.device, batch: int = 64, steps: int = 50, echo=print) -> dict:
    """Eager against graphed steps on `device` (graphed only with CUDA), as seconds per epoch
    of fold 0's train data, and the device's matmul peak in fp32 and bf16."""
    from sibeatgan.training.graphs import graph_blockers

    n = 8192 if device.type == "cuda" else 1024
    out: dict = {"device": str(device), "batch": batch, "train_beats": PAPER_TRAIN_BEATS}
    if device.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(device)
    out["matmul_tflops"] = {
        name: device_matmul_tflops(device, dtype, n)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    echo(", ".join(f"{k} matmul {v:.1f} TFLOP/s" for k, v in out["matmul_tflops"].items()))
    steps_per_epoch = PAPER_TRAIN_BEATS // batch
    blockers = graph_blockers(device, "constant", 0)
    for way in ("eager", "graphed"):
        if way == "graphed" and blockers:
            out[way] = {"available": False, "why": "; ".join(blockers)}
            echo(f"{way}: not available ({out[way]['why']})")
            continue
        sec = step_speed(device, batch, steps, graphed=way == "graphed")
        out[way] = {
            "available": True,
            "s_per_step": sec,
            "s_per_epoch": sec * steps_per_epoch,
            "samples_per_s": batch / sec,
        }
        echo(
            f"{way}: {1000 * sec:.2f} ms/step, {sec * steps_per_epoch:.1f} s/epoch "
            f"({steps_per_epoch} steps of {batch}), {batch / sec:,.0f} samples/s"
        )
    return out
