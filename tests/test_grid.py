"""Planning and running a grid of study runs, several at once."""

import json

from mlflow import MlflowClient

from sibeatgan.study.grid import Task, Where, plan, run_tasks, teachers_in_grid
from sibeatgan.study.runs import STUDY_EXPERIMENT


def test_a_seed_without_its_teacher_trains_it_before_its_students(tiny_params, tmp_path):
    where = Where("intra", tmp_path / "work", tmp_path / "runs")
    tasks, notes = plan(tiny_params, ("kd", "compact_kd"), [0, 1], where, force=False)
    assert tasks == [
        Task("teacher", 0), Task("kd", 0), Task("compact_kd", 0),
        Task("teacher", 1), Task("kd", 1), Task("compact_kd", 1),
    ]  # fmt: skip
    assert "teacher fold 0 seed 0: trained first, for its students" in notes
    tasks, _ = plan(tiny_params, ("kd", "teacher"), [0], where, force=False)
    assert tasks == [Task("teacher", 0), Task("kd", 0)], "a teacher asked for runs first"


def test_each_fold_gets_its_own_teacher_and_its_students_wait_for_that_one(tiny_params, tmp_path):
    where = Where("intra", tmp_path / "work", tmp_path / "runs")
    tasks, _ = plan(tiny_params, ("kd",), [0], where, force=False, folds=(0, 3))
    assert tasks == [
        Task("teacher", 0, 0), Task("kd", 0, 0), Task("teacher", 0, 3), Task("kd", 0, 3),
    ]  # fmt: skip
    assert str(tasks[-1]) == "kd fold 3 seed 0"
    # fold 3's student waits for fold 3's teacher, not fold 0's
    assert teachers_in_grid(tasks) == {
        Task("kd", 0, 0): Task("teacher", 0, 0), Task("kd", 0, 3): Task("teacher", 0, 3),
    }  # fmt: skip
    assert teachers_in_grid([Task("kd", 0, 3)]) == {}, "a teacher trained before: no wait"


def test_parallel_jobs_train_the_grid_and_students_wait_for_their_teacher(
    tiny_params, mlflow_store, tmp_path
):
    where = Where("intra", tmp_path / "work", tmp_path / "runs")
    tasks, _ = plan(tiny_params, ("kd",), [0, 1], where, force=False)
    lines = []
    failed = run_tasks(tiny_params, tasks, where, force=False, jobs=2, echo=lines.append)
    assert failed == []
    for seed in (0, 1):
        kd, teacher = (
            json.loads((where.runs_dir / v / f"intra-fold0-seed{seed}.json").read_text())
            for v in ("kd", "teacher")
        )
        assert kd["teacher_run_id"] == teacher["mlflow_run_id"]
        log = where.work / "logs" / f"intra-fold0-seed{seed}-kd.log"
        assert "student epoch 1:" in log.read_text(), "each job's output goes to its log"
    submitted = [line.split(":")[0] for line in lines if "submitted" in line]
    assert submitted == ["teacher fold 0 seed 0", "kd fold 0 seed 0", "teacher fold 0 seed 1",
                         "kd fold 0 seed 1"]  # fmt: skip
    ended = [line.split(":")[0] for line in lines if "test AUC" in line]
    for seed in (0, 1):
        assert ended.index(f"teacher fold 0 seed {seed}") < ended.index(f"kd fold 0 seed {seed}")
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(STUDY_EXPERIMENT).experiment_id])
    assert sorted(r.data.tags["variant"] for r in runs) == ["kd", "kd", "teacher", "teacher"]
    assert plan(tiny_params, ("kd",), [0, 1], where, force=False)[0] == [], "all done now"


def test_a_failed_teacher_skips_its_students_and_fails_the_grid(
    tiny_params, mlflow_store, tmp_path
):
    from sibeatgan.config import with_overrides

    where = Where("intra", tmp_path / "work", tmp_path / "runs")
    too_big = with_overrides(tiny_params, ["train.batch_size=100000"])
    tasks, _ = plan(too_big, ("kd",), [0], where, force=False)
    lines = []
    failed = run_tasks(too_big, tasks, where, force=False, jobs=2, echo=lines.append)
    assert failed == [Task("teacher", 0), Task("kd", 0)]
    assert any("teacher fold 0 seed 0: FAILED (ValueError: only" in line for line in lines)
    assert "kd fold 0 seed 0: skipped, its teacher failed" in lines
