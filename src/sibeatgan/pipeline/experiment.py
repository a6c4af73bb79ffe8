"""One whole experiment under one MLflow run: what `mlflow run .` executes.

The student trains in the run that `mlflow run` created. Its teacher is reused from an earlier
finished teacher run of the same config (found by tag in the tracking store) or, when there is
none, trained first as a child run. Then both are evaluated, registered, and the champion chosen.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from sibeatgan import tracking
from sibeatgan.config import Params
from sibeatgan.data.fetch import ensure_records
from sibeatgan.data.preprocess import ensure_prepared
from sibeatgan.pipeline.evaluate import evaluate
from sibeatgan.pipeline.layout import Layout
from sibeatgan.pipeline.train import train_model


def find_teacher(p: Params, dest: Path) -> bool:
    """Download the newest finished teacher of this config into `dest`; False if none."""
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=(
            f"tags.role = 'teacher' and tags.teacher_config = '{tracking.teacher_config_key(p)}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    for run in runs:
        try:
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="checkpoints", dst_path=str(dest.parent)
            )
        except Exception:  # an incomplete run: try the next one
            continue
        downloaded = dest.parent / "checkpoints"
        if (downloaded / "fit.json").exists():
            downloaded.replace(dest)
            print(f"teacher: reusing run {run.info.run_id} (same fold and config)")
            return True
    return False


def run_experiment(p: Params, root: Path = Path("outputs")) -> dict:
    tracking.setup()
    ensure_records(p)
    with mlflow.start_run() as run:  # inside `mlflow run`, this is the run it created
        layout = Layout(root / "runs" / run.info.run_id)
        p = ensure_prepared(p, root)
        teacher_dir = layout.model_dir("teacher")
        if not find_teacher(p, teacher_dir):
            train_model(p, "teacher", layout)
        train_model(p, "student", layout, teacher_dir, use_active_run=True)
        reports = evaluate(p, layout)
        mlflow.log_artifact(str(layout.metrics("evaluate")), artifact_path="evaluation")
        mlflow.log_artifact(str(layout.metrics("evaluate_detail")), artifact_path="evaluation")
        mlflow.log_artifact(str(layout.metrics("promotion")), artifact_path="evaluation")
    return reports
