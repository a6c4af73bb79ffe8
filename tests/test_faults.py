"""Fault injection: planted files, concurrent runs, mismatched models, bad input, interrupted
writes. Each test feeds the project one fault a user met and checks that it stops with one
clear line (naming the problem and the fix), runs no code from a file, and loses nothing."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import dead_pid, prepare, tiny_overrides, trained_once, use_copy_of
from disk_faults import DEV_FULL, closed_port, fill_disk, full_store, needs_dev_full

from sibeatgan import io, tracking
from sibeatgan.cli import main
from sibeatgan.config import ConfigError, load_params, with_overrides
from sibeatgan.data.preprocess import (
    check_parts_disjoint,
    load_data,
    load_prepared,
    run_preprocess,
    run_split,
)
from sibeatgan.io import FolderBusyError, UnsafeFileError, exclusive_folder, read_json
from sibeatgan.pipeline.evaluate import evaluate
from sibeatgan.pipeline.layout import Layout
from sibeatgan.pipeline.train import train_model
from sibeatgan.pipeline.trained import load_generator
from sibeatgan.tracking.registry import promote
from sibeatgan.training import state as train_state

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


class Planted:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def plant(path: Path, marker: Path) -> None:
    """A torch file whose loading (without weights_only) would run code."""
    torch.save({"weight": Planted(marker)}, path)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, synthetic_mitdb):
    """Teacher and KD student trained once on the synthetic records (fold 0), with their
    MLflow store; tests copy it so each starts from the same trained state."""
    root = tmp_path_factory.mktemp("trained")
    p = with_overrides(load_params(PARAMS), tiny_overrides(synthetic_mitdb, "prepared"))
    with trained_once(root):
        prepare(p)
        train_model(p, "teacher")
        train_model(p, "student")
    return root, p


@pytest.fixture
def trained(pipeline, tmp_path, monkeypatch):
    """A copy of the trained pipeline as the working directory."""
    root, p = pipeline
    use_copy_of(root, tmp_path, monkeypatch)
    return p


# --- 1. No code from a file -------------------------------------------------------------


@pytest.mark.parametrize("name", ["G.pt", "D.pt"])
def test_planted_checkpoint_runs_nothing_and_is_named(trained, tmp_path, name):
    marker = tmp_path / "ran"
    target = Path("models/teacher") / name
    plant(target, marker)
    with pytest.raises(UnsafeFileError, match=str(target)):
        if name == "G.pt":
            load_generator(Path("models/teacher"))
        else:  # D is loaded when a student starts from its teacher
            train_model(with_overrides(trained, ["student.init_from_teacher=true"]), "student")
    assert not marker.exists()


def test_planted_training_state_runs_nothing_and_is_set_aside(trained, tmp_path, capsys):
    marker = tmp_path / "ran"
    state = Path("models/teacher") / train_state.FILENAME
    plant(state, marker)
    train_model(with_overrides(trained, ["train.epochs=1"]), "teacher")
    assert not marker.exists()
    assert str(state) in capsys.readouterr().out, "the warning names the file"
    assert (state.parent / f"{state.name}.unreadable").exists(), "set aside, not deleted"


def test_planted_prepared_array_runs_nothing_and_is_named(trained, tmp_path):
    path = Path("prepared_beats/classes.npy")
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match=str(path)):
        load_prepared("prepared_beats", "prepared")


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", b"PK\x03\x04 cut"])
def test_damaged_files_are_one_named_error(tmp_path, content):
    for name, load in (("G.pt", io.load_state_dict), ("beats.npy", io.load_npy)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UnsafeFileError, match=str(tmp_path / name)):
            load(tmp_path / name)


def test_a_training_state_loads_as_plain_tensors(trained):
    """The real state file needs nothing but tensors and containers (weights_only)."""
    p = with_overrides(trained, ["train.epochs=1", "train.ema=0.999"])
    layout = Layout(Path("other"))
    kept = {}
    original = train_state.save

    def keep(path, *args):
        original(path, *args)
        kept["state"] = train_state.read(path)  # weights_only: raises on anything else

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_state, "save", keep)
        train_model(p, "teacher", layout)
    assert kept["state"]["progress"]["epoch"] == 1


# --- 2. No two runs in one --------------------------------------------------------------


def hold_lock(
    folder: Path, what: str = "teacher training", helper: str = "exclusive_folder"
) -> subprocess.Popen:
    """Another process holding `folder`'s lock, as a second shell would: to write it
    (exclusive_folder, as a training its output folder or preprocess the prepared data) or to
    read it (shared_folder, as a training or evaluate the prepared data)."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from sibeatgan.io import {helper}
        with {helper}(Path({str(folder)!r}), {what!r}):
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked", f"{helper} could not hold {folder}"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def test_second_training_into_the_same_folder_stops_naming_the_holder(trained):
    holder = hold_lock(Path("models/teacher").resolve())
    try:
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
            train_model(trained, "teacher")
        # another output folder still trains while the first is held
        info = train_model(
            with_overrides(trained, ["train.epochs=1"]), "teacher", Layout(Path("b"))
        )
        assert Path("b/models/teacher/G.pt").exists() and info["best_epoch"] == 1
    finally:
        holder.kill()
        holder.wait()
    with exclusive_folder(Path("models/teacher"), "check"):
        pass  # the lock went with its process


