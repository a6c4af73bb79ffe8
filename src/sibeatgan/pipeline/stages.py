"""The training and evaluation stages: what `dvc repro` and `mlflow run` call."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient

from sibeatgan import tracking
from sibeatgan.config import (
    ConfigError,
    Params,
    describe_changes,
    params_from_dict,
    role_train,
)
from sibeatgan.data.preprocess import Prepared, load_prepared, prepared_key
from sibeatgan.data.split import TEST, TRAIN, VAL
from sibeatgan.evaluation import figures, scores
from sibeatgan.evaluation.detector import (
    D_WEIGHTS_FILE,
    DETECTOR_FILE,
    WEIGHTS_FILE,
    Detector,
    adaptive_thresholds_on_val,
    detector_meta,
    load_detector,
    load_discriminator,
    meta_score,
    thresholds_on_val,
)
from sibeatgan.evaluation.metrics import detection_report, pr_points, roc_points
from sibeatgan.evaluation.scores import Models
from sibeatgan.evaluation.scoring import pick_device
from sibeatgan.io import (
    OutputError,
    StoreError,
    UnsafeFileError,
    ensure_writable,
    exclusive_folder,
    first_line,
    load_state_dict,
    read_json,
    remove_stale_temporaries,
    save_state_dict,
    shared_folder,
    write_csv,
    write_json,
)
from sibeatgan.models import Generator, build_models, count_params
from sibeatgan.pipeline.layout import DEFAULT_LAYOUT, ROLES, Layout
from sibeatgan.tracking import registry
from sibeatgan.tracking.store import STORE_ERRORS, store_errors, translate
from sibeatgan.training import state as train_state
from sibeatgan.training.distill import Distiller
from sibeatgan.training.loop import Checkpoint, FitData, Hooks, fit


def load_checked(p: Params) -> Prepared:
    """The prepared data, refusing data made with other preprocessing or split params."""
    data = load_prepared(p.data.prepared_dir)
    if data.meta.get("key") != prepared_key(p):
        raise ValueError(
            f"{p.data.prepared_dir} was made with other preprocess/split params "
            f"(fold {data.meta.get('fold')}, split {data.meta.get('split')}, "
            f"split_seed {data.meta.get('split_seed')}); "
            "rerun `sibeatgan preprocess` with these params"
        )
    return data


def set_threads(p: Params) -> None:
    if p.train.threads > 0:
        torch.set_num_threads(p.train.threads)


def student_width(p: Params) -> int:
    return max(1, round(p.model.width * p.student.width_mult))


TRAIN_COMMAND = {"teacher": "sibeatgan train-teacher", "student": "sibeatgan train-student"}


def trained_model_info(model_dir: Path, role: str = "teacher") -> dict:
    """The model's fit.json, after checking that its checkpoint is there too."""
    missing = [n for n in ("fit.json", "G.pt") if not (model_dir / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"no trained {role} in {model_dir} (missing {', '.join(missing)}); "
            f"run `{TRAIN_COMMAND[role]}` (or `dvc repro`) first"
        )
    return read_json(model_dir / "fit.json")


def model_data_key(info: dict) -> tuple[str, int]:
    """The prepared-data key and channel count a model was trained on (from its fit.json;
    models written before `data_key` was recorded give it through their recipe)."""
    key = info.get("data_key") or prepared_key(params_from_dict(info["recipe"]))
    return key, int(info["nc"])


def data_differences(info: dict, p: Params) -> str:
    """What differs between the data a model was trained on and the data of `p`, e.g.
    `data.fold 0 -> 1`; empty when they are the same."""
    if "recipe" not in info:
        return "data not recorded by the version that trained it"
    if model_data_key(info) == (prepared_key(p), p.data.channels):
        return ""
    trained, now = tracking.recipe(params_from_dict(info["recipe"])), tracking.recipe(p)
    sections = ("data", "preprocess")
    return (
        describe_changes({k: trained[k] for k in sections}, {k: now[k] for k in sections})
        or "the prepared data"
    )


def check_model_data(model_dir: Path, info: dict, p: Params, role: str) -> None:
    """Refuse a model trained on other data than `p` names (another fold, split or leads)."""
    changed = data_differences(info, p)
    if changed:
        raise ValueError(
            f"{model_dir} was trained on other data ({changed}); train it with these params "
            f"(`{TRAIN_COMMAND[role]}`), or run this command with the params it was trained with"
        )


def check_teacher_shape(teacher_dir: Path, info: dict, p: Params) -> None:
    """Refuse a teacher whose network is not the one `p` describes (a student's width and
    feature projections are derived from model.width and model.nz)."""
    shape = {"model": {"width": info["width"], "nz": info["nz"]}}
    changed = describe_changes(shape, {"model": {"width": p.model.width, "nz": p.model.nz}})
    if changed:
        raise ValueError(
            f"{teacher_dir} holds another network ({changed}); train the teacher with these "
            "params (`sibeatgan train-teacher`), or train the student with the teacher's"
        )


def load_generator(
    model_dir: Path, device: torch.device | str = "cpu", role: str = "teacher"
) -> Generator:
    info = trained_model_info(model_dir, role)
    g = Generator(info["nc"], info["nz"], info["width"])
    g.load_state_dict(load_state_dict(model_dir / "G.pt"))
    return g.to(device).eval()


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
        shared_folder(Path(p.data.prepared_dir), f"{role} training"),
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
    g, d = build_models(nc, p.model.nz, width, p.seed)
    distiller, extra_tags = None, {}
    if role == "student":
        teacher_dir = teacher_dir or layout.model_dir("teacher")
        teacher_info = trained_model_info(teacher_dir, "teacher")
        check_model_data(teacher_dir, teacher_info, p, "teacher")
        check_teacher_shape(teacher_dir, teacher_info, p)
        teacher = load_generator(teacher_dir, device)
        extra_tags["teacher_run_id"] = teacher_info.get("run_id") or ""
        # a student belongs to the teacher it learnt from, whatever its own train.* values
        extra_tags["teacher_config"] = teacher_info["teacher_config"]
        if p.student.init_from_teacher:
            g.load_state_dict(teacher.state_dict())
            d.load_state_dict(load_state_dict(teacher_dir / "D.pt"))
        if any(p.student.terms.values()):
            distiller = Distiller(teacher, p.student, width).to(device)
    g, d = g.to(device), d.to(device)
    state_path = out / train_state.FILENAME
    state = _resumable_state(state_path, p, role, resume, replace_other, extra_tags)
    run_id = state["meta"]["run_id"] if state else None

    with tracking.training_run(p, role, use_active_run, run_id, **extra_tags) as run:
        if state and run.info.run_id != run_id:  # the old run left the store
            for row in state["progress"]["history"]:
                tracking.log_epoch(row)
        result = fit(
            g,
            d,
            FitData(train_x, val_x, (val_cls > 0).astype(int)),
            role_train(p, role),
            p.seed,
            distiller=distiller,
            hooks=Hooks(tracking.log_step, tracking.log_epoch, monitor),
            checkpoint=Checkpoint(
                state_path, {"params": p.to_dict(), "run_id": run.info.run_id, **extra_tags}, state
            ),
            desc=role,
        )
        if result.resumed_from:
            mlflow.set_tag("resumed_after_epoch", str(result.resumed_from))
        mlflow.set_tag("precision", result.precision)  # what train.precision=auto resolved to
        g.load_state_dict(result.g_state)
        d.load_state_dict(result.d_state)
        save_state_dict(out / "G.pt", result.g_state)
        save_state_dict(out / "D.pt", result.d_state)
        models = Models(g, d)
        val_records = data.records[data.split == VAL]
        write_detector(
            out, models, width, p, val_x, val_cls, val_records, role=role, run_id=run.info.run_id
        )
        write_csv(
            layout.plot(f"{role}_history.csv"),
            {k: [r[k] for r in result.history] for k in result.history[0]},
        )
        best = result.history[result.best_epoch - 1]
        summary = {
            "role": role,
            "selection": result.selection,
            "precision": result.precision,
            "best_epoch": result.best_epoch,
            "best_val_auc": max(r["val_auc"] for r in result.history),
            "selected_val_auc": best["val_auc"],
            "selected_val_ap": best["val_ap"],
            "d_resets": result.d_resets,
            "train_time_s": result.train_time_s,
            "g_params": count_params(g),
            "d_params": count_params(d),
        }
        curves = figures.training_curves(result.history, role, layout.plot(f"{role}_training.png"))
        mlflow.log_metrics(
            {k: float(v) for k, v in summary.items() if k not in ("role", "selection", "precision")}
        )
        tracking.log_file(out / "G.pt", artifact_path="checkpoints")
        tracking.log_file(out / "D.pt", artifact_path="checkpoints")
        tracking.log_file(out / DETECTOR_FILE, artifact_path="checkpoints")
        tracking.log_file(layout.plot(f"{role}_history.csv"))
        tracking.log_figure_files([curves])
        model_uri = tracking.log_generator(out, nc, p.model.nz, width)
        detector_uri = tracking.log_detector(out)
        info = {
            **summary,
            "nc": nc,
            "nz": p.model.nz,
            "width": width,
            "run_id": run.info.run_id,
            "model_uri": model_uri,
            "detector_uri": detector_uri,
            "teacher_config": extra_tags.get("teacher_config", tracking.teacher_config_key(p)),
            "recipe": tracking.recipe(p, role),
            "data_key": prepared_key(p),
        }
        write_json(out / "fit.json", info)
        tracking.log_file(out / "fit.json", artifact_path="checkpoints")
        write_json(layout.metrics(f"{role}_train"), summary)
    state_path.unlink(missing_ok=True)  # the run is done: its products replace the state
    return {**info, "history": result.history}


def write_detector(
    out: Path,
    models: Models,
    width: int,
    p: Params,
    val_x: np.ndarray,
    val_cls: np.ndarray,
    val_records: np.ndarray,
    **about: str,
) -> None:
    """detector.json beside G.pt (and D.pt): what `sibeatgan detect` and the served model need
    besides the weights: the anomaly score with its parameters and the flagging thresholds,
    per beat and record-adaptive, all chosen on val now."""
    name = p.train.score
    params, val_scores, _ = scores.fitted_on_val(
        name, models, val_x, (val_cls > 0).astype(int), p.train.score_batch_size
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


HEADLINE = ("val_auc", "test_auc", "test_ap", "test_f1")


def evaluate(p: Params, layout: Layout = DEFAULT_LAYOUT, roles: tuple[str, ...] = ROLES) -> dict:
    """Test metrics of each model, curves for `dvc plots`, figures, and the registry update.
    The models are checked, then the store (a dead one stops it before any work); the prepared
    data are locked for reading while it runs. A failure to log to MLflow stops it (StoreError)
    after the metrics files are written."""
    with shared_folder(Path(p.data.prepared_dir), "evaluate"):
        return _evaluate_locked(p, layout, roles)


def _evaluate_locked(p: Params, layout: Layout, roles: tuple[str, ...]) -> dict:
    device = pick_device()
    detectors = {}
    for role in roles:  # every model is checked and loaded before anything is written
        model_dir = layout.model_dir(role)
        check_model_data(model_dir, trained_model_info(model_dir, role), p, role)
        detectors[role] = load_detector(model_dir / WEIGHTS_FILE, model_dir / DETECTOR_FILE)
    tracking.setup()
    ensure_writable(layout.metrics_dir, layout.plots_dir)
    set_threads(p)
    data = load_checked(p)
    nc = p.data.channels
    val_x, val_cls = data.part(VAL, nc)
    test_x, test_cls = data.part(TEST, nc)
    val = scores.Scored(val_x, (val_cls > 0).astype(int), data.records[data.split == VAL])
    test = scores.Scored(test_x, (test_cls > 0).astype(int), data.records[data.split == TEST])
    reports, curves, failures, tables = {}, {}, [], {}
    for role, detector in detectors.items():
        models = _models_on(detector, layout.model_dir(role), device)
        name, params = meta_score(detector.meta)
        bs = p.train.score_batch_size
        val_s = scores.beat_scores(name, models, val_x, params, bs)[0]
        test_s = scores.beat_scores(name, models, test_x, params, bs)[0]
        report = detection_report(val_cls, val_s, test_cls, test_s)
        tables[role] = scores.score_table(models, val, test, bs)
        test_y = (test_cls > 0).astype(int)
        roc = roc_points(test_y, test_s, p.evaluate.curve_points)
        pr = pr_points(test_y, test_s, p.evaluate.curve_points)
        write_csv(layout.plot(f"{role}_roc.csv"), roc)
        write_csv(layout.plot(f"{role}_pr.csv"), pr)
        hist = figures.score_histogram(
            test_s,
            test_cls,
            report["threshold"],
            f"{role}: test scores",
            layout.plot(f"{role}_scores.png"),
        )
        reports[role] = report
        curves[role] = {"roc": roc, "pr": pr, "auc": report["test_auc"], "ap": report["test_ap"]}
        failures.append(_log_to_training_run(layout.model_dir(role), report, [hist]))
    figure = figures.detection_curves(curves, layout.plot("roc_pr.png"))
    detail = {
        role: {
            **r,
            "score": meta_score(detectors[role].meta)[0],
            "scores": _json_rows(tables[role]),
        }
        for role, r in reports.items()
    }
    write_json(layout.metrics("evaluate_detail"), detail)
    for role in roles:
        failures.append(_log_to_training_run(layout.model_dir(role), {}, [figure]))
    decision = register_and_promote(p, layout, reports)
    # the headline `dvc metrics show` prints; everything else is in evaluate_detail.json
    headline = {role: {k: r[k] for k in HEADLINE} for role, r in reports.items()}
    write_json(layout.metrics("evaluate"), {**headline, "champion": decision["champion_role"]})
    failed = [f for f in failures if f]
    if failed:  # the files are right, but the runs lack their test figures: not a success
        raise StoreError(
            f"{failed[0]}; the metrics files are written: fix that, then run `sibeatgan "
            "evaluate` again"
        )
    return reports


def _models_on(detector: Detector, model_dir: Path, device: torch.device) -> Models:
    """The detector's networks on `device`, with D (from D.pt, when the folder has it) even
    when its own score reads G only: the score table compares every score."""
    d = detector.d
    if d is None and (model_dir / D_WEIGHTS_FILE).is_file():
        d = load_discriminator(model_dir / D_WEIGHTS_FILE, detector.meta, model_dir / DETECTOR_FILE)
    return Models(detector.g.to(device).eval(), d.to(device).eval() if d is not None else None)


def _json_rows(rows: list[dict]) -> list[dict]:
    """Score-table rows for JSON: an AUC that does not exist (one class only) is null."""
    nan = lambda v: isinstance(v, float) and v != v  # noqa: E731
    return [{k: None if nan(v) else v for k, v in row.items()} for row in rows]


def _log_to_training_run(model_dir: Path, values: dict, figures: list[Path]) -> str:
    """Add test figures and plots to the MLflow run that trained this model; what failed
    (one line), or "" when it worked."""
    run_id = read_json(model_dir / "fit.json").get("run_id")
    tracking.setup()
    metrics = {k: v for k, v in values.items() if v is not None}
    active = mlflow.active_run()
    try:
        if active is not None and active.info.run_id == run_id:
            mlflow.log_metrics(metrics)
            tracking.log_figure_files(figures)
            return ""
        mlflow.start_run(run_id=run_id, nested=active is not None)
        try:
            mlflow.log_metrics(metrics)
            tracking.log_figure_files(figures)
        finally:  # FINISHED, as it was: the training went well, whatever befell this logging
            with contextlib.suppress(*STORE_ERRORS):
                mlflow.end_run()
    except (*STORE_ERRORS, StoreError, OSError) as err:
        failure = translate(err)
        if not isinstance(failure, StoreError | OutputError):
            raise  # neither the store's failure nor a full disk
        what = first_line(failure).split(";")[0]  # the fix is evaluate's (see there)
        return f"could not log to MLflow run {run_id} of {model_dir}: {what}"
    return ""


def register_and_promote(p: Params, layout: Layout, reports: dict[str, dict]) -> dict:
    with store_errors():
        return _register_and_promote(p, layout, reports)


def _register_and_promote(p: Params, layout: Layout, reports: dict[str, dict]) -> dict:
    tracking.setup()
    client = MlflowClient()
    name, detectors = p.registry.model_name, p.registry.detector_name
    infos = {role: read_json(layout.model_dir(role) / "fit.json") for role in reports}
    for role, report in reports.items():
        registry.register(client, name, infos[role], report, p)
        if infos[role].get("detector_uri"):  # models trained before detectors were logged lack it
            registry.register(client, detectors, infos[role], report, p, "detector_uri")
    # compare within the config of the teacher actually evaluated (as recorded at training)
    key = infos.get("teacher", {}).get("teacher_config") or tracking.teacher_config_key(p)
    decision = registry.promote(client, name, p.registry.metric, key)
    decision["detector_model"] = detectors
    decision["detector_version"] = registry.follow_champion(client, detectors, decision)
    write_json(layout.metrics("promotion"), decision)
    return decision
