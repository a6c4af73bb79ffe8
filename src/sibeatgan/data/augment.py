"""Time-warp augmentation of BeatGAN_aug (protocol section 5)."""

from __future__ import annotations

import numpy as np


def time_warp(x: np.ndarray, rng: np.random.Generator, centre: int = 140, k: int = 7) -> np.ndarray:
    """Warp each beat of `x` [n, nc, L]: on each side of `centre`, drop `k` random ticks and
    insert a midpoint after `k` others, so the length stays L and the R peak stays put."""
    n, _, length = x.shape
    out = np.empty_like(x)
    for i in range(n):
        index: list[float] = []
        for lo, hi in ((0, centre), (centre, length - 1)):
            ticks = rng.permutation(np.arange(lo, hi))
            insert_after, drop = set(ticks[:k].tolist()), set(ticks[k : 2 * k].tolist())
            for t in range(lo, hi):
                if t not in drop:
                    index.append(t)
                if t in insert_after:
                    index.append(t + 0.5)
        index.append(length - 1)
        grid = np.asarray(index)
        for c in range(x.shape[1]):
            out[i, c] = np.interp(grid, np.arange(length), x[i, c])
    return out
