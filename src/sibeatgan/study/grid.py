"""Running a grid of study runs: which (variant, fold, seed) runs still need training, in which
order, and several at once when asked (`sibeatgan study run --jobs N`).

A student needs the trained teacher of its fold and seed, so a seed whose teacher is missing (or
was trained with another recipe) gets a teacher run first and its students wait for it; no two
jobs ever train the same teacher. Each parallel job is a separate process with its share of
the CPU threads and its own log file; a stopped job resumes like any stopped run.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
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
    base: Params, tasks: list[Task], where: Where, force: bool, jobs: int, echo: Echo
) -> list[Task]:
    """Train `tasks`; with `jobs` > 1 that many at once, each in its own process. Returns the
    tasks that failed (each reported as it fails; the others go on)."""
    if jobs <= 1:
        for task in tasks:
            _report(echo, task, where, _train(base, task, where, force))
        return []
    if base.train.threads == 0:  # share the cores instead of each job taking all of them
        threads = max(1, (os.cpu_count() or 1) // jobs)
        base = with_overrides(base, [f"train.threads={threads}"])
    logs = where.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    waiting, failed = list(tasks), []
    running: dict[Future, Task] = {}
    bar = tqdm(total=len(tasks), desc=f"study runs ({jobs} at once)", unit="run")

    def say(line: str) -> None:
        with tqdm.external_write_mode():  # lift the bar while the line is written
            echo(line)

    context = multiprocessing.get_context("spawn")  # a fresh interpreter per job, no forked torch
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        try:
            while waiting or running:
                for task in _ready(waiting, running.values(), failed):
                    waiting.remove(task)
                    name = run_name(where.split, task.fold, task.seed, base.data.split_seed)
                    log = logs / f"{name}-{task.variant}.log"
                    running[pool.submit(_train_logged, base, task, where, force, log)] = task
                    say(f"{task}: started (log: {log})")
                if not running:  # the rest wait for teachers that failed
                    for task in waiting:
                        say(f"{task}: skipped, its teacher failed")
                    failed += waiting
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    task = running.pop(future)
                    bar.update()
                    try:
                        _report(say, task, where, future.result())
                    except Exception as err:  # one failed run does not stop the others
                        failed.append(task)
                        say(f"{task}: FAILED ({type(err).__name__}: {err}); see its log")
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)
            raise
        finally:
            bar.close()
    return failed


def _ready(waiting: list[Task], running, failed: list[Task]) -> list[Task]:
    """The waiting tasks that may start now: teachers, and students whose fold and seed have no
    teacher waiting, running or failed."""
    busy = {(t.fold, t.seed) for t in [*waiting, *running, *failed] if t.variant == "teacher"}
    return [
        t for t in waiting if VARIANTS[t.variant].role == "teacher" or (t.fold, t.seed) not in busy
    ]


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
    """`_train` in a job process, its output (progress bars included) in `log`."""
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
