"""The BeatGAN training loop (protocol section 5), shared by teacher and student."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from sibeatgan.config import TrainCfg
from sibeatgan.data.augment import time_warp
from sibeatgan.evaluation.metrics import auc_ap
from sibeatgan.evaluation.scoring import score
from sibeatgan.models import Discriminator, Generator, init_weights
from sibeatgan.training import state as train_state
from sibeatgan.training.distill import Distiller
from sibeatgan.training.state import Progress

StepCallback = Callable[[int, dict[str, float]], None]
EpochCallback = Callable[[dict[str, float]], None]


@dataclass
class FitResult:
    g_state: dict[str, torch.Tensor]
    d_state: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    selection: str
    d_resets: int = 0
    precision: str = "fp32"
    train_time_s: float = 0.0  # over every session of a resumed run
    resumed_from: int = 0  # epochs already done when this call started


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` means bf16 where the hardware has it, else fp32."""
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast (matmuls and convolutions in bf16, losses and BatchNorm in fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def make_optimizer(params, cfg: TrainCfg) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainCfg, total_steps: int):
    """Per-step learning rate: linear warm-up over `warmup_steps`, then constant or cosine
    decay to `lr * lr_min_ratio` at the last step."""

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            span = max(total_steps - cfg.warmup_steps, 1)
            progress = min((step - cfg.warmup_steps) / span, 1.0)
            cosine = 0.5 * (1 + math.cos(math.pi * progress))
            return cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * cosine
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def ema_avg(decay: float):
    """Exponential moving average whose decay ramps up as min(decay, (1 + n) / (10 + n)), so
    the average is not dominated by the random initial weights in the first epochs."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        k = float(n)
        d = min(decay, (1 + k) / (10 + k))
        return d * averaged + (1 - d) * current

    return avg


def _selection_value(row: dict[str, float], selection: str) -> float:
    """Larger is better for every selection rule."""
    if selection == "val_auc":
        return row["val_auc"]
    if selection == "val_recon":
        return -row["val_recon_n"]
    return row["epoch"]  # last


def _epoch_data(base: torch.Tensor, train_x: np.ndarray, cfg: TrainCfg, rng) -> torch.Tensor:
    if not cfg.augment_copies:
        return base
    warped = [torch.from_numpy(time_warp(train_x, rng)) for _ in range(cfg.augment_copies)]
    return torch.cat([base] + [w.to(base.device) for w in warped])


def fit(
    g: Generator,
    d: Discriminator,
    train_x: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cfg: TrainCfg,
    seed: int,
    distiller: Distiller | None = None,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    desc: str = "train",
    monitor: Callable[[Generator], dict[str, float]] | None = None,
    state_path: Path | None = None,
    state_meta: dict[str, Any] | None = None,
    resume_from: dict[str, Any] | None = None,
) -> FitResult:
    """Train G and D; score val each epoch (with the EMA of G when `cfg.ema` > 0); return the
    state dicts of the epoch chosen by `cfg.selection`. `monitor` adds figures to each epoch's
    row for experiments (e.g. a test-AUC curve); it never takes part in the selection.
    With `state_path`, the training state (with `state_meta`) is written there after every
    epoch; `resume_from` (such a state, read back) continues a stopped run where it ended."""
    device = next(g.parameters()).device
    precision = resolve_precision(cfg.precision, device)
    rng = np.random.default_rng([seed, 7])
    torch.manual_seed(seed)
    base = torch.from_numpy(np.ascontiguousarray(train_x)).to(device)
    val_t = torch.from_numpy(np.ascontiguousarray(val_x)).to(device)
    g_params = list(g.parameters()) + (list(distiller.parameters()) if distiller else [])
    opt_g = make_optimizer([p for p in g_params if p.requires_grad], cfg)
    opt_d = make_optimizer(d.parameters(), cfg)
    steps_per_epoch = len(train_x) * (1 + cfg.augment_copies) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    sched_g = make_schedule(opt_g, cfg, total_steps)
    sched_d = make_schedule(opt_d, cfg, total_steps)
    amp = autocast(device, precision)
    ema = AveragedModel(g, avg_fn=ema_avg(cfg.ema), use_buffers=True) if cfg.ema > 0 else None
    parts = {"g": g, "d": d, "opt_g": opt_g, "opt_d": opt_d, "sched_g": sched_g, "sched_d": sched_d}
    parts |= {"ema": ema} if ema is not None else {}
    parts |= {"projections": distiller.projections} if distiller is not None else {}
    progress = Progress()
    if resume_from is not None:
        progress = train_state.restore(resume_from, parts, rng)
        tqdm.write(f"{desc}: resuming after epoch {progress.epoch}")
    resumed_from = progress.epoch
    history = progress.history
    for module in (g, d, distiller):
        if module is not None:
            module.train()

    for epoch in range(progress.epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        data = _epoch_data(base, train_x, cfg, rng)
        order = torch.from_numpy(rng.permutation(len(data))).to(device)
        n_batches = len(data) // cfg.batch_size  # drop the last partial batch (BatchNorm)
        sums: dict[str, float] = {}
        bar = tqdm(range(n_batches), desc=f"{desc} epoch {epoch}/{cfg.epochs}", unit="batch")
        for b in bar:
            x = data[order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
            losses = train_step(g, d, opt_g, opt_d, x, cfg.w_adv, distiller, amp)
            sched_g.step()
            sched_d.step()
            if ema is not None:
                ema.update_parameters(g)
            if losses["d"] < cfg.d_reset_below:
                init_weights(d)
                opt_d.state.clear()  # fresh Adam moments for the fresh D
                progress.d_resets += 1
            progress.step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            if on_step and progress.step % cfg.log_every == 0:
                on_step(progress.step, {f"loss_{k}": v for k, v in losses.items()})
            if b % 20 == 0:
                bar.set_postfix({k: f"{losses[k]:.4f}" for k in ("d", "g") if k in losses})
        bar.close()
        train_time = time.perf_counter() - t0
        scored = ema.module if ema is not None else g
        val_scores = score(scored, val_t, cfg.score_batch_size)
        val_auc, val_ap = auc_ap(val_y, val_scores)
        row = {
            "epoch": epoch,
            "val_auc": val_auc,
            "val_ap": val_ap,
            "val_recon_n": float(val_scores[val_y == 0].mean()),
            "epoch_time_s": time.perf_counter() - t0,
            "train_samples_per_s": n_batches * cfg.batch_size / train_time,
            "lr": sched_g.get_last_lr()[0],
            **{f"mean_loss_{k}": v / max(n_batches, 1) for k, v in sums.items()},
            **(monitor(scored) if monitor else {}),
        }
        value = _selection_value(row, cfg.selection)
        if value > progress.best_value:
            progress.best_value, progress.best_epoch = value, epoch
            progress.best_g = copy.deepcopy(scored.state_dict())
            progress.best_d = copy.deepcopy(d.state_dict())
        row["best_val_auc"] = max(r["val_auc"] for r in [*history, row])
        history.append(row)
        tqdm.write(
            f"{desc} epoch {epoch}: val AUC {val_auc:.4f}  AP {val_ap:.4f}  "
            f"({row['epoch_time_s']:.0f} s){'  *' if progress.best_epoch == epoch else ''}"
        )
        progress.epoch = epoch
        progress.elapsed_s += time.perf_counter() - t0
        if state_path is not None:
            train_state.save(state_path, parts, progress, rng, state_meta or {})
        if on_epoch:
            on_epoch(row)
    return FitResult(
        g_state=progress.best_g,
        d_state=progress.best_d,
        history=history,
        best_epoch=progress.best_epoch,
        selection=cfg.selection,
        d_resets=progress.d_resets,
        precision=precision,
        train_time_s=progress.elapsed_s,
        resumed_from=resumed_from,
    )


def d_step(
    d: Discriminator, opt_d: torch.optim.Optimizer, x: torch.Tensor, x_rec: torch.Tensor, amp
) -> float:
    """D learns real beats from reconstructions. x' is detached: D's loss never reaches G."""
    with amp:
        real_logits = d.classify(d.features(x))
        fake_logits = d.classify(d.features(x_rec.detach()))
        loss_d = F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    return loss_d.item()


def g_step(
    g: Generator,
    d: Discriminator,
    opt_g: torch.optim.Optimizer,
    x: torch.Tensor,
    x_rec: torch.Tensor,
    maps: list[torch.Tensor],
    rec: torch.Tensor,
    w_adv: float,
    distiller: Distiller | None,
    amp,
) -> dict[str, torch.Tensor]:
    """G learns to reconstruct and to match D's features of real beats (and the distillation
    terms). D's parameters are frozen meanwhile, so no gradient is computed for them."""
    d.requires_grad_(False)
    with amp:
        with torch.no_grad():
            feat_real = d.features(x)
        terms = {"rec": rec}
        terms["adv"] = w_adv * F.mse_loss(d.features(x_rec).float(), feat_real.float())
        if distiller is not None:
            terms.update(distiller.losses(x, x_rec.float(), maps))
        loss_g = sum(terms.values())
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    d.requires_grad_(True)
    return {"g": loss_g, **terms}


def train_step(
    g: Generator,
    d: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    x: torch.Tensor,
    w_adv: float,
    distiller: Distiller | None = None,
    amp: AbstractContextManager | None = None,
) -> dict[str, float]:
    """One D step then one G step on the batch `x`. `amp` (autocast) wraps the forward passes
    and losses only; backward passes and optimiser steps run outside it."""
    amp = amp or nullcontext()
    with amp:
        x_rec, maps = g.forward_with_features(x)
        rec = F.mse_loss(x_rec.float(), x)
    loss_d = d_step(d, opt_d, x, x_rec, amp)
    terms = g_step(g, d, opt_g, x, x_rec, maps, rec, w_adv, distiller, amp)
    return {"d": loss_d, **{k: v.item() for k, v in terms.items()}}
