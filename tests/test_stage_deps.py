"""dvc.yaml says what each stage depends on, and it must be true: its code deps are exactly the
modules its entry module imports (directly or not), and its params are every key it reads."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, sibeatgan_imports

from sibeatgan import config

SRC = REPO / "src"
STAGES = ("preprocess", "split", "train_teacher", "train_student", "evaluate")


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The file of a `sibeatgan...` module or package; None for a name inside a module."""
    base = SRC / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """Every sibeatgan module a file imports, with the packages on the way (importing a.b.c
    runs a/__init__ and a/b/__init__)."""
    out = set()
    for name in sibeatgan_imports(path):
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {n for n in out if module_file(n) is not None}


def closure(module: str) -> set[str]:
    """The files a stage's entry module runs: itself and everything it imports, transitively,
    as paths relative to the repository."""
    todo, seen = [module, "sibeatgan"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_modules(module_file(name)))
    return {str(module_file(n).relative_to(REPO)) for n in seen}


def listed_code(stage: dict) -> set[str]:
    """The source files a dvc.yaml stage lists (a folder stands for every file in it)."""
    files = set()
    for dep in stage["deps"]:
        path = REPO / dep
        if dep.startswith("src/"):
            found = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            files |= {str(f.relative_to(REPO)) for f in found}
    return files


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_depends_on_exactly_the_code_it_runs(stage):
    spec = dvc_stages()[stage]
    assert spec["cmd"] == f"python -m sibeatgan.stages.{stage}"
    runs = closure(f"sibeatgan.stages.{stage}")
    listed = listed_code(spec)
    missing, extra = sorted(runs - listed), sorted(listed - runs)
    assert not missing and not extra, (
        f"dvc.yaml {stage}: add {missing}, remove {extra}; it runs:\n"
        + "\n".join(f"      - {f}" for f in sorted(runs))
    )
    assert "src/sibeatgan/cli.py" not in runs, "help texts must not rerun a stage"
    assert not any(f.startswith("src/sibeatgan/study/") for f in runs), "nor the study"


def test_no_stage_declares_a_runtime_setting():
    for name, spec in dvc_stages().items():
        for entry in spec.get("params", []):
            key = entry if isinstance(entry, str) else next(iter(entry))
            assert not key.startswith("runtime"), f"{name} declares {key}"


# --- the keys each stage reads, traced while it runs -------------------------------------


def declared(stage: dict) -> set[str]:
    """`section.key` for every parameter a stage declares (a section stands for its keys)."""
    keys = set()
    for entry in stage.get("params", []):
        section = getattr(config.Params(), entry.split(".")[0])
        if "." in entry or not dataclasses.is_dataclass(section):
            keys.add(entry)
        else:
            keys |= {f"{entry}.{f.name}" for f in dataclasses.fields(section)}
    return keys


class Trace:
    """`section.key` of every parameter read from followed params (and copies of them)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.ids: set[int] = set()

    def follow(self, p: config.Params) -> None:
        self.ids |= {id(p), *(id(getattr(p, f.name)) for f in dataclasses.fields(p))}


@pytest.fixture
def trace(monkeypatch) -> Trace:
    """Record every read of a parameter of the params given to a stage (`Trace.follow`) or of
    a copy made of them with `dataclasses.replace`. Reads by `dataclasses` itself (which copy
    or list whole sections) and of params read back from a model's files are not the stage
    reading a knob."""
    t = Trace()
    replace = dataclasses.replace

    def replace_followed(obj, /, **changes):
        out = replace(obj, **changes)
        if id(obj) in t.ids:
            t.ids.add(id(out))
        return out

    monkeypatch.setattr(dataclasses, "replace", replace_followed)
    sections = {f.type: f.name for f in dataclasses.fields(config.Params)}
    for cls in (getattr(config, n) for n in dir(config)):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        section = sections.get(cls.__name__)
        names = {f.name for f in dataclasses.fields(cls) if f.name not in sections.values()}

        def read(self, name, section=section, names=names):
            caller = sys._getframe(1).f_code.co_filename
            if name in names and id(self) in t.ids and not caller.endswith("dataclasses.py"):
                t.seen.add(f"{section}.{name}" if section else name)
            return object.__getattribute__(self, name)

        monkeypatch.setattr(cls, "__getattribute__", read)
    return t


def test_every_key_a_stage_reads_is_declared(tiny_params, mlflow_store, trace, tmp_path):
    from sibeatgan.stages import evaluate, preprocess, split, train_student, train_teacher

    runs = {
        "preprocess": lambda: preprocess.run(tiny_params, str(tmp_path / "p.json")),
        "split": lambda: split.run(tiny_params, str(tmp_path / "s.json")),
        "train_teacher": lambda: train_teacher.run(tiny_params),
        "train_student": lambda: train_student.run(tiny_params),
        "evaluate": lambda: evaluate.run(tiny_params),
    }
    stages = dvc_stages()
    trace.follow(tiny_params)
    for name, run in runs.items():
        trace.seen.clear()
        run()
        reads = {k for k in trace.seen if not k.startswith("runtime.")}
        undeclared = sorted(reads - declared(stages[name]))
        assert reads and not undeclared, f"dvc.yaml {name} reads but does not declare {undeclared}"