def test_cli_second_training_is_one_line(trained):
    holder = hold_lock(Path("models/teacher").resolve())
    try:
        result = CliRunner().invoke(main, ["train-teacher", *cli_overrides(trained)])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1
    assert f"in use by another teacher training (pid {holder.pid})" in result.output
    assert len(result.output.strip().splitlines()) == 1


def cli_overrides(p) -> list[str]:
    """-S arguments that reproduce the fixture's params from params.yaml on the command line."""
    keys = ["runtime.records_dir", "runtime.beats_dir", "runtime.prepared_dir", "runtime.workers"]
    keys += ["model.width", "model.nz", "train.epochs", "train.batch_size", "runtime.threads"]
    flat = p.flat()
    out = [f"-S preprocess.records=[{','.join(map(str, p.preprocess.records))}]"]
    return [*" ".join(out).split(), *[a for k in keys for a in ("-S", f"{k}={flat[k]}")]] + [
        "--params",
        str(PARAMS),
    ]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def test_preprocess_is_refused_while_a_training_reads_the_prepared_data(trained):
    """`preprocess` in one shell while `dvc repro` trains in another used to swap
    data/prepared under the training: dvc.lock then recorded data it never saw."""
    prepared = Path("prepared_beats")
    before = snapshot(prepared)
    holder = hold_lock(prepared.resolve(), "teacher training", "shared_folder")
    try:
        result = CliRunner().invoke(
            main, ["preprocess", "--metrics", "m.json", *cli_overrides(trained)]
        )
        # readers share the data: another training still reads it meanwhile
        one_epoch = with_overrides(trained, ["train.epochs=1"])
        info = train_model(one_epoch, "teacher", Layout(Path("b")))
    finally:
        stop(holder)
    assert result.exit_code == 1
    assert f"prepared_beats is in use by teacher training (pid {holder.pid})" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert snapshot(prepared) == before and not Path("m.json").exists(), "nothing written"
    assert info["best_epoch"] == 1


def test_a_training_holds_the_prepared_data_while_it_runs(trained, monkeypatch):
    """The real training's lock: a preprocess tried between its epochs is refused."""
    refused, original = [], tracking.log_epoch

    def preprocess_meanwhile(row):
        original(row)
        try:
            run_preprocess(trained)
        except FolderBusyError as err:
            refused.append(str(err))

    monkeypatch.setattr(tracking, "log_epoch", preprocess_meanwhile)
    train_model(with_overrides(trained, ["train.epochs=1"]), "teacher")
    assert refused and f"in use by teacher training (pid {os.getpid()})" in refused[0]
    run_preprocess(trained)  # once the training is done, preprocess runs


def test_training_and_evaluate_are_refused_while_preprocess_writes(trained):
    holder = hold_lock(Path("prepared_beats").resolve(), "preprocess")
    try:
        busy = rf"prepared_beats is in use by preprocess \(pid {holder.pid}\)"
        for run in (lambda: train_model(trained, "teacher"), lambda: evaluate(trained)):
            with pytest.raises(FolderBusyError, match=busy):
                run()
    finally:
        stop(holder)
    assert not Path("metrics/evaluate.json").exists()


