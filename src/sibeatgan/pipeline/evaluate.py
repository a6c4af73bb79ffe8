"""The evaluate stage: test figures of each model, curves and plots, the registry update."""

from __future__ import annotations

import contextlib
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient

from sibeatgan import tracking
from sibeatgan.config import Params
from sibeatgan.data.preprocess import reading_data
from sibeatgan.data.split import TEST, VAL
from sibeatgan.evaluation import figures, scores
from sibeatgan.evaluation.detector import (
    D_WEIGHTS_FILE,
    DETECTOR_FILE,
    WEIGHTS_FILE,
    Detector,
    load_detector,
    load_discriminator,
    meta_score,
)
from sibeatgan.evaluation.metrics import detection_report, pr_points, roc_points
from sibeatgan.evaluation.scores import Models
from sibeatgan.evaluation.scoring import pick_device
from sibeatgan.io import (
    OutputError,
    StoreError,
    ensure_writable,
    first_line,
    read_json,
    write_csv,
    write_json,
)
from sibeatgan.pipeline.layout import DEFAULT_LAYOUT, ROLES, Layout
from sibeatgan.pipeline.trained import (
    check_model_data,
    load_checked,
    set_threads,
    trained_model_info,
)
from sibeatgan.tracking import registry
from sibeatgan.tracking.store import STORE_ERRORS, store_errors, translate

HEADLINE = ("val_auc", "test_auc", "test_ap", "test_f1")


def evaluate(p: Params, layout: Layout = DEFAULT_LAYOUT, roles: tuple[str, ...] = ROLES) -> dict:
    """Test metrics of each model, curves for `dvc plots`, figures, and the registry update.
    The models are checked, then the store (a dead one stops it before any work); the prepared
    data are locked for reading while it runs. A failure to log to MLflow stops it (StoreError)
    after the metrics files are written."""
    with reading_data(p, "evaluate"):
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
    val, test = (
        scores.Scored(
            x, (cls > 0).astype(int), data.records[data.split == part], data.context(part)
        )
        for x, cls, part in ((val_x, val_cls, VAL), (test_x, test_cls, TEST))
    )
    reports, curves, failures, tables = {}, {}, [], {}
    for role, detector in detectors.items():
        models = _models_on(detector, layout.model_dir(role), device)
        name, params = meta_score(detector.meta)
        # every score's parts once: the detector's own score (with its params from training)
        # and the table of every score read the same
        parts = scores.table_parts(models, val, test, p.runtime.score_batch_size)
        val_s, test_s = (scores.combine(name, part, params) for part in parts[name])
        report = detection_report(val_cls, val_s, test_cls, test_s)
        tables[role] = scores.score_table(models, val, test, parts=parts)
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
