"""Per-record normalisations of the per-beat score on an inter-patient model: pooled val and
test AUC of each (a normalisation is monotone within a record, so it can change only how
beats of different records rank against each other).

    python research/scripts/adaptive_variants.py WEIGHTS_DIR [--data outputs/score-runs]

WEIGHTS_DIR holds G.pt of an inter-patient teacher (`score_runs.py inter-seedS
--keep-weights`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from run_weights import generator, mse_by_part

from sibeatgan.config import load_params
from sibeatgan.data.preprocess import ensure_prepared, load_data
from sibeatgan.evaluation.metrics import auc_ap


def q(s: np.ndarray, level: float) -> float:
    return float(np.quantile(s, level))


VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "robust z: (s - median) / (1.4826 MAD)": lambda s: (
        (s - np.median(s)) / (1.4826 * np.median(np.abs(s - np.median(s))))
    ),
    "s / median": lambda s: s / q(s, 0.5),
    "s / q25": lambda s: s / q(s, 0.25),
    "s / q10": lambda s: s / q(s, 0.10),
    "(s - q25) / (q25 - q05)": lambda s: (s - q(s, 0.25)) / (q(s, 0.25) - q(s, 0.05)),
    "rank in the record": lambda s: np.argsort(np.argsort(s)) / len(s),
}


def per_record(s: np.ndarray, records: np.ndarray, f) -> np.ndarray:
    out = np.empty_like(s, dtype=np.float64)
    for r in np.unique(records):
        m = records == r
        out[m] = f(s[m])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("--data", type=Path, default=Path("outputs/score-runs"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    p = ensure_prepared(load_params("params.yaml", ["data.split=inter"]), args.data)
    data = load_data(p)
    parts = {
        name: (mse, (cls > 0).astype(int), data.records[mask])
        for name, (mse, cls, mask) in mse_by_part(
            generator(p, args.weights), data, p.data.channels
        ).items()
    }
    print("| per-record normalisation of mse | val AUC | test AUC |\n|---|---|---|")
    print(f"| none (per beat) | {auc_ap(*parts['val'][1::-1])[0]:.4f} "
          f"| {auc_ap(*parts['test'][1::-1])[0]:.4f} |")  # fmt: skip
    for label, f in VARIANTS.items():
        cells = [auc_ap(y, per_record(s, rec, f))[0] for s, y, rec in parts.values()]
        print(f"| {label} | {cells[0]:.4f} | {cells[1]:.4f} |")
    s, y, rec = parts["test"]
    within = [
        auc_ap(y[rec == r], s[rec == r])[0] for r in np.unique(rec) if 0 < y[rec == r].mean() < 1
    ]
    print(f"\nmean within-record test AUC (records with both classes): {np.mean(within):.4f}")


if __name__ == "__main__":
    main()