def test_runs_of_a_grid_wait_for_the_one_preprocessing_their_data(tiny_params, tmp_path):
    """`study run --jobs`: runs that start together wait for the one making the data."""
    import threading
    import time

    from sibeatgan.data.preprocess import ensure_prepared, prepared_key

    folder = tmp_path / "work" / "prepared" / prepared_key(tiny_params)
    folder.parent.mkdir(parents=True)
    holding, release = threading.Event(), threading.Event()

    def other_run():
        with exclusive_folder(folder, "preprocess"):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=other_run)
    thread.start()
    holding.wait(30)
    threading.Timer(1.5, release.set).start()
    t0 = time.perf_counter()
    p = ensure_prepared(tiny_params, tmp_path / "work")
    waited = time.perf_counter() - t0
    thread.join()
    assert waited >= 1.0 and load_data(p).meta["key"] == prepared_key(p)


# --- 3. Models know the data they were trained on --------------------------------------


def other_fold(p):
    q = with_overrides(p, ["data.fold=1", "runtime.prepared_dir=prepared1"])
    run_split(q)
    return q


def test_evaluate_refuses_models_of_another_fold_and_writes_nothing(trained):
    q = other_fold(trained)
    with pytest.raises(ValueError, match=r"data.fold 0 -> 1.*train-teacher"):
        evaluate(q)
    assert not Path("metrics/evaluate.json").exists()
    assert not Path("plots/teacher_scores.png").exists()


def test_student_and_resume_refuse_other_data_or_params(trained):
    q = other_fold(trained)
    with pytest.raises(ValueError, match="models/teacher was trained on other data"):
        train_model(q, "student")
    # a stopped training of seed 0, then seed 1 into the same folder
    state = Path("models/teacher") / train_state.FILENAME
    p = with_overrides(trained, ["train.epochs=3"])
    with pytest.MonkeyPatch.context() as mp:

        def stop_after_first(row):
            raise KeyboardInterrupt

        mp.setattr(tracking, "log_epoch", stop_after_first)
        with pytest.raises(KeyboardInterrupt):
            train_model(p, "teacher")
    assert state.exists()
    with pytest.raises(ValueError, match=r"seed 0 -> 1.*--fresh"):
        train_model(with_overrides(p, ["seed=1"]), "teacher")
    assert state.exists(), "the refused state is kept"
    info = train_model(with_overrides(p, ["seed=1", "train.epochs=1"]), "teacher", resume=False)
    assert info["best_epoch"] == 1 and not state.exists()


def test_promote_with_other_params_names_what_is_registered(trained):
    evaluate(trained)
    q = with_overrides(trained, ["data.fold=1"])
    with pytest.raises(ValueError, match=r"registered: .*\(fold 0, seed 0\)"):
        promote(
            mlflow.MlflowClient(),
            q.registry.model_name,
            q.registry.metric,
            tracking.teacher_config_key(q),
        )


def test_student_of_other_train_values_is_compared_with_its_teacher(trained):
    """The student's registry key is its teacher's, not one made from its own train.*."""
    train_model(with_overrides(trained, ["train.epochs=1"]), "student")
    evaluate(trained)
    decision = read_json("metrics/promotion.json")
    assert decision["student_version"] is not None, decision["reason"]


# --- 4. No leak between splits ----------------------------------------------------------


def test_duplicate_records_are_refused():
    with pytest.raises(ConfigError, match=r"lists \[100\] more than once"):
        with_overrides(load_params(PARAMS), ["preprocess.records=[100, 101, 100]"])


def test_a_beat_in_two_parts_is_refused(tiny_params):
    records = np.array([100, 100, 101], np.int16)
    samples = np.array([5, 5, 5], np.int32)
    check_parts_disjoint(records, samples, np.array([0, 0, 2]))  # same part: no leak
    with pytest.raises(ValueError, match="1 beats .* fall in two split parts"):
        check_parts_disjoint(records, samples, np.array([0, 2, 2]))
    # preprocessing itself checks, even if params slipped past validation
    twice = dataclasses.replace(
        tiny_params, preprocess=dataclasses.replace(tiny_params.preprocess, records=[100, 100])
    )
    run_preprocess(twice)
    with pytest.raises(ValueError, match="fall in two split parts"):
        run_split(twice)
    assert not Path(twice.runtime.prepared_dir, "split.npy").exists(), "nothing written"


# --- Bad input: one line ----------------------------------------------------------------


