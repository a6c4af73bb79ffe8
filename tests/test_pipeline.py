"""The whole pipeline on synthetic records, tracked in a private MLflow store."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from conftest import PAPER_OPTIMISER, prepare, tiny_overrides, trained_once, use_copy_of
from mlflow import MlflowClient

from sibeatgan.config import Params, with_overrides
from sibeatgan.evaluation import scores
from sibeatgan.io import read_json
from sibeatgan.pipeline.evaluate import HEADLINE, evaluate
from sibeatgan.pipeline.layout import Layout
from sibeatgan.pipeline.train import train_model
from sibeatgan.pipeline.trained import load_generator
from sibeatgan.tracking.registry import promote


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, synthetic_mitdb):
    """The whole pipeline on the synthetic records, run once for the module."""
    root = tmp_path_factory.mktemp("pipeline")
    p = with_overrides(Params(), tiny_overrides(synthetic_mitdb, "prepared"))
    p = with_overrides(p, PAPER_OPTIMISER)
    with trained_once(root):
        prepare(p)
        teacher = train_model(p, "teacher")
        student = train_model(p, "student")
        reports = evaluate(p)
    return root, (p, teacher, student, reports)


@pytest.fixture
def trained(pipeline, tmp_path, monkeypatch):
    """A copy of the module's trained pipeline as the working directory (tmp_path/work)."""
    root, result = pipeline
    use_copy_of(root, tmp_path, monkeypatch)
    return result


def test_checkpoints_metrics_and_plots(trained, tmp_path):
    p, teacher, student, reports = trained
    layout = Layout(tmp_path / "work")
    for role in ("teacher", "student"):
        for name in ("G.pt", "D.pt"):
            state = torch.load(layout.model_dir(role) / name, weights_only=True)
            assert all(isinstance(v, torch.Tensor) for v in state.values())
        detector = read_json(layout.model_dir(role) / "detector.json")
        assert detector["role"] == role and detector["preprocess"]["before"] == 140
        assert set(detector["thresholds"]) == {"val_f1", "alarm_0.01", "alarm_0.05"}
        adaptive = detector["adaptive_thresholds"]  # robust z: val beats within their records
        assert set(adaptive) == set(detector["thresholds"])
        assert adaptive["alarm_0.05"] < adaptive["alarm_0.01"]
        assert layout.plot(f"{role}_history.csv").read_text().startswith("epoch,val_auc")
        assert layout.plot(f"{role}_roc.csv").read_text().startswith("fpr,tpr")
        assert layout.plot(f"{role}_scores.png").stat().st_size > 1000
    assert layout.plot("roc_pr.png").stat().st_size > 1000
    detail = read_json(layout.metrics("evaluate_detail"))
    headline = read_json(layout.metrics("evaluate"))
    for role in ("teacher", "student"):
        for key in ("test_auc", "test_ap", "test_f1", "oracle_f1", "recall_V", "threshold"):
            assert key in detail[role]
        assert headline[role] == {k: detail[role][k] for k in HEADLINE}
        # the score the detector replays, and every score of the table beside it
        assert detail[role]["score"] == "mse"
        table = {(r["score"], r["record_adaptive"]): r for r in detail[role]["scores"]}
        assert set(table) == {(n, a) for n in scores.SCORES for a in (False, True)}
        assert table["mse", False]["test_auc"] == pytest.approx(detail[role]["test_auc"])
    assert headline["champion"] in ("teacher", "student")


def test_mlflow_runs_hold_params_tags_epochs_and_artifacts(trained):
    p, teacher, student, _ = trained
    client = MlflowClient()
    for info, role in ((teacher, "teacher"), (student, "student")):
        run = client.get_run(info["run_id"])
        assert run.data.tags["role"] == role
        assert run.data.tags["fold"] == "0" and run.data.tags["seed"] == "0"
        assert run.data.params["train.epochs"] == "2"
        assert run.data.params["student.epochs"] == "1"
        val_auc = client.get_metric_history(info["run_id"], "epoch/val_auc")
        assert [m.step for m in val_auc] == ([1, 2] if role == "teacher" else [1])
        assert "best_val_auc" in run.data.metrics and "epoch/epoch_time_s" in run.data.metrics
        # the UI draws prefixed sections first: the curves lead, single values come after
        sections = {k.split("/")[0] for k in run.data.metrics if "/" in k}
        assert sections == {"epoch", "step"}
        single = [k for k in run.data.metrics if "/" not in k]
        assert all(len(client.get_metric_history(info["run_id"], k)) == 1 for k in single)
        assert len(client.get_metric_history(info["run_id"], "step/loss_g")) >= 2
        assert "test_auc" in run.data.metrics
        names = {a.path for a in client.list_artifacts(info["run_id"], "checkpoints")}
        assert {"checkpoints/G.pt", "checkpoints/D.pt"} <= names
        plots = {a.path for a in client.list_artifacts(info["run_id"], "plots")}
        assert f"plots/{role}_training.png" in plots
    assert client.get_run(student["run_id"]).data.tags["kd"] == "true"
    assert client.get_run(student["run_id"]).data.tags["teacher_run_id"] == teacher["run_id"]
    model = mlflow.pyfunc.load_model(student["model_uri"])
    x = np.linspace(-1, 1, 2 * 320, dtype=np.float32).reshape(2, 1, 320)
    with torch.no_grad():
        expected = load_generator(Path("models/student"), role="student")(torch.from_numpy(x))
    assert np.array_equal(model.predict(x), expected.numpy())


