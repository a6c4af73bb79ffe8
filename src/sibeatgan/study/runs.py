"""The distillation study: named variants, each trained per seed against the same teacher, and
each finished run summarised in a small JSON file meant to be committed (reports/runs/), so
results outlive the local MLflow store.

Every run follows the study recipe (params.yaml with the overrides in the summaries folder's
recipe.yaml: the same budget for every variant) and scores
val and test after each epoch, so a run's summary gives the test figures of the checkpoint each
selection rule would pick: best val AUC (the published protocol; val holds labelled anomalies)
and the unsupervised rules, lowest val-N reconstruction error and last epoch.

Every seed uses the same data split (drawn by `data.split_seed`, 0 unless overridden): a seed
changes initial weights and batch order only. A teacher and the students of the same seed share
the split, initial weights and batch order: their paired difference is the effect of the
variant, not of the draw.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import torch

from sibeatgan import tracking
from sibeatgan.config import ConfigError, Params, role_train, with_overrides
from sibeatgan.data.fetch import ensure_records
from sibeatgan.data.preprocess import Prepared, ensure_prepared
from sibeatgan.data.split import TEST, VAL
from sibeatgan.evaluation import scores
from sibeatgan.evaluation.metrics import detection_report
from sibeatgan.evaluation.scoring import score
from sibeatgan.io import UnsafeFileError, load_state_dict, read_json, state_digest, write_json
from sibeatgan.models import Generator, conv_macs
from sibeatgan.pipeline.layout import Layout
from sibeatgan.pipeline.train import train_model
from sibeatgan.pipeline.trained import load_checked, load_generator
from sibeatgan.provenance import git_commit
from sibeatgan.study.variant_files import Variant, controls, load_variants
from sibeatgan.training import state as train_state

STUDY_EXPERIMENT = "sibeatgan-study"
RUNS_DIR = Path("reports/runs")
WORK_DIR = Path("outputs/study")
UNSUPERVISED = "val_recon"  # the unsupervised rule the report shows beside val AUC


# the variants, one file each in study/variants/ (see `variant_files`), and each variant with a
# control: the run without its distillation term
VARIANTS: dict[str, Variant] = load_variants()
CONTROLS: dict[str, str] = controls(VARIANTS)

# figures of each epoch's detection report kept in the history and the selections
REPORT_KEYS = (
    "test_auc",
    "test_ap",
    "test_f1",
    "oracle_f1",
    "val_f1",
    "threshold",
    "test_n_recall",
    "recall_S",
    "recall_V",
    "recall_F",
    "recall_Q",
)


@contextmanager
def study_experiment() -> Iterator[None]:
    """Track in the study's MLflow experiment unless MLFLOW_EXPERIMENT_NAME names another."""
    before = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    os.environ["MLFLOW_EXPERIMENT_NAME"] = before or STUDY_EXPERIMENT
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_EXPERIMENT_NAME"]


def group_name(split: str, fold: int, split_seed: int = 0) -> str:
    """The data a run is trained and tested on: `intra-fold0`, or `intra-split3-fold0` for a
    split drawn with another `data.split_seed`."""
    return f"{split}-fold{fold}" if split_seed == 0 else f"{split}-split{split_seed}-fold{fold}"


def run_name(split: str, fold: int, seed: int, split_seed: int = 0) -> str:
    return f"{group_name(split, fold, split_seed)}-seed{seed}"


def summary_path(
    variant: str, split: str, fold: int, seed: int, runs_dir: Path, split_seed: int = 0
) -> Path:
    return runs_dir / variant / f"{run_name(split, fold, seed, split_seed)}.json"


