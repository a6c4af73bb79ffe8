"""The MLflow store: what several processes starting at once need."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import mlflow
import pytest
from conftest import dead_pid

from sibeatgan import tracking


def _open_store(uri: str, barrier, errors) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    barrier.wait()  # all at once: the store does not exist yet
    try:
        tracking.setup()
    except Exception as exc:  # reported to the parent, which fails the test
        errors.put(f"{type(exc).__name__}: {exc}".splitlines()[0])


def test_processes_starting_together_create_one_store(tmp_path: Path):
    """`study run` in two shells at once on a fresh machine: both must get a working store
    (SQLite store creation runs schema migrations; two at once used to collide)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    n = 4
    barrier, errors = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_store, args=(uri, barrier, errors)) for _ in range(n)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    failures = [errors.get() for _ in range(errors.qsize())]
    assert not failures and all(proc.exitcode == 0 for proc in procs), failures
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
    import mlflow
    from mlflow.exceptions import MlflowException

    from sibeatgan import tracking

    real, raced = mlflow.set_experiment, []

    def racing(name):
        if not raced:  # the other process creates it between our lookup and our create
            raced.append(mlflow.MlflowClient().create_experiment(name))
            raise MlflowException(f"Experiment '{name}' already exists.")
        return real(name)

    monkeypatch.setattr(mlflow, "set_experiment", racing)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "raced")
    tracking.setup()
    assert raced and mlflow.get_experiment_by_name("raced").experiment_id == raced[0]


def test_a_training_that_fails_ends_its_run_failed_saying_why(mlflow_store, tiny_params):
    """Not RUNNING forever, nor FAILED without a word: the tag holds the error's line."""
    why = "only 3 training beats, fewer than train.batch_size 16; use more records"
    with pytest.raises(ValueError), tracking.training_run(tiny_params, "teacher") as run:
        raise ValueError(f"{why}\nsecond line of detail")
    ended = mlflow.MlflowClient().get_run(run.info.run_id)
    assert ended.info.status == "FAILED" and ended.data.tags[tracking.FAILED_TAG] == why
    assert mlflow.active_run() is None
