"""Every named score on a freshly trained teacher: one run of the default recipe (params.yaml),
then the score table (`sibeatgan.evaluation.scores.score_table`: every score, fitted on val,
per beat and record-adaptive, val and test AUC) on its selected weights.

    python research/scripts/score_runs.py intra-fold3-seed0 --out DIR [--device cuda] [-S ...]
    python research/scripts/score_runs.py inter-seed1 --out DIR --state STATE_DIR
    python research/scripts/score_runs.py inter-seed1 --out DIR --rescore DIR/inter-seed1

Writes DIR/RUN.json (the split, fold, seed, selected epoch, per-epoch val AUC and the table's
rows) and, with --keep-weights, DIR/RUN/G.pt and D.pt (state dicts). Prepared data go to
DATA/prepared/<key> (one per preprocess/split config, made once even when runs start
together). With --state, the training state is written to STATE_DIR/RUN/train_state.pt after
every epoch and a stopped run continues from it (the same run name and overrides only).
Imports no MLflow: it runs where only torch and the scientific stack are installed.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from sibeatgan.config import MOVED_KNOBS, load_params, role_train
from sibeatgan.data.preprocess import ensure_prepared, load_data
from sibeatgan.data.split import TEST, TRAIN, VAL
from sibeatgan.evaluation import scores
from sibeatgan.io import load_state_dict, read_json, save_state_dict, write_json
from sibeatgan.models import build_models
from sibeatgan.provenance import git_commit
from sibeatgan.training import state as train_state
from sibeatgan.training.loop import Checkpoint, FitData, Hooks, Nets, fit


def run_overrides(run: str) -> list[str]:
    """`intra-fold3-seed0` or `inter-seed1` as params overrides."""
    words = run.split("-")
    split = words[0]
    if split not in ("intra", "inter"):
        raise SystemExit(f"unknown run {run!r}: intra-foldN-seedS or inter-seedS")
    fold = next((int(w[4:]) for w in words if w.startswith("fold")), 0)
    seed = next((int(w[4:]) for w in words if w.startswith("seed")), 0)
    return [f"data.split={split}", f"data.fold={fold}", f"seed={seed}"]


def recipe_overrides(overrides: list[str]) -> list[str]:
    """The overrides that change a run (runtime settings, under their old names too, do not)."""
    runtime = ("runtime.", *MOVED_KNOBS)
    return [o for o in overrides if not o.split("=", 1)[0].startswith(runtime)]


def resumable(state_dir: Path | None, run: str, overrides: list[str]) -> Checkpoint:
    """A checkpoint under STATE/RUN that resumes a stopped run of the same name and overrides."""
    if state_dir is None:
        return Checkpoint()
    path = state_dir / run / train_state.FILENAME
    meta = {"run": run, "overrides": recipe_overrides(overrides)}
    state = train_state.read(path) if path.exists() else None
    if state is not None:
        state["meta"]["overrides"] = recipe_overrides(state["meta"]["overrides"])
    if state is not None and state["meta"] != meta:
        raise SystemExit(f"{path} was trained as {state['meta']}, not {meta}; remove it")
    if state is not None:
        print(f"{run}: resuming after epoch {state['progress']['epoch']}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Checkpoint(path=path, meta=meta, resume_from=state)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("outputs/score-runs"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep-weights", action="store_true")
    ap.add_argument("--state", type=Path, help="resumable training state under STATE/RUN/")
    ap.add_argument(
        "--rescore",
        type=Path,
        metavar="WEIGHTS_DIR",
        help="no training: the table again on G.pt and D.pt kept there, into OUT/RUN.json "
        "(its training figures kept; `rescored_commit` added)",
    )
    ap.add_argument("-S", "--set", action="append", default=[], help="params override")
    args = ap.parse_args()
    commit = git_commit()  # the code it starts with (SIBEATGAN_COMMIT where .git did not travel)
    p = load_params("params.yaml", [*run_overrides(args.run), *args.set])
    if p.runtime.threads > 0:
        torch.set_num_threads(p.runtime.threads)
    t0 = time.perf_counter()
    p = ensure_prepared(p, args.data)
    data = load_data(p)
    prep_s = time.perf_counter() - t0
    device = torch.device(args.device)
    g, d = build_models(p.data.channels, p.model.nz, p.model.width, p.seed)
    g, d = g.to(device), d.to(device)
    out_file = args.out / f"{args.run}.json"
    if args.rescore:
        g.load_state_dict(load_state_dict(args.rescore / "G.pt"))
        d.load_state_dict(load_state_dict(args.rescore / "D.pt"))
        out = {**read_json(out_file), "rescored_commit": commit}
    else:
        out = train(args, p, data, g, d) | {"commit": commit, "prepare_s": prep_s}
    rows = score_rows(p, data, scores.Models(g.eval(), d.eval()))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(out_file, {**out, "rows": rows})
    best = {(r["score"], r["record_adaptive"]): r["test_auc"] for r in rows}
    print(f"{args.run}: mse {best[('mse', False)]:.4f}, mse adaptive "
          f"{best[('mse', True)]:.4f}", flush=True)  # fmt: skip


def train(args, p, data, g, d) -> dict:
    """Train the teacher (resuming a stopped run under --state); its figures for RUN.json."""
    nc = p.data.channels
    train_x, _ = data.part(TRAIN, nc)
    val_x, val_cls = data.part(VAL, nc)
    checkpoint = resumable(args.state, args.run, args.set)
    fit_data = FitData(train_x, val_x, (val_cls > 0).astype(int), p.runtime.score_batch_size)
    result = fit(Nets(g, d), fit_data, role_train(p, "teacher"), p.seed,
                 hooks=Hooks(desc=args.run), checkpoint=checkpoint)  # fmt: skip
    g.load_state_dict(result.g_state)
    d.load_state_dict(result.d_state)
    if checkpoint.path is not None:  # the run is done: its table replaces the state
        checkpoint.path.unlink(missing_ok=True)
    if args.keep_weights:
        (args.out / args.run).mkdir(parents=True, exist_ok=True)
        save_state_dict(args.out / args.run / "G.pt", result.g_state)
        save_state_dict(args.out / args.run / "D.pt", result.d_state)
    device = next(g.parameters()).device
    return {
        "run": args.run,
        "split": p.data.split,
        "fold": p.data.fold,
        "seed": p.seed,
        "epochs": p.train.epochs,
        "best_epoch": result.best_epoch,
        "val_auc_per_epoch": [r["val_auc"] for r in result.history],
        "d_resets": result.d_resets,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "train_s": result.train_time_s,
    }


def score_rows(p, data, models: scores.Models) -> list[dict]:
    """The score table's rows (NaN written as null)."""
    nc, labels = p.data.channels, lambda cls: (cls > 0).astype(int)  # noqa: E731
    val_x, val_cls = data.part(VAL, nc)
    test_x, test_cls = data.part(TEST, nc)
    val = scores.Scored(torch.from_numpy(val_x), labels(val_cls), data.records[data.split == VAL],
                        data.context(VAL))  # fmt: skip
    test = scores.Scored(torch.from_numpy(test_x), labels(test_cls),
                         data.records[data.split == TEST], data.context(TEST))  # fmt: skip
    rows = scores.score_table(models, val, test, p.runtime.score_batch_size)
    nan = lambda v: isinstance(v, float) and math.isnan(v)  # noqa: E731
    return [{k: None if nan(v) else v for k, v in r.items()} for r in rows]


if __name__ == "__main__":
    main()
