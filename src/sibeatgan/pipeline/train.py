"""The training stages: a teacher, or a student guided by its teacher, tracked in MLflow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from sibeatgan import tracking
from sibeatgan.config import ConfigError, Params, describe_changes, params_from_dict, role_train
from sibeatgan.data.preprocess import Prepared, prepared_key, reading_data
from sibeatgan.data.rhythm import BeatContext
from sibeatgan.data.split import TRAIN, VAL
from sibeatgan.evaluation import figures, scores
from sibeatgan.evaluation.detector import (
    DETECTOR_FILE,
    adaptive_thresholds_on_val,
    detector_meta,
    thresholds_on_val,
)
from sibeatgan.evaluation.scores import Models
from sibeatgan.evaluation.scoring import pick_device
from sibeatgan.io import (
    UnsafeFileError,
    ensure_writable,
    exclusive_folder,
    load_state_dict,
    remove_stale_temporaries,
    save_state_dict,
    write_csv,
    write_json,
)
from sibeatgan.models import build_models, count_params
from sibeatgan.pipeline.layout import DEFAULT_LAYOUT, Layout
from sibeatgan.pipeline.trained import (
    TRAIN_COMMAND,
    check_model_data,
    check_teacher_shape,
    load_checked,
    load_generator,
    set_threads,
    student_width,
    trained_model_info,
)
from sibeatgan.training import state as train_state
from sibeatgan.training.distill import Distiller
from sibeatgan.training.loop import Checkpoint, FitData, FitResult, Hooks, Nets, fit


def train_model(
    p: Params,
    role: str,
    layout: Layout = DEFAULT_LAYOUT,
    teacher_dir: Path | None = None,
    use_active_run: bool = False,
    monitor: Callable[[Models], dict[str, float]] | None = None,
    resume: bool = True,
    replace_other: bool = False,
) -> dict:
    """Train the teacher, or a student guided by the teacher in `teacher_dir`; save G and D of
    the selected epoch as state dicts, and track the run in MLflow. `monitor` adds figures to
    each epoch's row (see train.fit); the returned dict holds the rows under `history`.
    A training stopped before its last epoch left its state beside the checkpoints; with
    `resume` and the same params it continues from there, in the same MLflow run; without
    `resume` it is discarded. A stopped training of other params is refused (naming what
    differs) unless `replace_other`. One process at a time trains into a folder: a second one
    stops at once. The prepared data are locked for reading meanwhile: `preprocess` cannot
    replace them under the training (nor start while it runs). A tracking store that cannot
    be used stops it before any work, and so does an unknown `train.score`."""
    scores.score_def(p.train.score)
    out = layout.model_dir(role)
    tracking.setup()
    ensure_writable(out, layout.metrics_dir, layout.plots_dir)
    with (
        exclusive_folder(out, f"{role} training"),
        reading_data(p, f"{role} training"),
    ):
        resume = resume and not use_active_run
        return _train_locked(
            p, role, layout, teacher_dir, use_active_run, monitor, resume, replace_other
        )


def _train_locked(
    p: Params,
    role: str,
    layout: Layout,
    teacher_dir: Path | None,
    use_active_run: bool,
    monitor: Callable[[Models], dict[str, float]] | None,
    resume: bool,
    replace_other: bool,
) -> dict:
    """`train_model` while it holds the output folder's lock."""
    out = layout.model_dir(role)
    for stale in remove_stale_temporaries(out):
        print(f"{role}: removed {stale}, left by a process killed while writing it")
    set_threads(p)
    job = _set_up(p, role, layout, teacher_dir)
    state_path = out / train_state.FILENAME
    state = _resumable_state(state_path, p, role, resume, replace_other, job.tags)
    run_id = state["meta"]["run_id"] if state else None

    with tracking.training_run(p, role, use_active_run, run_id, **job.tags) as run:
        if state and run.info.run_id != run_id:  # the old run left the store
            for row in state["progress"]["history"]:
                tracking.log_epoch(row)
        val_y = (job.val_cls > 0).astype(int)
        context = job.data.context(VAL)
        data = FitData(job.train_x, job.val_x, val_y, p.runtime.score_batch_size, context)
        hooks = Hooks(tracking.log_step, tracking.log_epoch, monitor, p.runtime.log_every, role)
        meta = {"params": p.to_dict(), "run_id": run.info.run_id, **job.tags}
        result = fit(
            job.nets,
            data,
            role_train(p, role),
            p.seed,
            distiller=job.distiller,
            hooks=hooks,
            checkpoint=Checkpoint(state_path, meta, state),
        )
        _keep_selected(job, result, run.info.run_id)
        summary = _summary(job, result)
        uris = _log_products(job, result, summary)
        info = _write_info(job, summary, uris, run.info.run_id)
    state_path.unlink(missing_ok=True)  # the run is done: its products replace the state
    return {**info, "history": result.history}