class Planted:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_the_registered_generator_loads_without_unpickling(trained, tmp_path):
    """The registry's generator is a pyfunc model from code: its weights a state dict loaded
    as plain tensors, no pickle (an mlflow.pytorch model is one: loading it can run code)."""
    p, *_ = trained
    uri = f"models:/{p.registry.model_name}@champion"
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl")))
    flavors = yaml.safe_load((local / "MLmodel").read_text())["flavors"]
    assert set(flavors) == {"python_function"} and "python_model" not in str(flavors)
    pickles = [f for f in local.rglob("*") if f.suffix in {".pkl", ".pickle", ".pth"}]
    assert not pickles and (local / "artifacts" / "G.pt").is_file()
    marker = tmp_path / "ran"
    torch.save({"weight": Planted(marker)}, local / "artifacts" / "G.pt")
    with pytest.raises(Exception, match="G.pt holds objects other than tensors"):
        mlflow.pyfunc.load_model(str(local))
    assert not marker.exists()


def test_registry_champion_and_decision(trained, tmp_path):
    p, teacher, student, reports = trained
    client = MlflowClient()
    name = p.registry.model_name
    versions = client.search_model_versions(f"name='{name}'")
    assert {v.tags["role"] for v in versions} == {"teacher", "student"}
    champion = client.get_model_version_by_alias(name, "champion")
    decision = read_json(tmp_path / "work" / "metrics" / "promotion.json")
    t, s = decision["teacher_val_auc"], decision["student_val_auc"]
    assert champion.tags["role"] == ("student" if s > t else "teacher")
    assert str(round(t, 4))[:5] in decision["reason"]
    assert client.get_registered_model(name).tags["champion_decision"] == decision["reason"]
    # the detector of the same training run is the detector champion
    detectors = client.search_model_versions(f"name='{p.registry.detector_name}'")
    assert {v.tags["role"] for v in detectors} == {"teacher", "student"}
    served = client.get_model_version_by_alias(p.registry.detector_name, "champion")
    assert served.tags["run_id"] == champion.tags["run_id"]
    assert int(served.version) == decision["detector_version"]
    # evaluating again registers nothing new
    evaluate(p)
    assert len(client.search_model_versions(f"name='{name}'")) == len(versions)


def test_student_is_promoted_only_when_it_beats_the_teacher(trained):
    p, teacher, student, _ = trained
    client = MlflowClient()
    name = p.registry.model_name
    versions = {v.tags["role"]: v for v in client.search_model_versions(f"name='{name}'")}
    key = versions["teacher"].tags["teacher_config"]
    client.set_model_version_tag(name, versions["teacher"].version, "val_auc", "0.99")
    client.set_model_version_tag(name, versions["student"].version, "val_auc", "0.98")
    assert promote(client, name, "val_auc", key)["champion_role"] == "teacher"
    client.set_model_version_tag(name, versions["student"].version, "val_auc", "0.995")
    decision = promote(client, name, "val_auc", key)
    assert decision["champion_role"] == "student" and "beats" in decision["reason"]
    assert (
        client.get_model_version_by_alias(name, "champion").version == versions["student"].version
    )


def test_compact_student_from_scratch(tiny_params, mlflow_store):
    prepare(tiny_params)
    train_model(tiny_params, "teacher")
    p = with_overrides(
        tiny_params,
        [
            "student.width_mult=0.5",
            "student.init_from_teacher=false",
            "student.fd=true",
            "student.fd_mode=hint",
        ],
    )
    info = train_model(p, "student")
    assert (
        info["width"] == 2 and info["g_params"] < read_json("models/teacher/fit.json")["g_params"]
    )


def test_prepared_data_of_other_params_is_refused(tiny_params, mlflow_store):
    prepare(tiny_params)
    p = with_overrides(tiny_params, ["data.fold=1"])
    with pytest.raises(ValueError, match="rerun `sibeatgan preprocess`"):
        train_model(p, "teacher")
