"""`sibeatgan detect` on the DS2 records (patients an inter-patient model never saw), each
scoring and threshold: a per-record table of beats, N false-alarm rate and S, V, F recall.

    python research/scripts/ds2_detect.py WEIGHTS_DIR --out research/probes/scores [-S ...]
    # the detector of another score: -S train.score=mse_rhythm --name inter-seed0-mse_rhythm

WEIGHTS_DIR holds G.pt and D.pt of an inter-patient teacher (`score_runs.py inter-seedS
--keep-weights`); this writes its detector.json (the product's `write_detector`: score and
thresholds fitted on its val set, per beat and record-adaptive) beside them, then runs the
product's `detect` on every DS2 record with each threshold and scoring, and writes
OUT/ds2-detect-<name>.json and .md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from sibeatgan.config import load_params
from sibeatgan.data.preprocess import ensure_prepared, load_data
from sibeatgan.data.split import VAL
from sibeatgan.datasets.mitdb import DS2
from sibeatgan.detection.run import detect
from sibeatgan.evaluation.scores import Models
from sibeatgan.io import load_state_dict, write_json
from sibeatgan.models import build_models
from sibeatgan.pipeline.train import write_detector

SETTINGS = [  # (scoring, alarm rate)
    ("adaptive", None), ("adaptive", 0.01), ("adaptive", 0.05),
    ("beat", None), ("beat", 0.01), ("beat", 0.05),
]  # fmt: skip


def write_model(weights: Path, p) -> None:
    """detector.json for the weights in `weights`, fitted on the val set of their split."""
    data = load_data(p)
    val_x, val_cls = data.part(VAL, p.data.channels)
    g, d = build_models(p.data.channels, p.model.nz, p.model.width, p.seed)
    g.load_state_dict(load_state_dict(weights / "G.pt"))
    d.load_state_dict(load_state_dict(weights / "D.pt"))
    records = data.records[data.split == VAL]
    with torch.no_grad():
        write_detector(weights, Models(g.eval(), d.eval()), p.model.width, p, val_x, val_cls,
                       records, data.context(VAL), role="teacher", run_id="")  # fmt: skip


def rows_for(summaries: list[dict], scoring: str, rate: float | None) -> list[dict]:
    rows = []
    for s in summaries:
        c = s["classes"]
        row = {"record": s["record"], "scoring": s["scoring"], "asked": scoring}
        row |= {"threshold": s["threshold"]["name"], "alarm_rate": rate, "beats": s["beats"]}
        row["n_false_alarm"] = c["N"]["false_alarm_rate"] if "N" in c else None
        for k in ("S", "V", "F"):
            row[f"recall_{k}"] = c[k]["recall"] if k in c else None
            row[f"n_{k}"] = c[k]["beats"] if k in c else 0
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| record | scoring | threshold | beats | N false alarms | recall S | recall V | "
             "recall F |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cells = [str(r["record"]), r["scoring"], r["threshold"], str(r["beats"]),
                 fmt(r["n_false_alarm"]), *(fmt(r[f"recall_{k}"]) for k in "SVF")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("outputs/score-runs"))
    ap.add_argument("--name", default="inter-seed0")
    ap.add_argument("--records", default=",".join(map(str, DS2)), help="DS2 by default")
    ap.add_argument("-S", "--set", action="append", default=[])
    args = ap.parse_args()
    p = load_params("params.yaml", ["data.split=inter", *args.set])
    p = ensure_prepared(p, args.data)
    write_model(args.weights, p)
    mitdb = Path(p.runtime.records_dir)
    records = [str(mitdb / r) for r in args.records.split(",")]
    table = []
    for scoring, rate in SETTINGS:
        with tempfile.TemporaryDirectory() as tmp:
            summaries = detect(records, str(args.weights), Path(tmp) / "out", alarm_rate=rate,
                               scoring=scoring, echo=lambda _: None)  # fmt: skip
            shutil.rmtree(Path(tmp) / "out", ignore_errors=True)
        table += rows_for(summaries, scoring, rate)
        mine = [r for r in table if r["asked"] == scoring and r["alarm_rate"] == rate]
        fa = np.nanmean([r["n_false_alarm"] for r in mine if r["n_false_alarm"] is not None])
        print(f"{scoring} {rate}: mean N false alarms {fa:.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"ds2-detect-{args.name}.json", {"rows": table, "params": args.set})
    (args.out / f"ds2-detect-{args.name}.md").write_text(markdown(table) + "\n")


if __name__ == "__main__":
    main()