@dataclass(frozen=True)
class _Job:
    """A training ready to start: its params and role, where it writes, its data (train beats,
    val beats and classes), G and D on the device, and for a student the distiller and the tags
    that name its teacher."""

    p: Params
    role: str
    layout: Layout
    data: Prepared
    train_x: np.ndarray
    val_x: np.ndarray
    val_cls: np.ndarray
    width: int
    nets: Nets
    distiller: Distiller | None
    tags: dict[str, str]

    @property
    def out(self) -> Path:
        return self.layout.model_dir(self.role)


def _set_up(p: Params, role: str, layout: Layout, teacher_dir: Path | None) -> _Job:
    """Load and check the data, build G and D (a student's guided by its teacher)."""
    data = load_checked(p)
    nc = p.data.channels
    train_x, _ = data.part(TRAIN, nc)
    val_x, val_cls = data.part(VAL, nc)
    if len(train_x) < p.train.batch_size:
        raise ValueError(
            f"only {len(train_x)} training beats, fewer than train.batch_size "
            f"{p.train.batch_size}; use more records or a smaller batch"
        )
    device = pick_device()
    width = p.model.width if role == "teacher" else student_width(p)
    nets = Nets(*build_models(nc, p.model.nz, width, p.seed))
    distiller, tags = None, {}
    if role == "student":
        teacher_dir = teacher_dir or layout.model_dir("teacher")
        distiller, tags = _guide_student(nets, p, width, teacher_dir, device)
    nets = Nets(nets.g.to(device), nets.d.to(device))
    return _Job(p, role, layout, data, train_x, val_x, val_cls, width, nets, distiller, tags)


def _guide_student(
    nets: Nets, p: Params, width: int, teacher_dir: Path, device: torch.device
) -> tuple[Distiller | None, dict[str, str]]:
    """Check the teacher in `teacher_dir` against `p`, start the student from it where
    `student.init_from_teacher` asks; the distiller (None without a distillation term) and the
    tags that name the teacher."""
    teacher_info = trained_model_info(teacher_dir, "teacher")
    check_model_data(teacher_dir, teacher_info, p, "teacher")
    check_teacher_shape(teacher_dir, teacher_info, p)
    teacher = load_generator(teacher_dir, device)
    tags = {"teacher_run_id": teacher_info.get("run_id") or ""}
    # a student belongs to the teacher it learnt from, whatever its own train.* values
    tags["teacher_config"] = teacher_info["teacher_config"]
    if p.student.init_from_teacher:
        nets.g.load_state_dict(teacher.state_dict())
        nets.d.load_state_dict(load_state_dict(teacher_dir / "D.pt"))
    distiller = None
    if any(p.student.terms.values()):
        distiller = Distiller(teacher, p.student, width, p.train.score).to(device)
    return distiller, tags


def _keep_selected(job: _Job, result: FitResult, run_id: str) -> None:
    """Tag the run, load the selected epoch's weights into G and D and save them, with the
    detector and the history beside them."""
    if result.resumed_from:
        mlflow.set_tag("resumed_after_epoch", str(result.resumed_from))
    mlflow.set_tag("precision", result.precision)  # what train.precision=auto resolved to
    g, d = job.nets.g, job.nets.d
    g.load_state_dict(result.g_state)
    d.load_state_dict(result.d_state)
    save_state_dict(job.out / "G.pt", result.g_state)
    save_state_dict(job.out / "D.pt", result.d_state)
    val_records = job.data.records[job.data.split == VAL]
    write_detector(
        job.out, Models(g, d), job.width, job.p, job.val_x, job.val_cls, val_records,
        val_context=job.data.context(VAL), role=job.role, run_id=run_id,
    )  # fmt: skip
    write_csv(
        job.layout.plot(f"{job.role}_history.csv"),
        {k: [r[k] for r in result.history] for k in result.history[0]},
    )


def _summary(job: _Job, result: FitResult) -> dict:
    """The training's figures: the selected epoch's, the best val AUC, time and sizes."""
    best = result.history[result.best_epoch - 1]
    return {
        "role": job.role,
        "selection": result.selection,
        "precision": result.precision,
        "best_epoch": result.best_epoch,
        "best_val_auc": max(r["val_auc"] for r in result.history),
        "selected_val_auc": best["val_auc"],
        "selected_val_ap": best["val_ap"],
        "d_resets": result.d_resets,
        "train_time_s": result.train_time_s,
        "g_params": count_params(job.nets.g),
        "d_params": count_params(job.nets.d),
    }


