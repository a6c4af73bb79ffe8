"""`run_experiment` (the MLproject entry) on synthetic records."""

import mlflow
import pytest
from mlflow import MlflowClient

from sibeatgan.pipeline.experiment import run_experiment

pytestmark = pytest.mark.slow  # trains teachers and students end to end, twice


def teacher_runs(client):
    exp = client.get_experiment_by_name("sibeatgan")
    return client.search_runs([exp.experiment_id], "tags.role = 'teacher'")


def test_trains_teacher_once_then_reuses_it(tiny_params, mlflow_store, tmp_path):
    client = MlflowClient()
    reports = run_experiment(tiny_params, tmp_path / "out")
    assert set(reports) == {"teacher", "student"}
    assert len(teacher_runs(client)) == 1
    parent = client.search_runs(
        [client.get_experiment_by_name("sibeatgan").experiment_id], "tags.role = 'student'"
    )[0]
    teacher = teacher_runs(client)[0]
    assert teacher.data.tags["mlflow.parentRunId"] == parent.info.run_id
    epochs = [m.step for m in client.get_metric_history(parent.info.run_id, "epoch/val_auc")]
    assert epochs == list(range(1, tiny_params.student.epochs + 1)), "the student's own epochs"
    teacher_epochs = [
        m.step for m in client.get_metric_history(teacher.info.run_id, "epoch/val_auc")
    ]
    assert teacher_epochs == list(range(1, tiny_params.train.epochs + 1))

    while mlflow.active_run():
        mlflow.end_run()
    run_experiment(tiny_params, tmp_path / "out")
    assert len(teacher_runs(client)) == 1, "the second experiment must reuse the teacher"
    students = client.search_runs(
        [client.get_experiment_by_name("sibeatgan").experiment_id], "tags.role = 'student'"
    )
    assert len(students) == 2
    assert {s.data.tags["teacher_run_id"] for s in students} == {teacher.info.run_id}
    assert client.get_model_version_by_alias("sibeatgan-generator", "champion")