def test_malformed_params_file_is_one_line_with_file_and_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 0\ntrain:\n  epochs: [1\n  lr: 2\n")
    result = CliRunner().invoke(main, ["train-teacher", "--params", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: line 4" in result.output and len(result.output.strip().splitlines()) == 1


def test_malformed_override_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["preprocess", "--params", str(PARAMS), "-S", "train.lr=[1,"])
    assert result.exit_code == 1
    assert "train.lr=[1," in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "override, named",
    [
        ("runtime.log_every=0", "runtime.log_every"),
        ("model.width=0", "model.width"),
        ("model.nz=0", "model.nz"),
        ("runtime.score_batch_size=0", "runtime.score_batch_size"),
        ("train.lr=inf", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("train.augment_copies=-1", "train.augment_copies"),
        ("preprocess.before=-5", "preprocess.before"),
        ("preprocess.qrs_tolerance=-1", "preprocess.qrs_tolerance"),
        ("preprocess.band_hz=[45, 3]", "preprocess.band_hz"),
        ("preprocess.band_hz=[3, 200]", "preprocess.band_hz"),
        ("preprocess.taps=0", "preprocess.taps"),
        ("runtime.threads=-1", "runtime.threads"),
        ("runtime.workers=0", "runtime.workers"),
        ("train.beta2=1", "train.beta1 and train.beta2"),
        ("seed=-1", "seed"),
        ("evaluate.curve_points=1", "evaluate.curve_points"),
    ],
)
def test_every_param_is_checked_up_front(override, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were a check to slip, nothing of the repository is touched
    result = CliRunner().invoke(main, ["preprocess", "--params", str(PARAMS), "-S", override])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: {named}")
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "missing, command", [("student", "train-student"), ("teacher", "train-teacher")]
)
def test_evaluate_checks_every_model_before_writing(trained, missing, command):
    """The teacher is evaluated first: a missing or damaged student must stop it too."""
    shutil.rmtree(Path("models") / missing)
    with pytest.raises(FileNotFoundError, match=f"sibeatgan {command}"):
        evaluate(trained)
    assert not Path("metrics/evaluate.json").exists()
    assert not list(Path("plots").glob("*_scores.png")), "no plot of the other model either"


def test_evaluate_refuses_a_damaged_student_before_writing(trained, tmp_path):
    plant(Path("models/student/G.pt"), tmp_path / "ran")
    with pytest.raises(UnsafeFileError, match="models/student/G.pt"):
        evaluate(trained)
    assert not (tmp_path / "ran").exists()
    assert not Path("metrics/evaluate.json").exists()
    assert not list(Path("plots").glob("*_scores.png")) and not list(
        Path("plots").glob("*_roc.csv")
    )


def test_a_teacher_of_another_network_is_one_line(trained):
    with pytest.raises(ValueError, match=r"models/teacher holds another network \(model.width"):
        train_model(with_overrides(trained, ["model.width=8"]), "student")


# --- Interrupted writes -----------------------------------------------------------------


def test_stale_temporaries_are_removed_and_a_truncated_state_set_aside(trained, capsys):
    folder = Path("models/teacher")
    stale = folder / ".train_state.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a state")
    state = folder / train_state.FILENAME
    state.write_bytes(b"PK\x03\x04 truncated")
    info = train_model(with_overrides(trained, ["train.epochs=1"]), "teacher")
    out = capsys.readouterr().out
    assert not stale.exists() and str(stale) in out
    assert (folder / f"{state.name}.unreadable").exists() and "warning" in out
    assert info["best_epoch"] == 1


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        io.write_json(tmp_path / "a.json", {"a": 1})
        io.save_state_dict(tmp_path / "G.pt", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    assert {(tmp_path / n).stat().st_mode & 0o777 for n in ("a.json", "G.pt")} == {mode}


def test_a_resumed_run_loses_its_stopped_tag(mlflow_store, tiny_params):
    import socket

    tracking.setup()
    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id
    tags = {"host": socket.gethostname(), "pid": str(dead_pid())}
    run_id = client.create_run(exp, tags=tags).info.run_id
    assert tracking.close_orphaned_runs() == [run_id]
    with tracking.training_run(tiny_params, "teacher", run_id=run_id):
        pass
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and tracking.STOPPED_TAG not in run.data.tags


# --- Where the tree or its folders are unusual -----------------------------------------


def test_unwritable_output_folder_is_one_line_before_any_work(trained):
    shutil.rmtree("models")
    Path("models").write_text("not a folder")  # root may write anywhere; a file may not
    runs = len(mlflow.search_runs(search_all_experiments=True))
    result = CliRunner().invoke(main, ["train-teacher", *cli_overrides(trained)])
    assert result.exit_code == 1
    assert "cannot write to models/teacher" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs, "no run was started"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(trained):
    Path("models/teacher").chmod(0o555)
    try:
        result = CliRunner().invoke(main, ["train-teacher", *cli_overrides(trained)])
    finally:
        Path("models/teacher").chmod(0o755)
    assert result.exit_code == 1 and "cannot write to models/teacher" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_fetch_data_in_a_copy_without_git(tmp_path, monkeypatch):
    """A tree copied without .git: fetch-data verifies and puts the data in DVC's cache."""
    import hashlib

    from dvc.repo import Repo

    from sibeatgan.data import fetch as fetch_mod

    files = {"100.hea": b"header\r\n", "100.dat": b"\x00\x01" * 50, "RECORDS": b"100\n"}
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    digests = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    monkeypatch.setattr(fetch_mod, "expected_digests", lambda ds: digests)
    project = tmp_path / "project"
    shutil.copytree(src, project / "data" / "mitdb")
    monkeypatch.chdir(project)
    with Repo.init(".", no_scm=True) as repo:
        repo.add("data/mitdb")
    shutil.copy(REPO / ".dvc" / "config", ".dvc/config")  # the project's: no no_scm in it
    dvcfile = yaml.safe_load(Path("data/mitdb.dvc").read_text())
    dvcfile["outs"][0]["path"] = "data/mitdb"
    Path("data.dvc").write_text(yaml.safe_dump(dvcfile))
    Path("data/mitdb.dvc").unlink()
    shutil.rmtree(".dvc/cache")
    shutil.rmtree("data/mitdb")
    assert not fetch_mod.in_git_work_tree(Path("."))
    result = CliRunner().invoke(
        main,
        ["fetch-data", "--from", str(src), "--dest", "data/mitdb", "--params", str(PARAMS)],
    )
    assert result.exit_code == 0, result.output
    assert "in DVC's cache, matching data.dvc" in result.output
    assert list(Path(".dvc/cache").rglob("*")), "the data went into DVC's cache"


def test_a_copy_inside_another_checkout_is_not_a_git_tree(tmp_path):
    from sibeatgan.data.fetch import in_git_work_tree

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "copy").mkdir()
    assert in_git_work_tree(tmp_path)
    assert not in_git_work_tree(tmp_path / "copy"), "DVC would look for its files elsewhere"


# --- A full disk, a dead store ----------------------------------------------------------


def error_line(result) -> str:
    """The one line a command stopped with (among its progress lines, which stdout may print
    after it), checked to be the only word of an error."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if "rror" in line or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("Error: "), errors or lines[-3:]
    return errors[0].removeprefix("Error: ")


def last_run(role: str = "teacher"):
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.role = '{role}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return runs[0]


def artifact_root() -> Path:
    """Where the runs of the store's experiment keep their artifacts."""
    tracking.setup()
    location = mlflow.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).artifact_location
    return Path(location.removeprefix("file://"))


