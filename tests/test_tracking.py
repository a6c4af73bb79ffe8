"""The MLflow store: what several processes starting at once need."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import mlflow
import pytest

from sibeatgan import tracking


def _open_store(uri: str, barrier, errors) -> None:
    import os

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