def variant_params(base: Params, variant: str, seed: int, fold: int, split: str, extra=()):
    """The params of one study run: `base` (the study recipe), the run's seed, fold and split,
    the variant's overrides, then `extra`. Every variant gets the same number of training
    steps: a variant that trains on time-warped copies as well (each epoch 1 + copies times as
    long) gets the budget's epochs divided by 1 + copies."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    common = [f"seed={seed}", f"data.fold={fold}", f"data.split={split}", "train.selection=val_auc"]
    p = with_overrides(base, [*common, *VARIANTS[variant].overrides, *extra])
    copies = p.train.augment_copies
    if copies:
        p = with_overrides(p, [f"train.epochs={max(1, round(p.train.epochs / (1 + copies)))}"])
    return p


def epoch_monitor(p: Params, data: Prepared) -> Callable[[scores.Models], dict[str, float]]:
    """Per-epoch detection figures on val and test for the model being trained, with the
    run's anomaly score (`train.score`) fitted on val."""
    val_x, val_cls = data.part(VAL, p.data.channels)
    test_x, test_cls = data.part(TEST, p.data.channels)
    name, bs = p.train.score, p.runtime.score_batch_size
    placed = scores.score_def(name).reads_context
    val_t, test_t = (data.context(part) if placed else None for part in (VAL, TEST))

    def monitor(models: scores.Models) -> dict[str, float]:
        params, val_s, _ = scores.fitted_on_val(name, models, val_x, val_cls > 0, bs, val_t)
        test_s, _ = scores.beat_scores(name, models, test_x, params, bs, test_t)
        report = detection_report(val_cls, val_s, test_cls, test_s)
        return {k: float("nan") if report[k] is None else float(report[k]) for k in REPORT_KEYS}

    return monitor


def selections(history: list[dict], val_auc_epoch: int) -> dict[str, dict]:
    """The epoch each rule picks, with that epoch's figures."""
    picks = {
        "val_auc": val_auc_epoch,
        "val_recon": int(min(history, key=lambda r: r["val_recon_n"])["epoch"]),
        "last": int(history[-1]["epoch"]),
    }
    out = {}
    for rule, epoch in picks.items():
        row = history[epoch - 1]
        out[rule] = {"epoch": epoch, "val_auc": row["val_auc"], "val_ap": row["val_ap"]}
        # a class absent from test has no recall: NaN in the curves, None (null) in JSON
        out[rule].update({k: None if math.isnan(row[k]) else row[k] for k in REPORT_KEYS})
    return out


def scoring_cost(g: Generator, x: np.ndarray) -> dict[str, float]:
    """Multiply-adds per beat (from the layer shapes) and measured beats/s at batch 1024."""
    g = g.cpu()
    beats = torch.as_tensor(x[:8192])
    score(g, beats[:1024])  # warm-up
    t0 = time.perf_counter()
    score(g, beats)
    return {
        "g_macs_per_beat": conv_macs(g, g.encoder.blocks[0][0].in_channels),
        "score_beats_per_s": len(beats) / (time.perf_counter() - t0),
    }


def device_name() -> str:
    """What trained the run: the GPU's name, or the CPU and its thread count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({torch.get_num_threads()} threads)"


def _teacher_dir(base, seed, fold, split, work: Path, extra=()) -> tuple[Path, Params]:
    p = variant_params(base, "teacher", seed, fold, split, extra)
    name = run_name(split, fold, seed, p.data.split_seed)
    return Layout(work / name / "teacher").model_dir("teacher"), p


def teacher_is_current(base, seed, fold, split, work: Path, extra=()) -> bool:
    """Whether `work` holds the seed's teacher checkpoint, trained with these params."""
    teacher_dir, p = _teacher_dir(base, seed, fold, split, work, extra)
    fit = teacher_dir / "fit.json"
    return fit.exists() and _fit_is_current(read_json(fit), p)


def teacher_dir_for(base, seed, fold, split, work: Path, runs_dir: Path, extra) -> Path:
    """The seed's teacher checkpoint; trained (and summarised) first when missing or when the
    one in `work` was trained with other params (an older split, another recipe)."""
    if not teacher_is_current(base, seed, fold, split, work, extra):
        run_variant(base, "teacher", seed, fold, split, work, runs_dir, extra)
    return _teacher_dir(base, seed, fold, split, work, extra)[0]


def _fit_is_current(fit: dict, p: Params) -> bool:
    if "recipe" in fit:
        return tracking.same_recipe(fit["recipe"], p)
    return fit["teacher_config"] == tracking.teacher_config_key(p)  # checkpoints before recipes


def unfinished_runs(work: Path, base: Params) -> dict[str, list[str]]:
    """Per variant, the runs in `work` with a training state but no checkpoint yet (running
    now, or stopped: `study run` resumes them), e.g. `intra-fold0-seed0 after epoch 7/30`."""
    found: dict[str, list[str]] = {}
    for path in sorted(work.glob(f"*/*/models/*/{train_state.FILENAME}")):
        variant, run = path.parents[2].name, path.parents[3].name
        if variant not in VARIANTS:
            continue
        try:
            state = train_state.read(path)
        except UnsafeFileError as err:
            found.setdefault(variant, []).append(f"{run} (unreadable state: {err})")
            continue
        written = state["meta"]["params"]
        p = variant_params(
            base, variant, written["seed"], written["data"]["fold"], written["data"]["split"]
        )
        same = tracking.same_recipe(written, p, VARIANTS[variant].role)
        line = f"{run} after epoch {state['progress']['epoch']}/{written['train']['epochs']}"
        found.setdefault(variant, []).append(line + ("" if same else " (other recipe)"))
    return found


