"""The real pipeline on a few MIT-BIH records: `dvc repro`, `mlflow run`, the registry.

Runs only when MITDB_DIR points at the records (CI sets it). A copy of the project is made in a
temporary folder, so nothing here touches the working tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wfdb
import yaml
from conftest import REPO, mitdb_dir

from sibeatgan.datasets import CLASSES
from sibeatgan.datasets.mitdb import CLASS_OF_SYMBOL

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(mitdb_dir() is None, reason="MITDB_DIR is not set"),
]

RECORDS = [100, 106, 119, 208, 232]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's scripts first on PATH; fail with its output."""
    full_env = {**os.environ, **env}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env['PATH']}"
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        full_env.pop(key, None)
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def project_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    files = [f for f in listed.stdout.splitlines() if (REPO / f).exists()]
    assert files, "the project must be a git checkout"
    return files


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh copy of the project, with the records fetched and small params."""
    root = tmp_path_factory.mktemp("project")
    for name in project_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    run(["git", "init", "-q"], root)
    run(["sibeatgan", "fetch-data", "--from", str(mitdb_dir())], root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["preprocess"]["records"] = RECORDS
    params["train"]["epochs"] = 1
    params["student"]["epochs"] = 1
    params["train"]["batch_size"] = 64  # enough steps on 5 records
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def repro(project: Path) -> subprocess.CompletedProcess:
    return run(["dvc", "repro"], project)


def annotated_counts(records: list[int]) -> dict[str, int]:
    """Beats per class straight from the annotations (windows inside the record)."""
    counts = dict.fromkeys(CLASSES, 0)
    for r in records:
        ann = wfdb.rdann(str(mitdb_dir() / str(r)), "atr")
        inside = (ann.sample >= 140) & (ann.sample + 180 <= 650000)
        for sym, ok in zip(ann.symbol, inside, strict=True):
            if ok and sym in CLASS_OF_SYMBOL:
                counts[CLASSES[CLASS_OF_SYMBOL[sym]]] += 1
    return counts


def test_fetched_data_matches_data_dvc(project):
    out = run(["dvc", "status", "data.dvc"], project).stdout
    assert "up to date" in out.lower() or out.strip() in ("", "{}"), out


def test_dvc_repro_runs_every_stage(repro, project):
    for stage in ("preprocess", "train_teacher", "train_student", "evaluate"):
        assert f"Running stage '{stage}'" in repro.stdout
    counts = json.loads((project / "metrics/preprocess.json").read_text())["class_counts"]
    expected = annotated_counts(RECORDS)
    for c in "SVFQ":
        assert counts[c] == expected[c], c
    assert 0.97 * expected["N"] <= counts["N"] <= expected["N"]


def test_metrics_and_plots(repro, project):
    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    data = json.loads(shown)
    flat = json.dumps(data)
    assert '"test_auc"' in flat and '"teacher"' in flat and '"student"' in flat
    evaluate = json.loads((project / "metrics/evaluate.json").read_text())
    for role in ("teacher", "student"):
        assert 0.5 < evaluate[role]["test_auc"] <= 1.0
    run(["dvc", "plots", "show", "-o", "dvc_plots"], project)
    html = (project / "dvc_plots" / "index.html").read_text()
    assert "val_auc" in html and "fpr" in html


def test_second_repro_runs_nothing(repro, project):
    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout, again.stdout


def dvc_changed(project: Path) -> set[str]:
    """The stages `dvc status` reports changed."""
    status = json.loads(run(["dvc", "status", "--json"], project).stdout or "{}")
    return {name.split(":")[-1] for name in status}


def edited(path: Path, old: str, new: str):
    """A context in which `path` has `old` replaced by `new` (restored after)."""
    from contextlib import contextmanager

    @contextmanager
    def context():
        text = path.read_text()
        assert old in text, f"{old!r} not in {path}"
        path.write_text(text.replace(old, new, 1))
        try:
            yield
        finally:
            path.write_text(text)

    return context()


def test_a_help_text_or_a_runtime_setting_reruns_nothing(repro, project):
    assert dvc_changed(project) == set()
    with edited(project / "src/sibeatgan/cli.py", "Train the BeatGAN teacher", "Train a teacher"):
        assert dvc_changed(project) == set(), "a help text is in no stage's deps"
    with edited(project / "params.yaml", "threads: 0", "threads: 1"):
        assert dvc_changed(project) == set(), "runtime settings are in no stage's params"


def test_code_and_knobs_rerun_the_stages_that_use_them(repro, project):
    with edited(project / "src/sibeatgan/training/loop.py", '"""', '"""Edited. '):
        assert dvc_changed(project) == {"train_teacher", "train_student"}
    with edited(project / "params.yaml", "fold: 0", "fold: 1"):
        changed = dvc_changed(project)
    assert changed == {"split", "train_teacher", "train_student", "evaluate"}, changed


def test_mlflow_store_holds_runs_and_champion(repro, project):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        client = MlflowClient()
        exp = client.get_experiment_by_name("sibeatgan")
        runs = client.search_runs([exp.experiment_id])
        roles = {r.data.tags.get("role") for r in runs}
        assert {"teacher", "student"} <= roles
        for r in runs:
            assert [m.step for m in client.get_metric_history(r.info.run_id, "epoch/val_auc")] == [
                1
            ]
            assert "best_val_auc" in r.data.metrics
        champion = client.get_model_version_by_alias("sibeatgan-generator", "champion")
        assert champion.tags["role"] in ("teacher", "student")
    finally:
        mlflow.set_tracking_uri(None)


def test_mlflow_run_as_typed_reuses_the_dvc_teacher(repro, project):
    import mlflow
    from mlflow import MlflowClient

    records = ",".join(map(str, RECORDS))
    args = "mlflow run . --env-manager local -P kd=true -P teacher_epochs=1 -P student_epochs=1"
    args = [*args.split(), "-P", f"records={records}"]
    result = run(args, project, MITDB_DIR=str(mitdb_dir()))
    assert "reusing run" in result.stdout + result.stderr
    run_id = re.search(r"Run \(ID '(\w+)'\) succeeded", result.stdout + result.stderr).group(1)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        client = MlflowClient()
        created = client.get_run(run_id)  # the run `mlflow run` created (Default experiment)
        assert created.info.status == "FINISHED"
        assert created.data.tags["role"] == "student" and created.data.tags["kd"] == "true"
        assert created.data.tags.get("mlflow.project.entryPoint") == "main"
        assert [m.step for m in client.get_metric_history(run_id, "epoch/val_auc")] == [1]
        assert np.isfinite(created.data.metrics["best_val_auc"])
        assert "test_auc" in created.data.metrics
        teachers = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "tags.role = 'teacher'"
        )
        assert len(teachers) == 1, "the teacher of the same config must be reused"
        assert created.data.tags["teacher_run_id"] == teachers[0].info.run_id
        decision = client.get_registered_model("sibeatgan-generator").tags["champion_decision"]
        assert "teacher" in decision
    finally:
        mlflow.set_tracking_uri(None)


def test_served_champion_detector_answers_posted_beats(repro, project, tmp_path, monkeypatch):
    """`mlflow models serve` of the registry's champion detector on a loopback port: beats
    posted with a real HTTP client come back scored as `sibeatgan detect` scores them."""
    from sibeatgan.data.preprocess import load_prepared
    from sibeatgan.data.split import TEST
    from sibeatgan.detection.model import resolve_detector
    from sibeatgan.detection.serve import post_beats, served

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    # the registry's champion, not models/<role>: `mlflow run` (an earlier test) registers a
    # student of its own, and the alias may have moved to it since `dvc repro` promoted
    uri = "models:/sibeatgan-detector@champion"
    local = resolve_detector(uri)
    x, cls = load_prepared(project / "data/beats", project / "data/prepared").part(TEST, 1)
    pick = np.r_[np.flatnonzero(cls == 0)[:24], np.flatnonzero(cls > 0)[:8]]
    beats = x[pick, 0]
    with served(uri, tmp_path / "server.log", 180) as url:
        answer = post_beats(url, beats)
        strict = post_beats(url, beats, threshold="alarm_0.01")
    scores, heat = local.run(beats)
    np.testing.assert_allclose(answer["score"], scores, rtol=1e-4, atol=1e-7)
    assert np.asarray(answer["heat"]).shape == (len(beats), 320)
    np.testing.assert_allclose(np.asarray(answer["heat"]).mean(1), scores, rtol=1e-4, atol=1e-7)
    for reply, name in ((answer, "val_f1"), (strict, "alarm_0.01")):
        value = local.meta["thresholds"][name]
        assert reply["threshold"] == {"name": name, "value": value}
        assert reply["flag"] == [bool(s >= value) for s in reply["score"]]


def test_detect_with_the_champion_on_a_record(repro, project, monkeypatch):
    """The default model is the registry's champion detector; a record's summary counts the
    beats `preprocess` kept for it."""
    record = str(mitdb_dir() / "232")
    result = run(["sibeatgan", "detect", record, "--out", "detections"], project)
    assert "232:" in result.stdout and "recall" in result.stdout
    summary = json.loads((project / "detections" / "232" / "summary.json").read_text())
    kept = np.load(project / "data" / "beats" / "records.npy") == 232
    assert summary["beats"] == int(kept.sum()) and summary["model"]["spec"].startswith("models:/")


def _digests(root: Path, folders: list[str]) -> dict[str, str]:
    """sha256 of every file under `folders`, by path relative to `root`."""
    import hashlib

    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for folder in folders
        for f in sorted((root / folder).rglob("*"))
        if f.is_file()
    }


def test_dvc_push_and_pull_round_trip_to_a_fresh_clone(repro, project, tmp_path):
    """Data, prepared arrays and models go to a remote with `dvc push` and come back, the same
    bytes, into a clone that has only what git holds; the pipeline there is up to date."""
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "--default", "storage", str(remote)], project)
    pushed = run(["dvc", "push"], project).stdout
    assert re.search(r"\d+ files? pushed", pushed), pushed
    cached = ["data/mitdb", "data/beats", "data/prepared", "models/teacher", "models/student"]
    clone = tmp_path / "clone"
    for name in [*project_files(), "dvc.lock", ".dvc/config"]:  # what a git clone would hold
        if (project / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / name, clone / name)
    assert not any((clone / folder).exists() for folder in [*cached, "models"])
    run(["git", "init", "-q"], clone)
    run(["dvc", "pull"], clone)
    assert _digests(clone, cached) == _digests(project, cached)
    status = run(["dvc", "status"], clone).stdout
    assert "up to date" in status.lower(), status
