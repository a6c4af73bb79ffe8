"""Does the beat's timing add to the reconstruction score on new patients? Val and test AUC of
the per-beat `mse`, of rhythm features alone, and of the two mixed (a logistic regression
fitted on val), on a teacher of `score_runs.py --keep-weights`.

    python research/scripts/rhythm_probe.py outputs/score-runs/inter-seed0 [--out CSV]
    python research/scripts/rhythm_probe.py --summary research/probes/scores/rhythm.csv

Rhythm features of a beat: the product's `data.rhythm.beat_rhythm` (prematurity, pause), from
the R-peak samples of the beats preprocessing kept in its record (every part: they use
neighbouring beats, no labels, so like record-adaptive scoring they are not the published
per-beat protocol). The mixes (KINDS): log mse, timing alone, the two (`mse_rhythm`), mse as a
robust z in its record with timing (`mse_z_rhythm`), a local reference of mse, and a
gradient-boosted non-linear mix.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from run_weights import generator, mse_by_part
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sibeatgan.config import load_params
from sibeatgan.data.preprocess import ensure_prepared, load_data
from sibeatgan.data.rhythm import beat_rhythm
from sibeatgan.evaluation import scores
from sibeatgan.evaluation.metrics import auc_ap

NEIGHBOURS = 16  # beats either side whose median mse is a beat's local reference


def local_mse(mse: np.ndarray, records: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Each beat's mse over the median mse of the NEIGHBOURS beats either side of it in its
    record (itself left out): how unusual its shape is for this stretch of this patient."""
    out = np.ones(len(mse))
    for rec in np.unique(records):
        idx = np.flatnonzero(records == rec)
        idx = idx[np.argsort(samples[idx])]
        m = mse[idx]
        for j in range(len(idx)):
            near = np.r_[m[max(j - NEIGHBOURS, 0) : j], m[j + 1 : j + 1 + NEIGHBOURS]]
            out[idx[j]] = m[j] / np.median(near) if len(near) else 1.0
    return out


KINDS = ("mse", "rhythm", "mse + rhythm", "adaptive mse + rhythm", "mse + local mse + rhythm",
         "mse + rhythm, boosted")  # fmt: skip


def features(part: tuple, kind: str) -> np.ndarray:
    mse, _, records, rr, local = part
    if kind == "adaptive mse + rhythm":
        cols = [scores.record_adaptive(mse, records)]
    else:
        cols = [] if kind == "rhythm" else [np.log(mse)]
    if "local" in kind:
        cols.append(np.log(local))
    if "rhythm" in kind:
        cols += [np.log(rr[:, 0]), np.log(rr[:, 1])]
    return np.stack(cols, axis=1)


def classifier(kind: str):
    if "boosted" in kind:  # a non-linear mix, for comparison with the linear one
        return HistGradientBoostingClassifier(max_iter=200, class_weight="balanced", random_state=0)
    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))


def decision(model, x: np.ndarray) -> np.ndarray:
    if hasattr(model, "decision_function"):
        return model.decision_function(x)
    return model.predict_proba(x)[:, 1]


def summary(path: Path) -> list[str]:
    """The probe's markdown rows: per kind, the mean over runs of val, test, S and V AUC, intra
    (folds) then inter (seeds)."""
    rows = list(csv.DictReader(path.open()))
    lines = []
    for kind in KINDS:
        cells = [kind]
        for scope in ("intra", "inter"):
            runs = [r for r in rows if r["score"] == kind and r["run"].startswith(scope)]
            for col, fmt in (("val_auc", ".4f"), ("test_auc", ".4f"), ("test_auc_S", ".3f"),
                             ("test_auc_V", ".3f")):  # fmt: skip
                cells.append(format(np.mean([float(r[col]) for r in runs]), fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", type=Path, nargs="?")
    ap.add_argument("--data", type=Path, default=Path("outputs/score-runs"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--summary", type=Path, help="print the mean table of a probe CSV and stop")
    args = ap.parse_args()
    if args.summary:
        print("\n".join(summary(args.summary)))
        return
    if args.weights is None:
        ap.error("give the weights folder of a run, or --summary CSV")
    torch.set_num_threads(1)
    run = args.weights.name
    split = ["data.split=inter"] if run.startswith("inter") else ["data.split=intra"]
    fold = [f"data.fold={w[4:]}" for w in run.split("-") if w.startswith("fold")]
    p = ensure_prepared(load_params("params.yaml", split + fold), args.data)
    data = load_data(p)
    rr = beat_rhythm(data.records, data.samples)
    parts = {}
    for name, (mse, cls, mask) in mse_by_part(
        generator(p, args.weights), data, p.data.channels
    ).items():
        local = local_mse(mse, data.records[mask], data.samples[mask])
        parts[name] = (mse, cls, data.records[mask], rr[mask], local)
    rows = []
    for kind in KINDS:
        fx = {k: features(part, kind) for k, part in parts.items()}
        model = classifier(kind).fit(fx["val"], parts["val"][1] > 0)
        s = {k: decision(model, v) for k, v in fx.items()}
        row = {"run": run, "score": kind}
        row |= {f"{k}_auc": auc_ap(parts[k][1] > 0, s[k])[0] for k in ("val", "test")}
        cls = parts["test"][1]
        for c, label in ((1, "S"), (2, "V"), (3, "F")):
            keep = (cls == 0) | (cls == c)
            row[f"test_auc_{label}"] = auc_ap(cls[keep] == c, s["test"][keep])[0]
        coef = getattr(model[-1], "coef_", None) if hasattr(model, "steps") else None
        row["weights"] = "" if coef is None else " ".join(f"{w:+.3f}" for w in coef[0])
        rows.append(row)
        print(" | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    if args.out:
        new = not args.out.exists()
        with args.out.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
