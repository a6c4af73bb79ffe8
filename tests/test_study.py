"""The distillation study on synthetic records: run summaries and the report built from them."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient
from scipy import stats

from sibeatgan.cli import main
from sibeatgan.config import with_overrides
from sibeatgan.provenance import git_commit
from sibeatgan.study.figures import folds_figure
from sibeatgan.study.report import markdown, write_report
from sibeatgan.study.runs import (
    STUDY_EXPERIMENT,
    device_name,
    reproduced_runs,
    run_variant,
    summary_is_current,
    summary_path,
    unfinished_runs,
    variant_params,
)
from sibeatgan.study.stats import (
    build_results,
    current_and_stale,
    paired_difference,
    same_teacher,
)


@pytest.fixture
def tiny_params(tiny_params):
    """The tiny pipeline under the study's recipe: a student trains its teacher's epochs."""
    return with_overrides(tiny_params, [f"student.epochs={tiny_params.train.epochs}"])


def test_student_run_trains_its_teacher_first_then_reuses_it(tiny_params, mlflow_store, tmp_path):
    work, runs = tmp_path / "work", tmp_path / "runs"
    kd = run_variant(tiny_params, "kd", seed=0, work=work, runs_dir=runs)
    teacher = json.loads((runs / "teacher" / "intra-fold0-seed0.json").read_text())
    assert kd["teacher_run_id"] == teacher["mlflow_run_id"]
    assert json.loads((runs / "kd" / "intra-fold0-seed0.json").read_text()) == kd
    for s in (kd, teacher):
        history = s["history"]
        assert [r["epoch"] for r in history] == [1, 2]
        best = max(history, key=lambda r: r["val_auc"])["epoch"]
        assert s["selection"]["val_auc"]["epoch"] == best
        lowest = min(history, key=lambda r: r["val_recon_n"])["epoch"]
        assert s["selection"]["val_recon"]["epoch"] == lowest
        assert s["selection"]["last"]["epoch"] == 2
        picked = s["selection"]["val_recon"]
        assert picked["test_auc"] == history[lowest - 1]["test_auc"]
        assert 0 <= picked["test_auc"] <= 1 and s["g_macs_per_beat"] > 0
    assert kd["params"]["student"]["kd"] is True and kd["params"]["student"]["fd"] is False
    assert kd["device"] == device_name() and device_name().startswith(("cpu (", "NVIDIA"))

    plain = run_variant(tiny_params, "student_plain", seed=0, work=work, runs_dir=runs)
    assert plain["history"] == teacher["history"], "without distillation it retraces the teacher"

    compact = run_variant(tiny_params, "compact_kd", seed=0, work=work, runs_dir=runs)
    assert compact["teacher_run_id"] == teacher["mlflow_run_id"], "the teacher is reused"
    assert compact["width"] == 2 and compact["g_macs_per_beat"] < kd["g_macs_per_beat"] / 3
    client = MlflowClient()
    exp = client.get_experiment_by_name(STUDY_EXPERIMENT)
    found = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["variant"] for r in found) == [
        "compact_kd",
        "kd",
        "student_plain",
        "teacher",
    ]
    kd_run = client.get_run(kd["mlflow_run_id"])
    assert "epoch/test_auc" in kd_run.data.metrics, "per-epoch test figures are tracked"

    out = tmp_path / "reports"
    results, written = write_report(runs, out)
    assert [w.name for w in written] == ["results.json", "results.png", "curves.png", "results.md"]
    assert set(results["variants"]) == {"teacher", "kd", "student_plain", "compact_kd"}
    assert results["variants"]["student_plain"]["paired_vs_teacher"]["diff_auc_mean"] == 0
    pv = results["variants"]["kd"]["paired_vs_teacher"]
    assert pv["n_pairs"] == 1
    assert pv["diff_auc_mean"] == pytest.approx(
        kd["selection"]["val_auc"]["test_auc"] - teacher["selection"]["val_auc"]["test_auc"]
    )
    text = (out / "results.md").read_text()
    assert "| kd | 1 (0) |" in text and "compact_kd" in text
    assert f"| {device_name()} | `{kd['mlflow_run_id'][:8]}` |" in text, "each run says its machine"
    assert (out / "results.png").stat().st_size > 10_000
    assert (out / "curves.png").stat().st_size > 10_000 and "(curves.png)" in text
    assert not (out / "folds.png").exists() and "folds.png" not in text, "one fold only"


def test_a_teacher_trained_with_other_params_is_not_reused(tiny_params, mlflow_store, tmp_path):
    work, runs = tmp_path / "work", tmp_path / "runs"
    first = run_variant(tiny_params, "kd", seed=0, work=work, runs_dir=runs)
    other = run_variant(tiny_params, "kd", 0, 0, "intra", work, runs, ("train.lr=0.001",))
    assert other["teacher_run_id"] != first["teacher_run_id"], "the teacher is trained again"
    again = run_variant(tiny_params, "kd", 0, 0, "intra", work, runs, ("train.lr=0.001",))
    assert again["teacher_run_id"] == other["teacher_run_id"], "and reused while params match"

    fit = next(work.glob("*/teacher/**/fit.json"))
    written = json.loads(fit.read_text())
    del written["recipe"]["train"]["augment_copies"]  # as if the knob came after the teacher
    fit.write_text(json.dumps(written))
    later = run_variant(tiny_params, "kd", 0, 0, "intra", work, runs, ("train.lr=0.001",))
    assert later["teacher_run_id"] == other["teacher_run_id"], "a new knob at its default"


def test_a_summary_counts_as_done_only_for_the_same_recipe(tiny_params):
    def summary(variant: str, base) -> dict:
        p = variant_params(base, variant, 0, 0, "intra")
        return {"variant": variant, "seed": 0, "fold": 0, "split": "intra", "params": p.to_dict()}

    kd, teacher = summary("kd", tiny_params), summary("teacher", tiny_params)
    assert summary_is_current(kd, tiny_params) and summary_is_current(teacher, tiny_params)
    threads = with_overrides(tiny_params, ["runtime.threads=1"])
    assert summary_is_current(kd, threads), "threads are not part of the recipe"
    lr = with_overrides(tiny_params, ["train.lr=0.5"])
    assert not summary_is_current(kd, lr) and not summary_is_current(teacher, lr)
    weight = with_overrides(tiny_params, ["student.kd_weight=2"])
    assert not summary_is_current(kd, weight) and summary_is_current(teacher, weight)
    del kd["params"]["train"]["augment_copies"]  # a knob added after the run, at its default
    assert summary_is_current(kd, tiny_params)
    kd["params"]["train"]["augment_copies"] = 1
    assert not summary_is_current(kd, tiny_params)
    kd["params"]["train"]["augment_copies"] = 0
    kd["params"]["train"]["d_noise"] = 0.0  # a knob removed since, left off by the run
    assert summary_is_current(kd, tiny_params)
    kd["params"]["train"]["d_noise"] = 0.1  # ... or on: that run trained another way
    assert not summary_is_current(kd, tiny_params)
    kd["params"]["train"]["d_noise"] = 0.0
    kd["params"]["train"]["unknown_knob"] = 1
    assert not summary_is_current(kd, tiny_params)


def test_another_split_seed_gets_its_own_files(tmp_path):
    path = summary_path("kd", "intra", 0, 1, tmp_path, split_seed=3)
    assert path == tmp_path / "kd" / "intra-split3-fold0-seed1.json"
    assert summary_path("kd", "intra", 0, 1, tmp_path).name == "intra-fold0-seed1.json"


def _summary(variant: str, seed: int, auc: float, role: str = "student") -> dict:
    picked = {"epoch": 3, "test_auc": auc, "test_ap": auc - 0.05, "test_f1": 0.7}
    picked.update(recall_S=0.1, recall_V=0.5, recall_F=0.05, oracle_f1=0.8)
    return {
        "variant": variant,
        "role": role,
        "seed": seed,
        "split": "intra",
        "split_seed": 0,
        "fold": 0,
        "g_params": 10,
        "g_macs_per_beat": 100,
        "score_beats_per_s": 1000.0,
        "train_time_s": 5.0,
        "mlflow_run_id": f"run{variant}{seed}",
        "selection": {rule: dict(picked) for rule in ("val_auc", "val_recon", "last")},
        "params": {"train": {"lr_schedule": "constant", "warmup_steps": 0}},
        "history": [{"epoch": e, "val_auc": auc, "test_auc": auc} for e in (1, 2, 3)],
    }


def test_paired_difference_and_noise_rule():
    teacher = [0.930, 0.940, 0.935]
    kd = [0.934, 0.945, 0.938]  # +0.004, +0.005, +0.003: consistent
    fd = [0.940, 0.930, 0.936]  # +0.010, -0.010, +0.001: noise
    runs = [_summary("teacher", s, a, "teacher") for s, a in enumerate(teacher)]
    runs += [_summary("kd", s, a) for s, a in enumerate(kd)]
    runs += [_summary("fd", s, a) for s, a in enumerate(fd)]
    runs.append(_summary("compact_kd", 7, 0.9))  # a seed the teacher lacks: no pair
    v = build_results(runs)["variants"]
    assert v["teacher"]["n_seeds"] == 3
    assert v["teacher"]["test_auc_mean"] == pytest.approx(np.mean(teacher))
    assert v["teacher"]["test_auc_std"] == pytest.approx(np.std(teacher, ddof=1))
    assert v["teacher"]["val_auc"]["test_auc_values"] == teacher
    kd_pair = v["kd"]["paired_vs_teacher"]
    assert kd_pair["diff_auc_mean"] == pytest.approx(0.004)
    assert kd_pair["diff_auc_p"] == pytest.approx(stats.ttest_rel(kd, teacher).pvalue)
    assert kd_pair["diff_auc_beyond_noise"] is True
    assert kd_pair["diff_auc_values"] == pytest.approx([0.004, 0.005, 0.003])
    assert v["fd"]["paired_vs_teacher"]["diff_auc_beyond_noise"] is False
    assert v["compact_kd"]["paired_vs_teacher"]["n_pairs"] == 0
    two = paired_difference(
        {s: r for s, r in enumerate(runs[3:5])}, {s: r for s, r in enumerate(runs[:2])}, "last"
    )
    assert two["n_pairs"] == 2 and two["diff_auc_beyond_noise"] is False, "needs 3 seeds"


@pytest.mark.parametrize(
    "student, control",
    [("compact_kd", "compact_plain"), ("init_teacher_kd", "init_teacher_plain")],
)
def test_a_distilled_variant_is_also_paired_with_its_control(student, control):
    runs = [_summary("teacher", s, 0.93, "teacher") for s in range(3)]
    runs += [_summary(control, s, a) for s, a in enumerate([0.910, 0.915, 0.905])]
    runs += [_summary(student, s, a) for s, a in enumerate([0.912, 0.918, 0.909])]
    results = build_results(runs)
    pc = results["variants"][student]["paired_vs_control"]
    assert pc["control"] == control and pc["n_pairs"] == 3
    assert pc["diff_auc_values"] == pytest.approx([0.002, 0.003, 0.004])
    rows = [c for c in results["comparisons"] if c["against"] == control]
    assert [c["selection"] for c in rows] == ["val_auc", "val_recon"], "under both rules"
    for c in rows:
        assert (c["variant"], c["scope"], c["unit"], c["n"]) == (student, "intra-fold0", "seed", 3)
        assert (c["mean"], c["std"]) == pytest.approx((0.003, 0.001))
        p = stats.ttest_rel([0.912, 0.918, 0.909], [0.910, 0.915, 0.905]).pvalue
        assert c["p"] == pytest.approx(p) and c["verdict"] == "better"
    assert "+0.0030 ± 0.0010 (3 seeds, p " in markdown(results)
    assert results["variants"][student]["val_recon"]["paired_vs_control"]["n_pairs"] == 3
    assert "paired_vs_control" not in results["variants"][control]


def test_every_split_beside_the_headline_gets_its_comparisons():
    runs = [_summary("teacher", s, 0.93, "teacher") for s in range(3)]
    inter = [_summary("teacher", s, a, "teacher") for s, a in enumerate([0.80, 0.70, 0.78])]
    inter += [_summary("init_teacher_kd", s, a) for s, a in enumerate([0.81, 0.72, 0.79])]
    for r in inter:
        r["split"] = "inter"
    results = build_results(runs + inter)
    [c, unsupervised] = [c for c in results["comparisons"] if c["scope"] == "inter-fold0"]
    assert (c["variant"], c["against"], c["n"]) == ("init_teacher_kd", "teacher", 3)
    assert c["values"] == pytest.approx([0.01, 0.02, 0.01]) and c["mean"] == pytest.approx(0.04 / 3)
    assert c["p"] == pytest.approx(stats.ttest_rel([0.81, 0.72, 0.79], [0.80, 0.70, 0.78]).pvalue)
    assert c["verdict"] == "within noise" and c["on_top_of_teacher"] is True
    assert unsupervised["selection"] == "val_recon"
    [v] = [
        v
        for v in results["verdicts"]
        if v["scope"] == "inter-fold0" and v["selection"] == "val_auc"
    ]
    assert v["better"] == [] and v["best"] == "init_teacher_kd"
    assert not any(c["scope"] == "intra-fold0" for c in results["comparisons"]), "no student"


def test_students_better_than_the_teacher_are_named_per_selection_rule():
    runs = [_summary("teacher", s, 0.92, "teacher") for s in range(3)]
    for name, aucs in (("init_teacher_kd", [0.930, 0.932, 0.929]), ("kd", [0.925, 0.924, 0.9255])):
        runs += [_summary(name, s, a) for s, a in enumerate(aucs)]
    runs += [_summary("fd", s, a) for s, a in enumerate([0.93, 0.91, 0.92])]
    results = build_results(runs)
    verdicts = {v["selection"]: v for v in results["verdicts"]}
    assert set(verdicts) == {"val_auc", "val_recon"}
    for v in verdicts.values():
        assert v["better"] == ["kd", "init_teacher_kd"]
        assert v["best"] == "init_teacher_kd"
        assert v["best_diff_auc_mean"] == pytest.approx(0.031 / 3)
    fd = next(c for c in results["comparisons"] if c["variant"] == "fd")
    assert fd["verdict"] == "within noise" and fd["mean"] == pytest.approx(0.0)
    marked = [c["variant"] for c in results["comparisons"] if c["on_top_of_teacher"]]
    assert set(marked) == {"init_teacher_kd"}, "only a student started from the teacher"
    two = build_results([r for r in runs if r["seed"] < 2])["comparisons"]
    assert {c["verdict"] for c in two} == {"too few"}, "fewer than 3 seeds"


def test_a_variant_that_retraces_the_teacher_is_explained_not_listed_as_missing():
    runs = [_summary("teacher", s, 0.93, "teacher") for s in range(3)]
    text = markdown(build_results(runs))
    missing = next(line for line in text.splitlines() if line.startswith("Not run yet"))
    assert "kd" in missing and "student_plain" not in missing
    assert "student_plain (student without distillation) is not trained on its own" in text
    assert "student_plain" in markdown(build_results([]))  # no teacher: nothing stands for it


def test_stale_summaries_are_listed_not_averaged(tiny_params):
    teacher = [_summary("teacher", s, 0.93, "teacher") for s in (0, 1)]
    kd = [_summary("kd", s, 0.92) for s in (0, 1)]
    kd[0]["teacher_run_id"] = "an-older-teacher"
    kd[1]["teacher_run_id"] = teacher[1]["mlflow_run_id"]
    current, stale = current_and_stale(teacher + kd)
    assert [(s["variant"], s["seed"]) for s in stale] == [("kd", 0)]
    assert "trained again" in stale[0]["stale_because"] and len(current) == 3
    results = build_results(current, stale)
    assert results["variants"]["kd"]["n_seeds"] == 1
    assert "kd intra fold 0 seed 0: its teacher was trained again since" in markdown(results)

    for s in teacher:  # with params: a teacher of another recipe is stale, and so its students
        s["params"] = variant_params(tiny_params, "teacher", s["seed"], 0, "intra").to_dict()
    teacher[1]["params"]["train"]["lr"] = 0.5
    for s in kd:
        s["params"] = variant_params(tiny_params, "kd", s["seed"], 0, "intra").to_dict()
    current, stale = current_and_stale(teacher + kd, tiny_params)
    assert sorted((s["variant"], s["seed"]) for s in current) == [("kd", 1), ("teacher", 0)]
    assert sorted((s["variant"], s["seed"]) for s in stale) == [("kd", 0), ("teacher", 1)]


def test_the_study_recipe_in_the_runs_folder_decides_what_is_current(tiny_params, tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params.to_dict()))
    runs = tmp_path / "runs"
    (runs / "teacher").mkdir(parents=True)
    recipe = with_overrides(tiny_params, ["train.lr=0.5"])
    for seed, base in ((0, recipe), (1, tiny_params)):
        s = _summary("teacher", seed, 0.93, "teacher")
        s["params"] = variant_params(base, "teacher", seed, 0, "intra").to_dict()
        (runs / "teacher" / f"intra-fold0-seed{seed}.json").write_text(json.dumps(s))
    args = ["--runs", str(runs), "--params", str(params_file)]

    def done() -> str:
        result = CliRunner().invoke(main, ["study", "list", *args])
        assert result.exit_code == 0, result.output
        return result.output.split("\n")[3]

    assert "intra-fold0-seed0 (stale), intra-fold0-seed1" in done(), "no recipe: params.yaml"
    (runs / "recipe.yaml").write_text("overrides:\n  - train.lr=0.5\n")
    assert "intra-fold0-seed0, intra-fold0-seed1 (stale)" in done()
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["variants"]["teacher"]["n_seeds"] == 1
    assert [s["seed"] for s in results["stale"]] == [1]
    result = CliRunner().invoke(main, ["report", *args, "--out", str(out), "-S", "train.lr=0.25"])
    assert result.exit_code == 1 and "none of the 2 run summaries" in result.output, "-S comes last"

    (runs / "recipe.yaml").write_text("overrides: train.lr=0.5\n")
    result = CliRunner().invoke(main, ["report", *args])
    assert result.exit_code == 1 and "must hold 'overrides:' followed by a list" in result.output
    (runs / "recipe.yaml").write_text("overrides:\n  - train.lr\n")
    result = CliRunner().invoke(main, ["study", "list", *args])
    assert result.exit_code == 1 and "'train.lr' must look like section.key=value" in result.output


def test_cli_errors_name_the_problem(tmp_path):
    result = CliRunner().invoke(main, ["study", "run", "nonsense"])
    assert result.exit_code != 0 and "unknown variant(s) nonsense" in result.output
    assert "teacher" in result.output
    for folds in ("5", "0,7", ",", "one"):
        result = CliRunner().invoke(main, ["study", "run", "teacher", "--folds", folds])
        assert result.exit_code == 2, folds
        assert "folds are 0 to 4" in result.output or "list of integers" in result.output
    result = CliRunner().invoke(main, ["report", "--runs", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no run summaries" in result.output


def test_the_summary_commit_says_when_the_code_was_not_committed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "code.py").write_text("a = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    clean = git_commit()
    assert clean is not None and len(clean) == 40
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "run.json").write_text("{}\n")
    subprocess.run([*git, "add", "reports"], check=True)
    subprocess.run([*git, "commit", "-qm", "summary"], check=True)
    clean = git_commit()
    (tmp_path / "reports" / "run.json").write_text('{"auc": 0.9}\n')
    assert git_commit() == clean, "a changed summary is an output, not changed code"
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit() == clean + "-dirty"
    monkeypatch.chdir(tmp_path / "reports")  # the whole tree counts, not the working folder
    assert git_commit() == clean + "-dirty"
    monkeypatch.chdir(tmp_path.parent)  # a copy of the tree without .git, on another machine
    monkeypatch.setenv("SIBEATGAN_COMMIT", clean)
    assert git_commit() == clean


def _stopping_monitor(monkeypatch, at_epoch: int) -> None:
    """Make the next study run stop (as Ctrl-C would) while scoring epoch `at_epoch`."""
    import sibeatgan.study.runs as study

    real = study.epoch_monitor

    def epoch_monitor(p, data):
        inner, calls = real(p, data), []

        def monitor(g):
            calls.append(1)
            if len(calls) == at_epoch:
                raise KeyboardInterrupt
            return inner(g)

        return monitor

    monkeypatch.setattr(study, "epoch_monitor", epoch_monitor)


def _teacher_stopped_after_epoch_1(monkeypatch, p, work, runs) -> None:
    with monkeypatch.context() as m:
        _stopping_monitor(m, at_epoch=2)
        with pytest.raises(KeyboardInterrupt):
            run_variant(p, "teacher", seed=0, work=work, runs_dir=runs)


def test_a_stopped_study_run_resumes_in_its_mlflow_run(
    tiny_params, mlflow_store, tmp_path, monkeypatch
):
    p = with_overrides(tiny_params, ["train.epochs=3"])
    straight = run_variant(p, "teacher", seed=0, work=tmp_path / "w1", runs_dir=tmp_path / "r1")

    work, runs = tmp_path / "w2", tmp_path / "r2"
    _teacher_stopped_after_epoch_1(monkeypatch, p, work, runs)
    client = MlflowClient()
    (stopped,) = [r for r in client.search_runs(
        [client.get_experiment_by_name(STUDY_EXPERIMENT).experiment_id]
    ) if r.info.run_id != straight["mlflow_run_id"]]  # fmt: skip
    assert stopped.info.status == "KILLED"
    state = work / "intra-fold0-seed0" / "teacher" / "models" / "teacher" / "train_state.pt"
    assert state.exists() and not (runs / "teacher").exists()
    assert unfinished_runs(work, p) == {"teacher": ["intra-fold0-seed0 after epoch 1/3"]}
    other = with_overrides(p, ["train.lr=3e-4"])
    assert unfinished_runs(work, other)["teacher"][0].endswith("(other recipe)")

    resumed = run_variant(p, "teacher", seed=0, work=work, runs_dir=runs)
    assert resumed["mlflow_run_id"] == stopped.info.run_id, "the stopped run goes on"
    run = client.get_run(resumed["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["resumed_after_epoch"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_auc")] == [
        1,
        2,
        3,
    ]
    assert resumed["history"] == straight["history"], "as if it had never stopped"
    assert resumed["selection"] == straight["selection"]
    assert not state.exists(), "a finished run leaves no training state behind"
    assert unfinished_runs(work, p) == {}


def test_a_stopped_run_whose_mlflow_run_is_gone_resumes_in_a_new_one(
    tiny_params, mlflow_store, tmp_path, monkeypatch
):
    work, runs = tmp_path / "w", tmp_path / "r"
    p = with_overrides(tiny_params, ["train.epochs=3"])
    _teacher_stopped_after_epoch_1(monkeypatch, p, work, runs)
    client = MlflowClient()
    exp = client.get_experiment_by_name(STUDY_EXPERIMENT).experiment_id
    (stopped,) = client.search_runs([exp])
    client.delete_run(stopped.info.run_id)
    resumed = run_variant(p, "teacher", seed=0, work=work, runs_dir=runs)
    assert resumed["mlflow_run_id"] != stopped.info.run_id
    run_id = resumed["mlflow_run_id"]
    assert client.get_run(run_id).data.tags["resumed_after_epoch"] == "1"
    steps = [m.step for m in client.get_metric_history(run_id, "epoch/val_auc")]
    assert steps == [1, 2, 3], "the epochs before the stop are logged to the new run too"


def test_a_stopped_run_of_another_recipe_is_trained_afresh(
    tiny_params, mlflow_store, tmp_path, monkeypatch, capsys
):
    work, runs = tmp_path / "w", tmp_path / "r"
    p = with_overrides(tiny_params, ["train.epochs=3"])
    _teacher_stopped_after_epoch_1(monkeypatch, p, work, runs)
    other = with_overrides(p, ["train.lr=3e-4"])
    fresh = run_variant(other, "teacher", seed=0, work=work, runs_dir=runs)
    assert "not resuming" in capsys.readouterr().out
    run = MlflowClient().get_run(fresh["mlflow_run_id"])
    assert "resumed_after_epoch" not in run.data.tags
    assert [r["epoch"] for r in fresh["history"]] == [1, 2, 3]


def _run_with(history_aucs, schedule="constant"):
    history = [
        {"epoch": i + 1, "val_auc": v, "test_auc": t} for i, (v, t) in enumerate(history_aucs)
    ]
    return {"params": {"train": {"lr_schedule": schedule, "warmup_steps": 0}}, "history": history}


def test_budget_curve_scores_the_val_pick_among_the_first_k_epochs():
    from sibeatgan.study.stats import budget_curve

    # seed 0 peaks on val at epoch 2 of the first 4, and at epoch 6 overall
    s0 = _run_with([(0.1, 0.5), (0.9, 0.7), (0.2, 0.9), (0.3, 0.9), (0.4, 0.1), (0.95, 0.8)])
    s1 = _run_with([(0.5, 0.6)] * 6)
    curve = budget_curve({0: s0, 1: s1})
    assert [c["epochs"] for c in curve] == [4, 6]
    assert curve[0]["test_auc_values"] == [0.7, 0.6]
    assert curve[1]["test_auc_values"] == [0.8, 0.6]
    assert curve[1]["test_auc_mean"] == pytest.approx(0.7)
    aug = _run_with([(0.5, 0.6)] * 4)
    aug["params"]["train"]["augment_copies"] = 2
    assert [c["budget_epochs"] for c in budget_curve({0: aug})] == [12]
    cosine = _run_with([(0.5, 0.6)] * 6, schedule="cosine")
    assert budget_curve({0: s0, 1: cosine}) is None, "a cosine run's prefix is no shorter run"


@pytest.mark.parametrize("epochs,aug_epochs", [(12, 4), (30, 10), (2, 1)])
def test_the_augmented_teacher_gets_the_same_number_of_steps(tiny_params, epochs, aug_epochs):
    base = with_overrides(tiny_params, [f"train.epochs={epochs}"])
    plain = variant_params(base, "teacher", 0, 0, "intra").train
    aug = variant_params(base, "teacher_aug", 0, 0, "intra").train
    assert (plain.epochs, aug.epochs, aug.augment_copies) == (epochs, aug_epochs, 2)
    if epochs % 3 == 0:
        assert aug.epochs * (1 + aug.augment_copies) == plain.epochs


def test_variants_on_several_folds_are_summarised_across_folds(tmp_path):
    runs = [_summary("teacher", s, a, "teacher") for s, a in enumerate([0.92, 0.93, 0.91])]
    runs += [_summary("kd", s, a) for s, a in enumerate([0.93, 0.93, 0.92])]
    # compact_kd beats its control by about 0.01 on every fold: beyond fold-to-fold noise
    runs += [_summary("compact_kd", 0, 0.91), _summary("compact_plain", 0, 0.90)]
    for fold, (t_auc, kd_auc, c_kd, c_plain) in {
        1: (0.94, 0.945, 0.932, 0.920),
        2: (0.95, 0.95, 0.941, 0.930),
    }.items():
        for variant, auc in (("teacher", t_auc), ("kd", kd_auc)):
            runs.append(_summary(variant, 0, auc, "teacher" if variant == "teacher" else "student"))
            runs[-1]["fold"] = fold
        for variant, auc in (("compact_kd", c_kd), ("compact_plain", c_plain)):
            runs.append(_summary(variant, 0, auc))
            runs[-1]["fold"] = fold
    inter = _summary("teacher", 0, 0.8, "teacher")
    inter["split"] = "inter"  # one fold only: nothing to summarise across folds
    results = build_results([*runs, inter])
    across = results["across_folds"]
    assert set(across) == {"intra"}
    t = across["intra"]["teacher"]
    assert t["folds"] == [0, 1, 2] and t["seeds"] == [0], "only the seeds every fold has"
    assert t["test_auc_values"] == pytest.approx([0.92, 0.94, 0.95])
    assert t["test_auc_std"] == pytest.approx(np.std([0.92, 0.94, 0.95], ddof=1))
    vs = across["intra"]["kd"]["vs_teacher"]
    assert vs["diff_auc_values"] == pytest.approx([0.01, 0.005, 0.0])
    assert vs["diff_auc_p"] == pytest.approx(stats.ttest_1samp([0.01, 0.005, 0.0], 0).pvalue)
    assert not vs["diff_auc_beyond_noise"] and "vs_control" not in across["intra"]["kd"]
    control = across["intra"]["compact_kd"]["vs_control"]
    assert control["control"] == "compact_plain" and control["folds"] == [0, 1, 2]
    assert control["diff_auc_values"] == pytest.approx([0.01, 0.012, 0.011])
    assert control["diff_auc_beyond_noise"]
    folds = {
        (c["variant"], c["against"]): c
        for c in results["comparisons"]
        if c["scope"] == "intra across folds"
    }
    kd = folds["kd", "teacher"]
    assert (kd["unit"], kd["pairs"], kd["verdict"]) == ("fold", [0, 1, 2], "within noise")
    assert kd["mean"] == pytest.approx(0.005)
    assert folds["compact_kd", "compact_plain"]["verdict"] == "better"
    compact = folds["compact_kd", "teacher"]
    assert compact["values"] == pytest.approx([-0.01, -0.008, -0.009])
    assert (compact["mean"], compact["std"]) == pytest.approx((-0.009, 0.001))
    [v] = [v for v in results["verdicts"] if v["scope"] == "intra across folds"]
    assert v["better"] == [] and v["best"] == "kd" and v["unit"] == "fold"
    text = markdown(results)
    assert "## intra: across folds" in text and "![across folds](folds.png)" in text
    assert "Published, 5 folds: BeatGAN 0.9447 ± 0.0053" in text
    figure = folds_figure(across, ("BeatGAN", 0.9447, 0.0053), tmp_path / "folds.png")
    assert figure.stat().st_size > 10_000
    assert build_results(runs[:6])["across_folds"] == {}, "fold 0 alone"


def test_the_committed_report_is_what_the_generator_writes_from_the_committed_summaries(
    tmp_path,
):
    """reports/results.md and results.json must come from `sibeatgan report` over the committed
    summaries: a summary added (or a generator changed) without rerunning it fails here."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "reports"
    result = CliRunner().invoke(
        main,
        [
            "report",
            "--runs",
            str(root / "reports/runs"),
            "--out",
            str(out),
            "--params",
            str(root / "params.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert str(out / "folds.png") in result.output, "it lists the files it wrote"
    for name in ("results.md", "results.json"):
        fresh = (out / name).read_text().replace(str(root / "reports/runs"), "reports/runs")
        assert fresh == (root / "reports" / name).read_text(), f"rerun `sibeatgan report`: {name}"


def test_a_teacher_trained_again_to_the_same_weights_keeps_its_students(
    tiny_params, mlflow_store, tmp_path
):
    work, runs = tmp_path / "work", tmp_path / "runs"
    kd = run_variant(tiny_params, "kd", seed=0, work=work, runs_dir=runs)
    first = json.loads((runs / "teacher" / "intra-fold0-seed0.json").read_text())
    assert kd["teacher_g_sha256"] == first["g_sha256"] != kd["g_sha256"]
    again = run_variant(tiny_params, "teacher", 0, work=work, runs_dir=runs, resume=False)
    assert again["mlflow_run_id"] != first["mlflow_run_id"], "a new MLflow run"
    assert again["g_sha256"] == first["g_sha256"], "CPU training repeats bit for bit"
    assert again["reproduces"] == [first["mlflow_run_id"]]
    del kd["teacher_g_sha256"]  # as in summaries written before digests: paired by run id
    assert current_and_stale([again, kd])[1] == []


def test_only_the_same_figures_and_weights_count_as_a_reproduction(tiny_params):
    def teacher(run: str, auc: float, digest: str) -> dict:
        s = _summary("teacher", 0, auc, "teacher") | {"mlflow_run_id": run, "g_sha256": digest}
        s["params"] = variant_params(tiny_params, "teacher", 0, 0, "intra").to_dict()
        return s

    old = teacher("old", 0.93, "aa") | {"reproduces": ["older"]}
    assert reproduced_runs(old, teacher("new", 0.93, "aa"), tiny_params) == ["old", "older"]
    assert reproduced_runs(old, teacher("new", 0.92, "aa"), tiny_params) == []
    assert reproduced_runs(old, teacher("new", 0.93, "bb"), tiny_params) == []
    assert reproduced_runs(None, teacher("new", 0.93, "aa"), tiny_params) == []
    other_recipe = teacher("new", 0.93, "aa")
    other_recipe["params"]["train"]["lr"] = 0.5
    assert reproduced_runs(old, other_recipe, tiny_params) == []

    new = teacher("new", 0.93, "aa") | {"reproduces": ["old", "older"]}
    student = _summary("kd", 0, 0.92) | {"teacher_run_id": "older"}
    assert same_teacher(student, new), "paired through the runs it reproduced"
    assert same_teacher(student | {"teacher_run_id": "x", "teacher_g_sha256": "aa"}, new)
    assert not same_teacher(student | {"teacher_run_id": "x", "teacher_g_sha256": "bb"}, new)
