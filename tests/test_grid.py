"""Planning and running a grid of study runs, several at once."""

import json
import shutil

import pytest
from mlflow import MlflowClient

from sibeatgan.config import ConfigError
from sibeatgan.study import grid
from sibeatgan.study.grid import Task, Where, plan, run_tasks, teachers_in_grid
from sibeatgan.study.runs import CONTROLS, STUDY_EXPERIMENT, VARIANTS, variant_params
from sibeatgan.study.variant_files import VARIANTS_DIR, load_variants

# every student states its terms and its start before its own overrides
STUDENT = (
    "student.kd=false",
    "student.fd=false",
    "student.rank=false",
    "student.mimic=false",
    "student.init_from_teacher=false",
)
# the study's variants, in order: role and overrides
STUDY_VARIANTS = {
    "teacher": ("teacher", ()),
    "teacher_aug": ("teacher", ("train.augment_copies=2",)),
    "student_plain": ("student", STUDENT),
    "kd": ("student", (*STUDENT, "student.kd=true")),
    "fd": ("student", (*STUDENT, "student.fd=true")),
    "kd_fd": ("student", (*STUDENT, "student.kd=true", "student.fd=true")),
    "init_teacher_kd": ("student", (*STUDENT, "student.kd=true", "student.init_from_teacher=true")),
    "init_teacher_plain": ("student", (*STUDENT, "student.init_from_teacher=true")),
    "rank": ("student", (*STUDENT, "student.rank=true")),
    "mimic": ("student", (*STUDENT, "student.mimic=true")),
    "compact_kd": ("student", (*STUDENT, "student.kd=true", "student.width_mult=0.5")),
    "compact_kd_hint": (
        "student",
        (
            *STUDENT,
            "student.kd=true",
            "student.fd=true",
            "student.fd_mode=hint",
            "student.width_mult=0.5",
        ),
    ),
    "compact_plain": ("student", (*STUDENT, "student.width_mult=0.5")),
}


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


def test_the_grid_runs_the_variant_files(tiny_params, tmp_path):
    assert grid.VARIANTS is VARIANTS and load_variants() == VARIANTS
    assert {name: (v.role, v.overrides) for name, v in VARIANTS.items()} == STUDY_VARIANTS
    assert list(VARIANTS) == list(STUDY_VARIANTS), "the order of `study list` and the report"
    assert CONTROLS == {
        "compact_kd": "compact_plain",
        "compact_kd_hint": "compact_plain",
        "init_teacher_kd": "init_teacher_plain",
    }
    assert [n for n, v in VARIANTS.items() if v.retraces] == ["student_plain"]
    on_top = [n for n, v in VARIANTS.items() if v.on_top_of_teacher]
    assert on_top == ["init_teacher_kd", "init_teacher_plain"]
    where = Where("intra", tmp_path / "work", tmp_path / "runs")
    tasks, _ = plan(tiny_params, tuple(VARIANTS), [0], where, force=False)
    assert [t.variant for t in tasks] == list(STUDY_VARIANTS), "teachers first"
    kd = variant_params(tiny_params, "compact_kd_hint", 0, 0, "intra").student
    assert (kd.kd, kd.fd, kd.fd_mode, kd.width_mult, kd.mimic) == (True, True, "hint", 0.5, False)


def test_adding_a_student_variant_is_adding_a_file(tmp_path):
    folder = shutil.copytree(VARIANTS_DIR, tmp_path / "variants")
    (folder / "14-kd_mimic.yaml").write_text(
        "role: student\nabout: KD and mimic\noverrides: [student.kd=true, student.mimic=true]\n"
        "control: mimic\n"
    )
    variants = load_variants(folder)
    assert list(variants) == [*STUDY_VARIANTS, "kd_mimic"]
    added = variants["kd_mimic"]
    assert added.overrides == (*STUDENT, "student.kd=true", "student.mimic=true")
    assert (added.role, added.about, added.control) == ("student", "KD and mimic", "mimic")


@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("14-x.yaml", "role: student\nabout: [x\n", "not valid YAML"),
        ("14-x.yaml", "- role\n", "expected a mapping"),
        ("14-x.yaml", "role: pupil\nabout: x\n", "role must be one of teacher, student"),
        ("14-x.yaml", "role: student\nabout: x\nkd: true\n", "unknown key(s) kd"),
        ("14-x.yaml", "role: student\n", "about must be a non-empty string"),
        ("14-x.yaml", "role: student\nabout: x\noverrides: student.kd=true\n", "a list of"),
        ("14-x.yaml", "role: student\nabout: x\noverrides: [kd]\n", "section.key=value"),
        ("14-x.yaml", "role: student\nabout: x\ncontrol: plain\n", "no variant named 'plain'"),
        ("14-kd.yaml", "role: student\nabout: x\n", "'kd' is also defined by 04-kd.yaml"),
        ("kd2.yaml", "role: student\nabout: x\n", "not a variant file name"),
    ],
)
def test_a_bad_variant_file_is_one_line_naming_it(tmp_path, name, text, problem):
    folder = shutil.copytree(VARIANTS_DIR, tmp_path / "variants")
    (folder / name).write_text(text)
    with pytest.raises(ConfigError) as err:
        load_variants(folder)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"variant file {folder / name}: ") and problem in message
