"""reports/scores.json and its markdown table from the score-table runs of score_runs.py:
every named score, per beat and record-adaptive, on the intra-patient folds (seed 0) and the
inter-patient seeds, val and test AUC, paired against `mse` per beat on the same models. Scores
of record context (timing, the record's other beats) come last, marked, apart from the
per-beat protocol.

    python research/scripts/scores_report.py research/probes/scores --out reports/scores.json \
        --markdown research/probes/scores/table.md

Counts what it finds (`n` per row) and says in the table which runs are missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sibeatgan.evaluation.scores import SCORES
from sibeatgan.io import write_json
from sibeatgan.study.stats import difference_stats

EXPECTED = {"intra": [f"intra-fold{f}-seed0" for f in range(5)],
            "inter": [f"inter-seed{s}" for s in range(3)]}  # fmt: skip
UNIT = {"intra": "fold", "inter": "seed"}


def load_runs(folder: Path) -> dict[str, dict[str, dict]]:
    """scope -> run name -> the run's rows keyed by (score, record_adaptive)."""
    out: dict[str, dict[str, dict]] = {"intra": {}, "inter": {}}
    for scope, names in EXPECTED.items():
        for name in names:
            path = folder / f"{name}.json"
            if path.exists():
                rows = json.loads(path.read_text())["rows"]
                out[scope][name] = {(r["score"], r["record_adaptive"]): r for r in rows}
    return out


def summary_rows(runs: dict[str, dict[str, dict]]) -> list[dict]:
    rows = []
    for scope, by_run in runs.items():
        if not by_run:
            continue
        keys = sorted(
            set().union(*by_run.values()),
            key=lambda k: (SCORES[k[0]].reads_context, k[1], k[0] != "mse", k[0]),
        )
        for score, adaptive in keys:
            names = sorted(n for n in by_run if (score, adaptive) in by_run[n])
            val = [by_run[n][(score, adaptive)]["val_auc"] for n in names]
            test = np.array([by_run[n][(score, adaptive)]["test_auc"] for n in names], float)
            mse = np.array([by_run[n][("mse", False)]["test_auc"] for n in names], float)
            diff = difference_stats(test - mse)
            rows.append({
                "score": score,
                "record_adaptive": adaptive,
                # reads the beat's context in its record (timing, the record's other beats):
                # like record-adaptive rows, never the published per-beat protocol
                "context": SCORES[score].reads_context,
                "scope": scope,
                "unit": UNIT[scope],
                "n": len(names),
                "runs": names,
                "val_auc_mean": float(np.mean(val)),
                "test_auc_mean": float(test.mean()),
                "test_auc_std": float(test.std(ddof=1)) if len(test) > 1 else None,
                "test_auc": [float(t) for t in test],
                "vs_mse": {"mean": diff["diff_auc_mean"], "p": diff["diff_auc_p"]},
            })  # fmt: skip
    return rows


def markdown(rows: list[dict], runs: dict[str, dict[str, dict]]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [
        "| scope | score | record context | record-adaptive | n | val AUC | test AUC mean ± std "
        "| vs mse (p) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = r["vs_mse"]
        p = "-" if vs["p"] is None else f"{vs['p']:.3f}"
        reference = (r["score"], r["record_adaptive"]) == ("mse", False)
        versus = "-" if reference else f"{vs['mean']:+.4f} ({p})"
        lines.append(
            f"| {r['scope']} | `{r['score']}` | {'yes' if r['context'] else 'no'} | "
            f"{'yes' if r['record_adaptive'] else 'no'} | "
            f"{r['n']} | {fmt(r['val_auc_mean'])} | {fmt(r['test_auc_mean'])} ± "
            f"{fmt(r['test_auc_std'])} | {versus} |"
        )
    missing = [n for scope, names in EXPECTED.items() for n in names if n not in runs[scope]]
    if missing:
        lines.append(f"\nNot yet run: {', '.join(missing)}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    runs = load_runs(args.folder)
    rows = summary_rows(runs)
    write_json(args.out, {"rows": rows})
    if args.markdown:
        args.markdown.write_text(markdown(rows, runs))
    print(markdown(rows, runs))


if __name__ == "__main__":
    main()
