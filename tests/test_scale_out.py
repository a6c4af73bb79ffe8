"""Scale-out on real engines: a study grid on a local Ray cluster logging to an `mlflow server`
backed by a throwaway PostgreSQL cluster, restarted mid-grid, against the serial path."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import mlflow
import pytest
from conftest import dead_pid, open_experiments_at_once
from mlflow import MlflowClient
from services import REQUIRED, TrackingServer, postgres_bin, postgres_cluster

from sibeatgan import tracking
from sibeatgan.config import params_from_dict, with_overrides
from sibeatgan.io import read_json
from sibeatgan.study.grid import Where, plan, run_tasks
from sibeatgan.study.runs import STUDY_EXPERIMENT
from sibeatgan.tracking import registry

pytestmark = pytest.mark.slow

SAME = ("history", "selection", "g_sha256", "teacher_g_sha256", "epochs", "d_resets")


@pytest.fixture(scope="module")
def postgres():
    if postgres_bin() is None:
        if os.environ.get(REQUIRED):
            pytest.fail("PostgreSQL not installed: apt-get install postgresql")
        pytest.skip("PostgreSQL not installed (apt-get install postgresql)")
    with postgres_cluster() as uri:
        yield uri


@pytest.fixture
def server(postgres, tmp_path):
    running = TrackingServer(postgres, tmp_path / "artifacts", tmp_path / "server.log")
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _summaries(runs_dir: Path) -> dict[tuple[str, int], dict]:
    return {(s["variant"], s["seed"]): s for s in map(read_json, runs_dir.glob("*/*.json"))}


def test_a_grid_on_ray_logs_to_a_postgres_server_that_restarts_mid_grid(
    tiny_params, server, tmp_path, monkeypatch
):
    p = with_overrides(tiny_params, ["train.epochs=1", "student.epochs=1"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)

    # the serial path, in a local store of its own
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'serial.db'}")
    serial = Where("intra", tmp_path / "serial-work", tmp_path / "serial-runs")
    tasks, _ = plan(p, ("kd",), [0, 1], serial, force=False)
    assert run_tasks(p, tasks, serial, False, 1, print) == []

    # the same grid on a local Ray cluster of 2 workers, logging to the server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    mlflow.set_tracking_uri(server.url)
    where = Where("intra", tmp_path / "work", tmp_path / "runs")
    lines: list[str] = []
    outcome: dict = {}

    def grid_on_ray() -> None:
        try:
            outcome["failed"] = run_tasks(p, tasks, where, False, 2, lines.append)
        except BaseException as err:  # re-raised below, in the test's own thread
            outcome["error"] = err

    grid = threading.Thread(target=grid_on_ray)
    grid.start()
    while not list(where.runs_dir.glob("*/*.json")) and grid.is_alive():
        time.sleep(0.2)
    done_before = len(list(where.runs_dir.glob("*/*.json")))
    server.restart()  # mid-grid: the other runs keep logging through it
    restarted_ms = time.time() * 1000
    grid.join(timeout=900)
    assert not grid.is_alive(), "the grid did not finish"
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["failed"] == [], lines
    assert 1 <= done_before < 4, "the restart came in the middle of the grid"

    ours, theirs = _summaries(where.runs_dir), _summaries(serial.runs_dir)
    assert set(ours) == set(theirs) == {(v, s) for v in ("teacher", "kd") for s in (0, 1)}
    for key, summary in ours.items():
        for field in SAME:
            assert summary[field] == theirs[key][field], f"{key}: {field} differs from serial"

    # everything reads back through the server
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name(STUDY_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(s["mlflow_run_id"] for s in ours.values())
    serial_client = MlflowClient(f"sqlite:///{tmp_path / 'serial.db'}")
    assert any(r.info.end_time > restarted_ms for r in runs), "runs logged through the restart"
    for run in runs:
        assert run.info.status == "FINISHED"
        summary = ours[run.data.tags["variant"], int(run.data.tags["seed"])]
        history = client.get_metric_history(run.info.run_id, "epoch/val_auc")
        assert [m.value for m in history] == [r["val_auc"] for r in summary["history"]]
        reference = serial_client.get_metric_history(
            theirs[run.data.tags["variant"], int(run.data.tags["seed"])]["mlflow_run_id"],
            "step/loss_g",
        )
        losses = client.get_metric_history(run.info.run_id, "step/loss_g")
        assert [(m.step, m.value) for m in losses] == [(m.step, m.value) for m in reference]
        assert {"G.pt", "D.pt"} <= {
            Path(a.path).name for a in client.list_artifacts(run.info.run_id, "checkpoints")
        }

    # the registry and its alias, through the server, with artifacts proxied by it
    name = "sibeatgan-generator"
    infos = {
        role: read_json(next((where.work / "intra-fold0-seed0" / variant).glob("**/fit.json")))
        for role, variant in (("teacher", "teacher"), ("student", "kd"))
    }
    for role, variant in (("teacher", "teacher"), ("student", "kd")):
        pick = ours[variant, 0]["selection"]["val_auc"]
        report = {"val_auc": ours[variant, 0]["history"][pick["epoch"] - 1]["val_auc"], **pick}
        registry.register(
            client, name, infos[role], report, params_from_dict(infos[role]["recipe"])
        )
    decision = registry.promote(client, name, "val_auc", infos["teacher"]["teacher_config"])
    champion = client.get_model_version_by_alias(name, registry.CHAMPION)
    assert champion.version == str(decision["champion_version"])
    local = mlflow.artifacts.download_artifacts(
        f"models:/{name}@champion", dst_path=str(tmp_path / "dl")
    )
    assert any(Path(local).rglob("artifacts/G.pt")), "weights served"

    # the stale-run cleanup works against the server too
    orphan = client.create_run(
        experiment.experiment_id, tags={"host": socket.gethostname(), "pid": str(dead_pid())}
    )
    assert orphan.info.run_id in tracking.close_orphaned_runs()
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    json.dumps(decision)  # the decision is plain data


def test_workers_opening_one_experiment_at_once_on_a_postgres_server_all_start(server):
    """A grid's workers start together. On PostgreSQL two writes of the same experiment tag
    collide (duplicate key), which once failed a worker of the grid above: opening a new
    experiment, or one made elsewhere without our kind tag, must start every worker."""
    client = MlflowClient(server.url)
    untagged = ["made-elsewhere-1", "made-elsewhere-2", "made-elsewhere-3"]
    for name in untagged:  # as `mlflow experiments create` leaves it
        client.create_experiment(name)
    names = [*untagged, "new"]
    open_experiments_at_once(server.url, names)
    for name in names:
        tags = client.get_experiment_by_name(name).tags
        assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development", name
