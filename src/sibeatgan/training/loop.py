"""The BeatGAN training loop (protocol section 5), shared by teacher and student."""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from sibeatgan.config import RuntimeCfg, TrainCfg
from sibeatgan.data.augment import time_warp
from sibeatgan.data.rhythm import BeatContext
from sibeatgan.evaluation import scores
from sibeatgan.evaluation.metrics import auc_ap
from sibeatgan.models import Discriminator, Generator, init_weights
from sibeatgan.training import state as train_state
from sibeatgan.training.distill import Distiller
from sibeatgan.training.graphs import GraphedStep, graph_blockers, reset_adam_state
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


def make_optimizer(params, cfg: TrainCfg, capturable: bool = False) -> torch.optim.Adam:
    """Adam; `capturable` keeps its step count on the GPU, as a CUDA graph needs."""
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), capturable=capturable)


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


@torch.no_grad()
def update_average(ema: AveragedModel, model: torch.nn.Module, decay: float) -> None:
    """One step of G's exponential moving average (weights and buffers), with a decay that
    ramps up as min(decay, (1 + n) / (10 + n)) so the random initial weights do not dominate
    the first epochs. The arithmetic of AveragedModel.update_parameters with a Python-float
    decay; unlike it, the count `n` is read where it lives (on the CPU) instead of being copied
    to the GPU once per tensor, each copy a wait for the GPU."""
    n = int(ema.n_averaged)
    averaged = itertools.chain(ema.module.parameters(), ema.module.buffers())
    current = itertools.chain(model.parameters(), model.buffers())
    d = min(decay, (1 + n) / (10 + n))
    for avg, cur in zip(averaged, current, strict=True):
        avg.copy_(cur if n == 0 else d * avg + (1 - d) * cur)
    ema.n_averaged += 1


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


@dataclass(frozen=True)
class Nets:
    """The two networks a fit trains, in place."""

    g: Generator
    d: Discriminator


@dataclass(frozen=True)
class FitData:
    """What a fit trains on (N beats) and validates on (beats and labels, 1 = abnormal)."""

    train_x: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    score_batch_size: int = RuntimeCfg.score_batch_size  # beats per scoring batch
    val_context: BeatContext | None = (
        None  # the val beats' records and timing, for a score reading them
    )


@dataclass
class Hooks:
    """Where a fit reports: step losses every `log_every` steps, each epoch's row, and extra
    per-epoch figures from `monitor` (e.g. a test-AUC curve; never used for selection);
    `desc` names the fit in its progress bars and epoch lines."""

    on_step: StepCallback | None = None
    on_epoch: EpochCallback | None = None
    monitor: Callable[[scores.Models], dict[str, float]] | None = None
    log_every: int = RuntimeCfg.log_every
    desc: str = "train"


@dataclass
class Checkpoint:
    """The training state written to `path` (with `meta`) after every epoch, and a state read
    back (`resume_from`) that continues a stopped run where it ended."""

    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    resume_from: dict[str, Any] | None = None


@dataclass
class _Game:
    """G, D and everything their training carries from step to step."""

    g: Generator
    d: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    distiller: Distiller | None
    amp: AbstractContextManager
    # the host reads losses (and tests D for a reset) every `sync_every` steps: each read waits
    # for the device, which on a GPU costs more than the step; on the CPU it costs nothing
    sync_every: int
    step: Callable[[torch.Tensor], dict[str, torch.Tensor]]  # one training step
    graphed: bool  # the step is a CUDA graph (training.graphs)
    d_lowest: torch.Tensor | None = None  # D's lowest loss since the last test

    @property
    def scored(self) -> torch.nn.Module:
        """The generator that is validated and kept: G's average when there is one."""
        return self.ema.module if self.ema is not None else self.g

    def parts(self) -> dict[str, train_state.Stateful]:
        parts = {"g": self.g, "d": self.d, "opt_g": self.opt_g, "opt_d": self.opt_d}
        parts |= {"sched_g": self.sched_g, "sched_d": self.sched_d}
        parts |= {"ema": self.ema} if self.ema is not None else {}
        return parts | ({"projections": self.distiller.projections} if self.distiller else {})


@dataclass(frozen=True)
class _Run:
    """One fit: its game, and what each of its epochs reads and moves on."""

    game: _Game
    cfg: TrainCfg
    rng: np.random.Generator  # batch order and time-warp draws
    progress: Progress
    hooks: Hooks
    checkpoint: Checkpoint


