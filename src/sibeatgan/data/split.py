"""Train / val / test assignment of beats (protocol section 3)."""

from __future__ import annotations

import numpy as np

from sibeatgan.datasets import Dataset, InterPatient

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")


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


def inter_patient(
    cls: np.ndarray, records: np.ndarray, seed: int, patients: InterPatient
) -> np.ndarray:
    """Patient split (MIT-BIH: de Chazal's DS1/DS2): the train patients' N beats 90/10
    train/val and their anomalies to val; the test patients' beats are test."""
    split = np.full(len(cls), -1, dtype=np.int8)
    in_ds1 = np.isin(records, patients.train)
    in_ds2 = np.isin(records, patients.test)
    train, val = _split_off(np.flatnonzero(in_ds1 & (cls == 0)), 0.9, np.random.default_rng(seed))
    split[train], split[val] = TRAIN, VAL
    split[in_ds1 & (cls > 0)] = VAL
    split[in_ds2] = TEST
    return split


def make_split(
    cls: np.ndarray, records: np.ndarray, scheme: str, fold: int, seed: int, ds: Dataset
) -> np.ndarray:
    if scheme == "intra":
        return intra_patient(cls, fold, seed)
    if scheme != "inter":
        raise ValueError(f"unknown split scheme {scheme!r}; use intra or inter")
    if ds.inter_patient is None:
        raise ValueError(
            f"dataset {ds.name} defines no inter-patient split; use data.split=intra "
            "(or give its Dataset an inter_patient)"
        )
    return inter_patient(cls, records, seed, ds.inter_patient)
