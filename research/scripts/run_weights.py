"""What the score probes share: a run's generator from its weights folder, and its per-beat
`mse` on the val and test parts of the prepared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sibeatgan.config import Params
from sibeatgan.data.preprocess import Prepared
from sibeatgan.data.split import TEST, VAL
from sibeatgan.evaluation import scores
from sibeatgan.io import load_state_dict
from sibeatgan.models import build_models


def generator(p: Params, weights: Path) -> torch.nn.Module:
    """G of the run whose `G.pt` lies in `weights`, in eval mode."""
    g, _ = build_models(p.data.channels, p.model.nz, p.model.width, p.seed)
    g.load_state_dict(load_state_dict(weights / "G.pt"))
    return g.eval()


def mse_by_part(
    g: torch.nn.Module, data: Prepared, channels: int
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{"val": (mse, classes, mask), "test": ...}: the per-beat score in float64, the beats'
    classes (0 = N) and the part's mask over the prepared beats."""
    parts = {}
    for name, part in (("val", VAL), ("test", TEST)):
        x, cls = data.part(part, channels)
        mse, _ = scores.beat_scores("mse", scores.Models(g), torch.from_numpy(x), {}, 1024)
        parts[name] = (np.asarray(mse, np.float64), cls, data.split == part)
    return parts
