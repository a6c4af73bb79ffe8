"""Train / val / test assignment of beats (protocol section 3)."""

from __future__ import annotations

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")

# de Chazal et al. (2004) inter-patient record lists.
DS1 = [101, 106, 108, 109, 112, 114, 115, 116, 118, 119, 122, 124, 201, 203, 205, 207, 208,
       209, 215, 220, 223, 230]  # fmt: skip
DS2 = [100, 103, 105, 111, 113, 117, 121, 123, 200, 202, 210, 212, 213, 214, 219, 221, 222,
       228, 231, 232, 233, 234]  # fmt: skip


def _split_off(idx: np.ndarray, frac_first: float, rng: np.random.Generator) -> tuple:
    """Shuffle `idx` and cut it: the first floor(frac_first * n) and the rest."""
    idx = rng.permutation(idx)
    cut = int(np.floor(frac_first * len(idx)))
    return idx[:cut], idx[cut:]


def intra_patient(cls: np.ndarray, fold: int, seed: int) -> np.ndarray:
    """Beat-level split: N beats in 5 contiguous folds (fold `fold` is test), the rest 90/10
    train/val; each abnormal class 90% test / 10% val, the same in every fold."""
    split = np.full(len(cls), -1, dtype=np.int8)
    normal = np.flatnonzero(cls == 0)
    normal = np.random.default_rng([seed, 1]).permutation(normal)
    size = len(normal) // 5
    test = normal[fold * size : (fold + 1) * size]
    rest = np.concatenate([normal[: fold * size], normal[(fold + 1) * size :]])
    train, val = _split_off(np.sort(rest), 0.9, np.random.default_rng([seed, 2, fold]))
    split[train], split[val], split[test] = TRAIN, VAL, TEST
    abnormal_rng = np.random.default_rng([seed, 3])
    for c in np.unique(cls[cls > 0]):
        test_c, val_c = _split_off(np.flatnonzero(cls == c), 0.9, abnormal_rng)
        split[test_c], split[val_c] = TEST, VAL
    return split


def inter_patient(cls: np.ndarray, records: np.ndarray, seed: int) -> np.ndarray:
    """de Chazal split: DS1 N beats 90/10 train/val and DS1 anomalies to val; DS2 is test."""
    split = np.full(len(cls), -1, dtype=np.int8)
    in_ds1 = np.isin(records, DS1)
    in_ds2 = np.isin(records, DS2)
    train, val = _split_off(np.flatnonzero(in_ds1 & (cls == 0)), 0.9, np.random.default_rng(seed))
    split[train], split[val] = TRAIN, VAL
    split[in_ds1 & (cls > 0)] = VAL
    split[in_ds2] = TEST
    return split


def make_split(cls: np.ndarray, records: np.ndarray, scheme: str, fold: int, seed: int):
    if scheme == "intra":
        return intra_patient(cls, fold, seed)
    if scheme == "inter":
        return inter_patient(cls, records, seed)
    raise ValueError(f"unknown split scheme {scheme!r}; use intra or inter")
