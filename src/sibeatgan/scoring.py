"""Anomaly scores from a generator: per-beat reconstruction error, G in eval mode."""

from __future__ import annotations

import numpy as np
import torch

from sibeatgan.distill import beat_scores
from sibeatgan.models import Generator


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def score(g: Generator, x: torch.Tensor | np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Scores of every beat in `x` [n, nc, L]. G is put in eval mode (BatchNorm uses its running
    statistics, so scored beats never leak into them) and restored afterwards."""
    was_training = g.training
    g.eval()
    device = next(g.parameters()).device
    x = torch.as_tensor(x)
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device, non_blocking=True)
        out.append(beat_scores(g(xb), xb).float().cpu())
    g.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)