def summary_is_current(summary: dict, base: Params, extra: tuple[str, ...] = ()) -> bool:
    """Whether a run summary was trained with the params its variant, seed, fold and split
    would get from `base` now; a summary of another recipe does not count as done."""
    variant = summary["variant"]
    p = variant_params(base, variant, summary["seed"], summary["fold"], summary["split"], extra)
    return tracking.same_recipe(summary["params"], p, VARIANTS[variant].role)


def reproduced_runs(
    previous: dict | None, summary: dict, base: Params, extra: tuple[str, ...] = ()
) -> list[str]:
    """The MLflow runs that `summary` trained again to the same result: `previous` (the summary
    it replaces) and those `previous` itself reproduced, when both have the recipe of `base`,
    the same per-epoch val and test figures and (where both record one) the same weights digest.
    Students paired with any of those runs stay paired with the new one (same teacher)."""
    if previous is None or previous["history"] != summary["history"]:
        return []
    if not all(summary_is_current(s, base, extra) for s in (previous, summary)):
        return []
    if previous.get("g_sha256", summary["g_sha256"]) != summary["g_sha256"]:
        return []
    return sorted({*previous.get("reproduces", []), previous["mlflow_run_id"]})


def run_variant(
    base: Params,
    variant: str,
    seed: int,
    fold: int = 0,
    split: str = "intra",
    work: Path = WORK_DIR,
    runs_dir: Path = RUNS_DIR,
    extra: tuple[str, ...] = (),
    resume: bool = True,
) -> dict:
    """Train one variant for one seed, fold and split; write and return its summary. A stopped
    training of it in `work` is resumed unless `resume` is off."""
    commit = git_commit()  # the code this run starts from, not the HEAD when it ends
    p = variant_params(base, variant, seed, fold, split, extra)
    role = VARIANTS[variant].role
    ensure_records(p)
    p = ensure_prepared(p, work)
    teacher_dir = None
    if role == "student":
        teacher_dir = teacher_dir_for(base, seed, fold, split, work, runs_dir, extra)
    split_seed = p.data.split_seed
    layout = Layout(work / run_name(split, fold, seed, split_seed) / variant)
    with study_experiment():
        data = load_checked(p)
        monitor = epoch_monitor(p, data)
        # a stopped run of an older recipe is replaced: its summary would be stale anyway
        info = train_model(
            p, role, layout, teacher_dir, monitor=monitor, resume=resume, replace_other=True
        )
        mlflow.MlflowClient(tracking.setup()).set_tag(info["run_id"], "variant", variant)
    history = info.pop("history")
    g = load_generator(layout.model_dir(role), role=role)
    test_x, _ = data.part(TEST, p.data.channels)
    summary = {
        "variant": variant,
        "about": VARIANTS[variant].about,
        "role": role,
        "seed": seed,
        "fold": fold,
        "split": split,
        "split_seed": split_seed,
        "overrides": [*VARIANTS[variant].overrides, *extra],
        "mlflow_run_id": info["run_id"],
        "teacher_run_id": read_json(teacher_dir / "fit.json")["run_id"] if teacher_dir else None,
        "g_sha256": state_digest(g.state_dict()),
        "teacher_g_sha256": (
            state_digest(load_state_dict(teacher_dir / "G.pt")) if teacher_dir else None
        ),
        "commit": commit,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "epochs": role_train(p, role).epochs,
        "precision": info["precision"],
        "device": device_name(),
        "train_time_s": info["train_time_s"],
        "d_resets": info["d_resets"],
        "g_params": info["g_params"],
        "width": info["width"],
        **scoring_cost(g, test_x),
        "selection": selections(history, info["best_epoch"]),
        "history": [
            {k: r[k] for k in ("epoch", "val_auc", "val_recon_n", "test_auc", "test_ap")}
            for r in history
        ],
        "params": p.to_dict(),
    }
    path = summary_path(variant, split, fold, seed, runs_dir, split_seed)
    previous = read_json(path) if path.exists() else None
    if reproduces := reproduced_runs(previous, summary, base, extra):
        summary["reproduces"] = reproduces
    write_json(path, summary)
    return summary