@needs_dev_full
def test_a_full_disk_under_the_outputs_stops_training_in_one_line_and_fails_its_run(
    trained, monkeypatch
):
    before = snapshot(Path("models/teacher"))
    fill_disk(monkeypatch, Path("models/teacher"))
    result = CliRunner().invoke(main, ["train-teacher", "--fresh", *cli_overrides(trained)])
    line = error_line(result)
    assert line.startswith("cannot write models/teacher/train_state.pt: no space left")
    assert snapshot(Path("models/teacher")) == before, "the trained model is kept as it was"
    run = last_run()
    assert run.info.status == "FAILED" and run.data.tags[tracking.FAILED_TAG] == line


@needs_dev_full
def test_a_full_disk_under_mlflow_artifacts_stops_training_in_one_line(trained, monkeypatch):
    fill_disk(monkeypatch, artifact_root())
    result = CliRunner().invoke(main, ["train-teacher", "--fresh", *cli_overrides(trained)])
    line = error_line(result)
    run = last_run()
    assert line.startswith(f"cannot write the MLflow artifacts of run {run.info.run_id} (")
    assert "no space left" in line
    assert run.info.status == "FAILED" and run.data.tags[tracking.FAILED_TAG] == line


@needs_dev_full
def test_preprocess_on_a_full_disk_is_one_line_and_keeps_the_data(trained, monkeypatch):
    before = snapshot(Path("prepared_beats"))
    fill_disk(monkeypatch, Path("prepared_beats"))
    result = CliRunner().invoke(
        main, ["preprocess", "--metrics", "m.json", *cli_overrides(trained)]
    )
    assert error_line(result).startswith("cannot write prepared_beats/beats.npy: no space left")
    assert snapshot(Path("prepared_beats")) == before