def _log_products(job: _Job, result: FitResult, summary: dict) -> dict[str, str]:
    """Log the summary, checkpoints, detector, history and curves to the MLflow run; the URIs
    of the logged generator and detector."""
    role, out, layout = job.role, job.out, job.layout
    curves = figures.training_curves(result.history, role, layout.plot(f"{role}_training.png"))
    mlflow.log_metrics(
        {k: float(v) for k, v in summary.items() if k not in ("role", "selection", "precision")}
    )
    tracking.log_file(out / "G.pt", artifact_path="checkpoints")
    tracking.log_file(out / "D.pt", artifact_path="checkpoints")
    tracking.log_file(out / DETECTOR_FILE, artifact_path="checkpoints")
    tracking.log_file(layout.plot(f"{role}_history.csv"))
    tracking.log_figure_files([curves])
    model_uri = tracking.log_generator(out, job.p.data.channels, job.p.model.nz, job.width)
    detector_uri = tracking.log_detector(out)
    return {"model_uri": model_uri, "detector_uri": detector_uri}


def _write_info(job: _Job, summary: dict, uris: dict[str, str], run_id: str) -> dict:
    """fit.json (also logged to the run) and the role's metrics file; the fit.json content."""
    p = job.p
    info = {
        **summary,
        "nc": p.data.channels,
        "nz": p.model.nz,
        "width": job.width,
        "run_id": run_id,
        **uris,
        "teacher_config": job.tags.get("teacher_config", tracking.teacher_config_key(p)),
        "recipe": tracking.recipe(p, job.role),
        "data_key": prepared_key(p),
    }
    write_json(job.out / "fit.json", info)
    tracking.log_file(job.out / "fit.json", artifact_path="checkpoints")
    write_json(job.layout.metrics(f"{job.role}_train"), summary)
    return info


def write_detector(
    out: Path,
    models: Models,
    width: int,
    p: Params,
    val_x: np.ndarray,
    val_cls: np.ndarray,
    val_records: np.ndarray,
    val_context: BeatContext | None = None,
    **about: str,
) -> None:
    """detector.json beside G.pt (and D.pt): what `sibeatgan detect` and the served model need
    besides the weights: the anomaly score with its parameters and the flagging thresholds,
    per beat and record-adaptive, all chosen on val now (`val_context`: the val beats' records
    and timing, for a score that reads them)."""
    name = p.train.score
    params, val_scores, _ = scores.fitted_on_val(
        name, models, val_x, (val_cls > 0).astype(int), p.runtime.score_batch_size, val_context
    )
    thresholds = thresholds_on_val(val_cls, val_scores)
    adaptive = adaptive_thresholds_on_val(val_cls, val_scores, val_records)
    meta = detector_meta(
        p.data.channels,
        p.model.nz,
        width,
        p.to_dict()["preprocess"],
        thresholds,
        score={"name": name, "params": params},
        adaptive_thresholds=adaptive,
        data_key=prepared_key(p),
        **about,
    )
    write_json(out / DETECTOR_FILE, meta)


def _resumable_state(
    state_path: Path, p: Params, role: str, resume: bool, replace_other: bool, tags: dict[str, str]
) -> dict | None:
    """The state of a stopped training in `state_path` that these params continue (read once:
    it is tens of MB). None (the state removed) when there is none or resuming is off; a state
    of other params or teacher is removed with `replace_other`, else refused. A state that
    cannot be read (truncated, or holding more than tensors) is set aside, never used."""
    if not state_path.exists():
        return None
    try:
        state = train_state.read(state_path)
    except UnsafeFileError as err:
        train_state.set_aside(state_path, str(err).split(";")[0])
        return None
    meta = state["meta"]
    changed = _state_differences(meta, p, role, tags)
    if resume and not changed:
        return state
    if not resume or replace_other:
        why = "resuming is off" if not resume else f"it was trained with {changed}"
        print(f"{role}: not resuming the stopped training in {state_path} ({why}); starting afresh")
        state_path.unlink()
        return None
    raise ValueError(
        f"{state_path} is a stopped training with other params ({changed}); rerun with those "
        f"params to resume it, or add --fresh to `{TRAIN_COMMAND[role]}` to discard it"
    )


def _state_differences(meta: dict, p: Params, role: str, tags: dict[str, str]) -> str:
    """What differs between a stopped training and a training of `p` (empty: it resumes),
    e.g. `seed 0 -> 1`. Knobs added since the state was written take their defaults."""
    try:
        before = tracking.recipe(params_from_dict(meta.get("params", {})), role)
    except ConfigError:
        return "a parameter that no longer exists"
    changed = describe_changes(before, tracking.recipe(p, role))
    tagged = describe_changes({k: meta.get(k) for k in tags}, tags)
    return ", ".join(c for c in (changed, tagged) if c)
