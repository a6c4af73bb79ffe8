import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from sibeatgan.cli import main

COMMANDS = [
    "fetch-data",
    "preprocess",
    "train-teacher",
    "train-student",
    "evaluate",
    "promote",
    "run-experiment",
]


def test_every_stage_has_a_command():
    assert set(COMMANDS) <= set(main.commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help(name):
    command = main.commands[name]
    assert command.help and len(command.help) > 30
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts} has no help text"
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0 and "--params" in result.output


def test_bad_override_is_one_clear_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epochs: 1\n")
    result = CliRunner().invoke(main, ["preprocess", "--params", str(params), "-S", "data.fold=9"])
    assert result.exit_code == 1
    assert "Error: data.fold must be 0-4" in result.output
    assert "Traceback" not in result.output


def test_missing_data_names_the_fix(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"runtime:\n  records_dir: {tmp_path / 'none'}\n")
    result = CliRunner().invoke(main, ["preprocess", "--params", str(params)])
    assert result.exit_code == 1 and "sibeatgan fetch-data" in result.output


def test_training_without_prepared_data_names_the_fix(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        f"runtime:\n  beats_dir: {tmp_path / 'none'}\n  prepared_dir: {tmp_path / 'none'}\n"
    )
    result = CliRunner().invoke(main, ["train-teacher", "--params", str(params)])
    assert result.exit_code == 1 and "sibeatgan preprocess" in result.output


def test_a_stopped_training_ends_its_mlflow_run_as_killed(mlflow_store, tmp_path):
    """SIGTERM (kill, a scheduler) stops `sibeatgan` like Ctrl-C and the run ends KILLED, not
    RUNNING for ever."""
    script = (
        "import os, signal, time\n"
        "from sibeatgan import tracking\n"
        "from sibeatgan.cli import main\n"
        "from sibeatgan.config import Params\n"
        "main.callback()\n"  # what `sibeatgan ...` runs before any command
        "with tracking.training_run(Params(), 'teacher') as run:\n"
        "    print(run.info.run_id, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr
    run_id = done.stdout.split()[-1]
    assert MlflowClient(mlflow_store).get_run(run_id).info.status == "KILLED"


def test_an_unknown_score_is_one_line_naming_the_known_ones(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        f"runtime:\n  beats_dir: {tmp_path / 'none'}\n  prepared_dir: {tmp_path / 'none'}\n"
    )
    args = ["train-teacher", "--params", str(params), "-S", "train.score=msee"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "unknown anomaly score 'msee'; known: mse, latent" in result.output
    assert not (tmp_path / "none").exists()


def test_mlproject_parameters_are_typed_with_the_params_yaml_defaults():
    import yaml
    from conftest import REPO

    from sibeatgan.config import load_params

    spec = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]
    p = load_params(REPO / "params.yaml")
    expected = {
        "kd": ("bool", p.student.kd),
        "fd": ("bool", p.student.fd),
        "teacher_epochs": ("int", p.train.epochs),
        "student_epochs": ("int", p.student.epochs),
        "fold": ("int", p.data.fold),
        "seed": ("int", p.seed),
    }
    for name, (kind, default) in expected.items():
        assert spec["parameters"][name] == {"type": kind, "default": default}, name
        assert f"{{{name}}}" in spec["command"]
    for option, value in (("--teacher-epochs", "twelve"), ("--kd", "maybe"), ("--fold", "7")):
        result = CliRunner().invoke(main, ["run-experiment", option, value])
        assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output


def test_mlflow_run_environment_is_derived_from_pyproject():
    """python_env.yaml installs the project (its dependencies from pyproject.toml) after the
    torch build `make setup` pins: no second hand-kept list of packages."""
    import re

    import yaml
    from conftest import REPO

    env = yaml.safe_load((REPO / "python_env.yaml").read_text())
    pin = re.search(r"pip install --quiet (torch==[\d.]+)", (REPO / "Makefile").read_text())
    assert env["dependencies"] == [pin.group(1), "."]