def test_a_store_filling_up_mid_training_is_one_line_naming_it(
    tiny_params, mlflow_store, monkeypatch
):
    """SQLite's "database or disk is full" after the first epoch: it surfaces (from the step
    losses logged in the background) at the next epoch, as one line naming the store."""
    prepare(tiny_params)
    original = tracking.log_epoch
    with full_store() as store:

        def then_full(row):
            original(row)
            store["on"] = True

        monkeypatch.setattr(tracking, "log_epoch", then_full)
        result = CliRunner().invoke(main, ["train-teacher", *cli_overrides(tiny_params)])
    line = error_line(result)
    assert line.startswith(f"MLflow tracking store {mlflow_store}: its disk is full; free space")
    assert not Path("models/teacher/G.pt").exists()


@pytest.mark.parametrize("fault", ["deleted run", "full artifacts", "full store"])
def test_evaluate_exits_non_zero_when_logging_to_mlflow_failed(trained, monkeypatch, fault):
    """The metrics files are right, but the runs (or the registry) lack the test figures: that
    is not a success (it used to print a warning and exit 0)."""
    teacher_run = read_json("models/teacher/fit.json")["run_id"]
    if fault == "deleted run":
        mlflow.MlflowClient().delete_run(teacher_run)
    if fault == "full artifacts":
        if not DEV_FULL.exists():
            pytest.skip("no /dev/full here")
        fill_disk(monkeypatch, artifact_root())
    with full_store() as store:
        store["on"] = fault == "full store"
        result = CliRunner().invoke(main, ["evaluate", *cli_overrides(trained)])
    line = error_line(result)
    if fault == "full store":
        assert line.startswith(f"MLflow tracking store {mlflow.get_tracking_uri()}: its disk")
        return
    assert line.startswith(f"could not log to MLflow run {teacher_run} of models/teacher: ")
    assert line.endswith(
        "the metrics files are written: fix that, then run `sibeatgan evaluate` again"
    )
    assert {"deleted run": "deleted state", "full artifacts": "no space left"}[fault] in line
    assert read_json("metrics/evaluate.json")["champion"] in ("teacher", "student")
    assert mlflow.MlflowClient().get_run(teacher_run).info.status == "FINISHED"


@pytest.mark.parametrize("store", ["server", "damaged", "read-only"])
def test_a_dead_store_is_one_line_naming_it_before_any_work(
    tiny_params, tmp_path, monkeypatch, store
):
    import time

    monkeypatch.chdir(tmp_path)
    uri = {
        "server": f"http://127.0.0.1:{closed_port()}",
        "damaged": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
        "read-only": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
    }[store]
    (tmp_path / "store").mkdir()
    if store == "damaged":
        (tmp_path / "store" / "mlflow.db").write_bytes(b"not a database, a damaged copy " * 100)
    if store == "read-only":
        fill_disk(monkeypatch, tmp_path / "store", errno.EROFS)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SIBEATGAN_SERVER_WAIT_S", "2")  # a restart's grace, shortened
    t0 = time.perf_counter()
    result = CliRunner().invoke(main, ["train-teacher", *cli_overrides(tiny_params)])
    line = error_line(result)
    assert len(result.output.strip().splitlines()) == 1, "stopped before any work"
    assert time.perf_counter() - t0 < 60, "MLflow's retries (minutes) were not waited for"
    what = {
        "server": f"MLflow tracking server {uri} does not answer (connection refused)",
        "damaged": f"MLflow tracking store {uri}: it is not an SQLite database (damaged?)",
        "read-only": f"MLflow tracking store {uri}: cannot write to {tmp_path / 'store'} (Read",
    }[store]
    assert line.startswith(what)
    assert not Path("models").exists()
