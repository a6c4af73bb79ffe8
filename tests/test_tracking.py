"""The MLflow store: what several processes starting at once need."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
from conftest import dead_pid, open_experiments_at_once
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

from sibeatgan import tracking
from sibeatgan.io import StoreError


def test_processes_starting_together_create_one_store(tmp_path: Path):
    """`study run` in two shells at once on a fresh machine: both must get a working store
    (SQLite store creation runs schema migrations; two at once used to collide)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    open_experiments_at_once(uri, [tracking.DEFAULT_EXPERIMENT])  # the store is new
    mlflow.set_tracking_uri(uri)
    names = [e.name for e in mlflow.search_experiments()]
    assert tracking.DEFAULT_EXPERIMENT in names


@pytest.mark.parametrize(
    ("uri", "lock"),
    [
        ("sqlite:///mlflow.db", "mlflow.db.lock"),
        ("sqlite:////srv/store/mlflow.db", "/srv/store/mlflow.db.lock"),
        ("http://localhost:5000", None),
        ("file:./mlruns", None),
    ],
)
def test_store_lock_sits_beside_a_sqlite_file_only(uri: str, lock: str | None):
    found = tracking.store_lock_path(uri)
    assert (str(found) if found else None) == lock


def test_runs_whose_process_died_are_closed_others_left_running(mlflow_store):
    """A session that ends kills training without Ctrl-C; the next training start ends such
    runs as KILLED, but not a run whose process still trains, nor another machine's."""
    import socket

    dead = dead_pid()
    tracking.setup()
    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id
    here = socket.gethostname()
    runs = {}
    for name, host, pid in (
        ("orphan", here, dead),
        ("alive", here, os.getpid()),
        ("elsewhere", "another-machine", dead),
    ):
        runs[name] = client.create_run(exp, tags={"host": host, "pid": str(pid)}).info.run_id
    assert tracking.close_orphaned_runs() == [runs["orphan"]]
    status = {name: client.get_run(rid).info.status for name, rid in runs.items()}
    assert status == {"orphan": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING"}
    assert "ended mid-run" in client.get_run(runs["orphan"]).data.tags["stopped_because"]
    assert tracking.close_orphaned_runs() == [], "already closed"


def test_a_training_run_records_its_host_and_pid(mlflow_store, tiny_params):
    import socket

    with tracking.training_run(tiny_params, "teacher") as run:
        tags = mlflow.get_run(run.info.run_id).data.tags
    assert (tags["host"], tags["pid"]) == (socket.gethostname(), str(os.getpid()))


def test_the_experiment_opens_as_model_training(mlflow_store):
    """MLflow's UI shows an experiment without a kind as a GenAI one (an empty traces page)."""
    tracking.setup()
    experiment = mlflow.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_an_experiment_another_process_creates_meanwhile_is_used(mlflow_store, monkeypatch):
    """Two workers of a grid starting at once on a tracking server: the one that loses the race
    to create the experiment uses the one the other created."""
    real, raced = mlflow.MlflowClient.create_experiment, []

    def racing(client, name, *args, **kwargs):
        # the other process creates it between our lookup and our create
        raced.append(real(client, name, *args, **kwargs))
        raise MlflowException(f"Experiment(name={name}) already exists.", RESOURCE_ALREADY_EXISTS)

    monkeypatch.setattr(mlflow.MlflowClient, "create_experiment", racing)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "raced")
    tracking.setup()
    experiment = mlflow.get_experiment_by_name("raced")
    assert raced and experiment.experiment_id == raced[0]
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_new_experiment_is_of_its_kind_from_its_first_write(mlflow_store, monkeypatch):
    """Tagging after creating is a second write that workers starting together race on (on
    PostgreSQL the loser gets a duplicate key): a new experiment is created with its kind."""

    def second_write(*args, **kwargs):
        raise AssertionError("the new experiment was tagged in a second write")

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", second_write)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "fresh")
    tracking.setup()
    tags = mlflow.get_experiment_by_name("fresh").tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def _open_made_elsewhere(monkeypatch, set_experiment_tag) -> dict[str, str]:
    """Open an experiment made as `mlflow experiments create` or an older version leaves it
    (without our kind tag), the tag written through `set_experiment_tag`; returns its tags."""
    mlflow.MlflowClient().create_experiment("elsewhere")
    assert tracking.EXPERIMENT_KIND_TAG not in mlflow.get_experiment_by_name("elsewhere").tags
    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", set_experiment_tag)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "elsewhere")
    tracking.setup()
    return mlflow.get_experiment_by_name("elsewhere").tags


def test_an_experiment_another_process_tags_meanwhile_is_used(mlflow_store, monkeypatch):
    """Workers opening an untagged experiment at once: the one whose tag write loses the race
    (PostgreSQL: duplicate key value violates unique constraint "experiment_tag_pk") finds the
    tag set and goes on."""
    real = mlflow.MlflowClient.set_experiment_tag

    def racing(client, experiment_id, key, value):
        real(client, experiment_id, key, value)  # the other worker's write
        raise MlflowException('duplicate key value violates unique constraint "experiment_tag_pk"')

    tags = _open_made_elsewhere(monkeypatch, racing)
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_kind_tag_the_store_refuses_is_one_line(mlflow_store, monkeypatch):
    def refused(*args, **kwargs):
        raise MlflowException("permission denied for table experiment_tags\nDETAIL: more")

    with pytest.raises(StoreError) as err:
        _open_made_elsewhere(monkeypatch, refused)
    # nor does the failure leave MLFLOW_EXPERIMENT_ID behind, which would make the next
    # setup in this process skip opening its experiment
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ
    assert "\n" not in str(err.value)
    assert "MLflow tracking store" in str(err.value) and "permission denied" in str(err.value)


def test_a_training_that_fails_ends_its_run_failed_saying_why(mlflow_store, tiny_params):
    """Not RUNNING forever, nor FAILED without a word: the tag holds the error's line."""
    why = "only 3 training beats, fewer than train.batch_size 16; use more records"
    with pytest.raises(ValueError), tracking.training_run(tiny_params, "teacher") as run:
        raise ValueError(f"{why}\nsecond line of detail")
    ended = mlflow.MlflowClient().get_run(run.info.run_id)
    assert ended.info.status == "FAILED" and ended.data.tags[tracking.FAILED_TAG] == why
    assert mlflow.active_run() is None