def fit(
    nets: Nets,
    data: FitData,
    cfg: TrainCfg,
    seed: int,
    *,
    distiller: Distiller | None = None,
    hooks: Hooks | None = None,
    checkpoint: Checkpoint | None = None,
) -> FitResult:
    """Train G and D (in place); score val each epoch (with the EMA of G when `cfg.ema` > 0);
    return the state dicts of the epoch chosen by `cfg.selection`."""
    scores.score_def(cfg.score)  # an unknown score stops here, before any training
    hooks, checkpoint = hooks or Hooks(), checkpoint or Checkpoint()
    rng = np.random.default_rng([seed, 7])
    torch.manual_seed(seed)
    game = new_game(nets.g, nets.d, len(data.train_x), cfg, distiller, log_every=hooks.log_every)
    progress = _resume(game, rng, checkpoint, hooks.desc)
    run = _Run(game, cfg, rng, progress, hooks, checkpoint)
    resumed_from = progress.epoch
    for module in (nets.g, nets.d, distiller):
        if module is not None:
            module.train()
    device = next(nets.g.parameters()).device
    base = torch.from_numpy(np.ascontiguousarray(data.train_x)).to(device)
    val_t = torch.from_numpy(np.ascontiguousarray(data.val_x)).to(device)
    for epoch in range(progress.epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        epoch_data = _epoch_data(base, data.train_x, cfg, rng)
        sums = _train_epoch(run, epoch_data, epoch)
        row = _validate(run, val_t, data, epoch, sums, t0)
        _keep_if_selected(run, row)
        _end_epoch(run, row, t0)
    return FitResult(
        g_state=progress.best_g,
        d_state=progress.best_d,
        history=progress.history,
        best_epoch=progress.best_epoch,
        selection=cfg.selection,
        d_resets=progress.d_resets,
        precision=resolve_precision(cfg.precision, device),
        train_time_s=progress.elapsed_s,
        resumed_from=resumed_from,
    )


def _resume(game: _Game, rng: np.random.Generator, checkpoint: Checkpoint, desc: str) -> Progress:
    """A fresh run's progress, or the one `checkpoint` resumes, its state loaded into `game`
    and `rng` (and torch's generator)."""
    if checkpoint.resume_from is None:
        return Progress()
    progress = train_state.restore(checkpoint.resume_from, game.parts(), rng)
    _keep_capturable(game)
    tqdm.write(f"{desc}: resuming after epoch {progress.epoch}")
    return progress


def sync_interval(device: torch.device, log_every: int) -> int:
    """How many steps pass between two reads of the losses: every step on the CPU (free there,
    and D is reset at the very step its loss collapses), every `log_every` on an accelerator."""
    return 1 if device.type == "cpu" else log_every


def new_game(
    g: Generator,
    d: Discriminator,
    n_train: int,
    cfg: TrainCfg,
    distiller: Distiller | None,
    graphs: bool = True,
    log_every: int = RuntimeCfg.log_every,
) -> _Game:
    """Optimisers, per-step schedules over the whole run, G's average, the precision, and the
    step: a CUDA graph where one can be captured (training.graphs) and `graphs` allows it,
    else the eager step."""
    device = next(g.parameters()).device
    rank = distiller is not None and distiller.cfg.rank
    blockers = graph_blockers(device, cfg.lr_schedule, cfg.warmup_steps, rank)
    blockers += [] if graphs else ["the eager step was asked for"]
    g_params = list(g.parameters()) + (list(distiller.parameters()) if distiller else [])
    opt_g = make_optimizer([p for p in g_params if p.requires_grad], cfg, not blockers)
    opt_d = make_optimizer(d.parameters(), cfg, not blockers)
    total_steps = n_train * (1 + cfg.augment_copies) // cfg.batch_size * cfg.epochs
    amp = autocast(device, resolve_precision(cfg.precision, device))
    ema = AveragedModel(g, use_buffers=True) if cfg.ema > 0 else None
    sched_g, sched_d = (
        make_schedule(opt_g, cfg, total_steps),
        make_schedule(opt_d, cfg, total_steps),
    )

    def eager(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return train_step(g, d, opt_g, opt_d, x, cfg.w_adv, distiller, amp)

    if device.type == "cuda":
        # shapes never change: let cuDNN time its kernels once and keep the fastest (its choice
        # can differ between runs, like the GPU's own reductions: GPU runs are not bit-exact)
        torch.backends.cudnn.benchmark = True
        if blockers:
            tqdm.write(f"training eagerly: {'; '.join(blockers)}")
    step = eager if blockers else GraphedStep(eager)
    return _Game(g, d, opt_g, opt_d, sched_g, sched_d, ema, distiller, amp,
                 sync_interval(device, log_every), step, graphed=not blockers)  # fmt: skip


def _keep_capturable(game: _Game) -> None:
    """A restored optimiser takes `capturable` from the saved state: set it back to what this
    device and step need (a GPU run resumed on a CPU, or the reverse)."""
    for opt in (game.opt_g, game.opt_d):
        for group in opt.param_groups:
            group["capturable"] = game.graphed


def _train_epoch(run: _Run, data: torch.Tensor, epoch: int) -> dict[str, float]:
    """One pass over `data` in a fresh random order (the last partial batch is dropped, for
    BatchNorm); returns the summed losses and the number of batches under `batches`. Losses stay
    on the device, summed in float64 in step order (the sums equal those of reading every
    step), and are read every `log_every` steps, to log them."""
    game, cfg, progress, hooks = run.game, run.cfg, run.progress, run.hooks
    order = torch.from_numpy(run.rng.permutation(len(data))).to(data.device)
    n_batches = len(data) // cfg.batch_size
    sums: dict[str, torch.Tensor] = {}
    bar = tqdm(range(n_batches), desc=f"{hooks.desc} epoch {epoch}/{cfg.epochs}", unit="batch")
    for b in bar:
        x = data[order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
        losses = game.step(x)
        after_step(game, losses, cfg, progress)
        for k, v in losses.items():
            sums[k] = sums[k] + v.double() if k in sums else v.double()
        if progress.step % hooks.log_every == 0:
            _report_step(losses, progress.step, hooks, bar)
    bar.close()
    return {"batches": n_batches, **{f"mean_loss_{k}": v for k, v in read_losses(sums).items()}}


def _report_step(losses: dict[str, torch.Tensor], step: int, hooks: Hooks, bar: tqdm) -> None:
    """Read the step's losses (a wait for the device) and show them."""
    read = read_losses(losses)
    if hooks.on_step:
        hooks.on_step(step, {f"loss_{k}": v for k, v in read.items()})
    bar.set_postfix({k: f"{read[k]:.4f}" for k in ("d", "g")})


def read_losses(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Device losses as floats, with one wait for the device for all of them."""
    if not losses:
        return {}
    values = torch.stack([v.detach().double() for v in losses.values()]).tolist()
    return dict(zip(losses, values, strict=True))


def after_step(
    game: _Game, losses: dict[str, torch.Tensor], cfg: TrainCfg, progress: Progress
) -> None:
    """Schedules, G's average, and a fresh D (and fresh Adam moments) if D's loss collapsed,
    tested every `sync_every` steps on D's lowest loss since the last test."""
    game.sched_g.step()
    game.sched_d.step()
    if game.ema is not None:
        update_average(game.ema, game.g, cfg.ema)
    # a copy: a CUDA graph's next replay overwrites its output tensors
    low = (
        losses["d"].clone() if game.d_lowest is None else torch.minimum(game.d_lowest, losses["d"])
    )
    game.d_lowest = low
    progress.step += 1
    if progress.step % game.sync_every == 0:
        game.d_lowest = None
        if low.item() < cfg.d_reset_below:
            init_weights(game.d)
            # zeroed in place, as a fresh Adam's (a CUDA graph reads that memory)
            reset_adam_state(game.opt_d)
            progress.d_resets += 1


def _validate(
    run: _Run,
    val_t: torch.Tensor,
    data: FitData,
    epoch: int,
    sums: dict[str, float],
    t0: float,
) -> dict[str, float]:
    """The epoch's row: val AUC/AP and val-N error of the scored generator, time, mean losses."""
    game, cfg, hooks = run.game, run.cfg, run.hooks
    n_batches = int(sums.pop("batches"))
    train_time = time.perf_counter() - t0
    models = scores.Models(game.scored, game.d if scores.score_def(cfg.score).needs_d else None)
    val_y = data.val_y
    _, val_scores, val_recon = scores.fitted_on_val(
        cfg.score, models, val_t, val_y, data.score_batch_size, data.val_context
    )
    val_auc, val_ap = auc_ap(val_y, val_scores)
    return {
        "epoch": epoch,
        "val_auc": val_auc,
        "val_ap": val_ap,
        "val_recon_n": float(val_recon[val_y == 0].mean()),
        "epoch_time_s": time.perf_counter() - t0,
        "train_samples_per_s": n_batches * cfg.batch_size / train_time,
        "lr": game.sched_g.get_last_lr()[0],
        **{k: v / max(n_batches, 1) for k, v in sums.items()},
        **(hooks.monitor(scores.Models(game.scored, game.d)) if hooks.monitor else {}),
    }


def _keep_if_selected(run: _Run, row: dict) -> None:
    """Keep this epoch's weights if the selection rule prefers them to the kept ones."""
    progress = run.progress
    value = _selection_value(row, run.cfg.selection)
    if value > progress.best_value:
        progress.best_value, progress.best_epoch = value, row["epoch"]
        progress.best_g = copy.deepcopy(run.game.scored.state_dict())
        progress.best_d = copy.deepcopy(run.game.d.state_dict())
    row["best_val_auc"] = max(r["val_auc"] for r in [*progress.history, row])


def _end_epoch(run: _Run, row: dict, t0: float) -> None:
    """Record the row, report it, and write the training state."""
    progress, checkpoint, hooks = run.progress, run.checkpoint, run.hooks
    progress.history.append(row)
    epoch = row["epoch"]
    kept = "  *" if progress.best_epoch == epoch else ""
    tqdm.write(
        f"{hooks.desc} epoch {epoch}: val AUC {row['val_auc']:.4f}  AP {row['val_ap']:.4f}  "
        f"({row['epoch_time_s']:.0f} s){kept}"
    )
    progress.epoch = epoch
    progress.elapsed_s += time.perf_counter() - t0
    if checkpoint.path is not None:
        train_state.save(checkpoint.path, run.game.parts(), progress, run.rng, checkpoint.meta)
    if hooks.on_epoch:
        hooks.on_epoch(row)


@dataclass(frozen=True)
class Forward:
    """G's pass over a batch, which the D step and the G step share."""

    x: torch.Tensor
    x_rec: torch.Tensor
    maps: list[torch.Tensor]  # the encoder's feature maps, for feature distillation
    rec: torch.Tensor  # the reconstruction loss


def g_forward(g: Generator, x: torch.Tensor, amp: AbstractContextManager) -> Forward:
    with amp:
        x_rec, maps = g.forward_with_features(x)
        rec = F.mse_loss(x_rec.float(), x)
    return Forward(x, x_rec, maps, rec)


def d_step(
    d: Discriminator, opt_d: torch.optim.Optimizer, x: torch.Tensor, x_rec: torch.Tensor, amp
) -> torch.Tensor:
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
    return loss_d.detach()


def g_step(
    d: Discriminator,
    opt_g: torch.optim.Optimizer,
    fwd: Forward,
    w_adv: float,
    distiller: Distiller | None,
    amp: AbstractContextManager,
) -> dict[str, torch.Tensor]:
    """G learns to reconstruct and to match D's features of real beats (and the distillation
    terms). D's parameters are frozen meanwhile, so no gradient is computed for them."""
    d.requires_grad_(False)
    with amp:
        with torch.no_grad():
            feat_real = d.features(fwd.x)
        terms = {"rec": fwd.rec}
        terms["adv"] = w_adv * F.mse_loss(d.features(fwd.x_rec).float(), feat_real.float())
        if distiller is not None:
            terms.update(distiller.losses(fwd.x, fwd.x_rec.float(), fwd.maps))
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
) -> dict[str, torch.Tensor]:
    """One D step then one G step on the batch `x`; the losses as 0-d device tensors (reading
    them waits for the device: the caller decides when). `amp` (autocast) wraps the forward
    passes and losses only; backward passes and optimiser steps run outside it."""
    amp = amp or nullcontext()
    fwd = g_forward(g, x, amp)
    loss_d = d_step(d, opt_d, x, fwd.x_rec, amp)
    terms = g_step(d, opt_g, fwd, w_adv, distiller, amp)
    return {"d": loss_d, **{k: v.detach() for k, v in terms.items()}}
