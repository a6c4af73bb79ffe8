"""Running a grid of study runs: which (variant, fold, seed) runs still need training, in which
order, and several at once when asked (`sibeatgan study run --jobs N`, or `--ray ADDRESS` on a
Ray cluster).

A student needs the trained teacher of its fold and seed, so a seed whose teacher is missing (or
was trained with another recipe) gets a teacher run first and its students depend on it; no two
runs ever train the same teacher. Run in parallel, each run is a Ray task in a fresh worker
process with its share of the CPU threads (and of a GPU where the cluster has one) and its own
log file; a stopped run resumes like any stopped run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sibeatgan.config import Params, with_overrides
from sibeatgan.io import read_json
from sibeatgan.study.runs import (
    VARIANTS,
    run_name,
    run_variant,
    summary_is_current,
    summary_path,
    teacher_is_current,
)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Task:
    variant: str
    seed: int
    fold: int = 0

    def __str__(self) -> str:
        return f"{self.variant} fold {self.fold} seed {self.seed}"


@dataclass(frozen=True)
class Where:
    """The split and folders every task of one grid shares."""

    split: str
    work: Path
    runs_dir: Path


def plan(
    base: Params,
    variants: tuple[str, ...],
    seeds: list[int],
    where: Where,
    force: bool,
    folds: tuple[int, ...] = (0,),
) -> tuple[list[Task], list[str]]:
    """The runs to train, fold by fold and seed by seed (a missing teacher before its seed's
    students), and a line for each run skipped or retrained."""
    tasks, notes = [], []
    split_seed = base.data.split_seed
    for fold in folds:
        for seed in seeds:
            todo = []
            for variant in variants:
                task = Task(variant, seed, fold)
                path = summary_path(variant, where.split, fold, seed, where.runs_dir, split_seed)
                if path.exists() and not force:
                    if summary_is_current(read_json(path), base):
                        notes.append(f"{task}: summary exists ({path}), skipped")
                        continue
                    notes.append(
                        f"{task}: {path} was trained with other params; "
                        "training again with these (it will be replaced)"
                    )
                todo.append(task)
            teacher = Task("teacher", seed, fold)
            needs_teacher = any(VARIANTS[t.variant].role == "student" for t in todo)
            if (
                needs_teacher
                and teacher not in todo
                and not teacher_is_current(base, seed, fold, where.split, where.work)
            ):
                todo.append(teacher)
                notes.append(f"{teacher}: trained first, for its students")
            todo.sort(key=lambda t: VARIANTS[t.variant].role != "teacher")  # teachers first
            tasks += todo
    return tasks, notes


def run_tasks(
    base: Params,
    tasks: list[Task],
    where: Where,
    force: bool,
    jobs: int,
    echo: Echo,
    ray_address: str | None = None,
    gpus_per_run: float | None = None,
) -> list[Task]:
    """Train `tasks`: one after another in this process, or as Ray tasks when `jobs` > 1 (a
    local Ray cluster of that many runs at once) or `ray_address` names a cluster. Returns the
    tasks that failed (each reported as it fails; the others go on)."""
    if jobs <= 1 and ray_address is None:
        for task in tasks:
            _report(echo, task, where, _train(base, task, where, force))
        return []
    if importlib.util.find_spec("ray") is None:
        raise ValueError(
            "--jobs above 1 and --ray run the grid on Ray, which is not installed: pip install "
            "-e '.[scale]' (or run one run at a time without --jobs)"
        )
    from sibeatgan.study import cluster

    # each run its share of a local cluster's cores; one thread a run on a cluster unless -S
    # runtime.threads says otherwise
    local_share = max(1, (os.cpu_count() or 1) // jobs) if ray_address is None else 1
    threads = base.runtime.threads or local_share
    base = with_overrides(base, [f"runtime.threads={threads}"])
    logs = where.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(tasks), desc=f"study runs on Ray ({jobs} at once)", unit="run")

    def say(line: str) -> None:
        with tqdm.external_write_mode():  # lift the bar while the line is written
            echo(line)

    def log_of(task: Task) -> Path:
        name = run_name(where.split, task.fold, task.seed, base.data.split_seed)
        return logs / f"{name}-{task.variant}.log"

    try:
        with cluster.connected(ray_address, cpus=jobs * threads):
            outcomes = cluster.run_graph(
                tasks,
                teachers_in_grid(tasks),
                lambda task: (_train_logged, (base, task, where, force, log_of(task))),
                cpus=threads,
                gpus=gpus_per_run,
                submitted=lambda task: say(f"{task}: submitted (log: {log_of(task)})"),
            )
            failed = []
            for task, outcome in outcomes:
                bar.update()
                if isinstance(outcome, cluster.Skipped):
                    failed.append(task)
                    say(f"{task}: skipped, its teacher failed")
                elif isinstance(outcome, BaseException):  # one failed run does not stop others
                    failed.append(task)
                    say(f"{task}: FAILED ({type(outcome).__name__}: {outcome}); see its log")
                else:
                    _report(say, task, where, outcome)
    finally:
        bar.close()
    return failed


def teachers_in_grid(tasks: list[Task]) -> dict[Task, Task]:
    """Each student task whose teacher (same fold and seed) is a task of this grid, mapped to
    that teacher: the student starts only once it has finished."""
    teachers = {(t.fold, t.seed): t for t in tasks if VARIANTS[t.variant].role == "teacher"}
    return {
        t: teachers[t.fold, t.seed]
        for t in tasks
        if VARIANTS[t.variant].role == "student" and (t.fold, t.seed) in teachers
    }


def _train(base: Params, task: Task, where: Where, force: bool) -> dict:
    return run_variant(
        base,
        task.variant,
        task.seed,
        task.fold,
        where.split,
        where.work,
        where.runs_dir,
        resume=not force,
    )


def _train_logged(base: Params, task: Task, where: Where, force: bool, log: Path) -> dict:
    """`_train` in a worker process, its output (progress bars included) in `log`."""
    with open(log, "a") as out:
        os.dup2(out.fileno(), sys.stdout.fileno())
        os.dup2(out.fileno(), sys.stderr.fileno())
        return _train(base, task, where, force)


def _report(echo: Echo, task: Task, where: Where, summary: dict) -> None:
    sel = summary["selection"]
    path = summary_path(
        task.variant, where.split, task.fold, task.seed, where.runs_dir, summary["split_seed"]
    )
    echo(
        f"{task}: test AUC {sel['val_auc']['test_auc']:.4f} (val-AUC selection, epoch "
        f"{sel['val_auc']['epoch']}), {sel['val_recon']['test_auc']:.4f} (unsupervised, "
        f"epoch {sel['val_recon']['epoch']}) -> {path}"
    )
