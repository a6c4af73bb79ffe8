"""The BeatGAN training loop (protocol section 5), shared by teacher and student."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sibeatgan.augment import time_warp
from sibeatgan.config import TrainCfg
from sibeatgan.distill import Distiller
from sibeatgan.metrics import auc_ap
from sibeatgan.models import Discriminator, Generator, init_weights
from sibeatgan.scoring import score

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
    extra: dict[str, float] = field(default_factory=dict)


def _adam(params, cfg: TrainCfg) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def _selection_value(row: dict[str, float], selection: str) -> float:
    """Larger is better for every selection rule."""
    if selection == "val_auc":
        return row["val_auc"]
    if selection == "val_recon":
        return -row["val_recon_n"]
    return row["epoch"]  # last


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
) -> FitResult:
    """Train G and D; score val each epoch; return the state dicts of the selected epoch."""
    device = next(g.parameters()).device
    rng = np.random.default_rng([seed, 7])
    torch.manual_seed(seed)
    base = torch.from_numpy(np.ascontiguousarray(train_x)).to(device)
    val_t = torch.from_numpy(np.ascontiguousarray(val_x)).to(device)
    g_params = list(g.parameters()) + (list(distiller.parameters()) if distiller else [])
    g_params = [p for p in g_params if p.requires_grad]
    opt_g, opt_d = _adam(g_params, cfg), _adam(d.parameters(), cfg)
    history: list[dict[str, float]] = []
    best_value, best_epoch = -float("inf"), 0
    best_g, best_d = copy.deepcopy(g.state_dict()), copy.deepcopy(d.state_dict())
    step, d_resets = 0, 0
    g.train()
    d.train()
    if distiller:
        distiller.train()

    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        data = base
        if cfg.augment_copies:
            warped = [time_warp(train_x, rng) for _ in range(cfg.augment_copies)]
            data = torch.cat([base] + [torch.from_numpy(w).to(device) for w in warped])
        order = torch.from_numpy(rng.permutation(len(data))).to(device)
        n_batches = len(data) // cfg.batch_size  # drop the last partial batch (BatchNorm)
        sums: dict[str, float] = {}
        bar = tqdm(range(n_batches), desc=f"{desc} epoch {epoch}/{cfg.epochs}", unit="batch")
        for b in bar:
            x = data[order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
            losses = train_step(g, d, opt_g, opt_d, x, cfg.w_adv, distiller)
            if losses["d"] < cfg.d_reset_below:
                init_weights(d)
                opt_d = _adam(d.parameters(), cfg)
                d_resets += 1
            step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            if on_step and step % cfg.log_every == 0:
                on_step(step, {f"loss_{k}": v for k, v in losses.items()})
            if b % 20 == 0:
                bar.set_postfix(d=f"{losses['d']:.3f}", g=f"{losses['g']:.4f}")
        bar.close()
        train_time = time.perf_counter() - t0
        val_scores = score(g, val_t, cfg.score_batch_size)
        val_auc, val_ap = auc_ap(val_y, val_scores)
        row = {
            "epoch": epoch,
            "val_auc": val_auc,
            "val_ap": val_ap,
            "val_recon_n": float(val_scores[val_y == 0].mean()),
            "epoch_time_s": time.perf_counter() - t0,
            "train_samples_per_s": n_batches * cfg.batch_size / train_time,
            **{f"mean_loss_{k}": v / max(n_batches, 1) for k, v in sums.items()},
        }
        value = _selection_value(row, cfg.selection)
        if value > best_value:
            best_value, best_epoch = value, epoch
            best_g, best_d = copy.deepcopy(g.state_dict()), copy.deepcopy(d.state_dict())
        row["best_val_auc"] = max(r["val_auc"] for r in [*history, row])
        history.append(row)
        tqdm.write(
            f"{desc} epoch {epoch}: val AUC {val_auc:.4f}  AP {val_ap:.4f}  "
            f"({row['epoch_time_s']:.0f} s){'  *' if best_epoch == epoch else ''}"
        )
        if on_epoch:
            on_epoch(row)
    return FitResult(best_g, best_d, history, best_epoch, cfg.selection, d_resets)


def train_step(
    g: Generator,
    d: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    x: torch.Tensor,
    w_adv: float,
    distiller: Distiller | None = None,
) -> dict[str, float]:
    """One D step then one G step. x' is detached for D, so D's loss never reaches G."""
    x_rec, maps = g.forward_with_features(x)

    real_logits = d.classify(d.features(x))
    fake_logits = d.classify(d.features(x_rec.detach()))
    loss_d = F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    d.requires_grad_(False)  # the G step needs gradients through D, not for D
    with torch.no_grad():
        feat_real = d.features(x)
    loss_rec = F.mse_loss(x_rec, x)
    loss_adv = F.mse_loss(d.features(x_rec), feat_real)
    terms = {"rec": loss_rec, "adv": w_adv * loss_adv}
    if distiller is not None:
        terms.update(distiller.losses(x, x_rec, maps))
    loss_g = sum(terms.values())
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    d.requires_grad_(True)
    return {"d": loss_d.item(), "g": loss_g.item(), **{k: v.item() for k, v in terms.items()}}
