"""The study's variants, one YAML file each in variants/: `NN-name.yaml`, where NN orders the
variants (the order of `study list` and of the report's tables) and name is the variant's name.

A file holds `role` (teacher or student), `about` (one line for the tables), `overrides` (the
params it changes, as `-S` takes them), and optionally `retraces` (a variant it repeats step
for step by construction) and `control` (the run without its distillation term: same width,
seed and batch order, so their paired difference is what the term itself does). A student's
overrides start with those of student-baseline.yaml. Adding a variant is adding a file.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from sibeatgan.config import ConfigError, apply_overrides, read_yaml

VARIANTS_DIR = Path(__file__).with_name("variants")
BASELINE_FILE = "student-baseline.yaml"
FILE_NAME = re.compile(r"(\d+)-([a-z][a-z0-9_]*)\.yaml")
ROLES = ("teacher", "student")
KEYS = ("role", "about", "overrides", "retraces", "control")


@dataclasses.dataclass(frozen=True)
class Variant:
    role: str  # teacher | student
    overrides: tuple[str, ...]
    about: str
    # a variant that, by construction, repeats another's training step for step
    retraces: str | None = None
    # the variant without this one's distillation term
    control: str | None = None

    @property
    def on_top_of_teacher(self) -> bool:
        """Starts from the trained teacher's weights: its budget comes on top of the teacher's.
        Read the way params read the overrides (YAML values, the last one wins)."""
        student = apply_overrides({}, list(self.overrides)).get("student", {})
        return bool(student.get("init_from_teacher", False))


def _problem(path: Path, problem: str) -> ConfigError:
    """The one-line error for a bad variant file."""
    return ConfigError(f"variant file {path}: {problem}")


def _read_mapping(path: Path, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The file's YAML mapping, with only `allowed` keys."""
    try:
        raw = read_yaml(path)
    except ConfigError as err:  # "<path>: <problem>", from the reader params.yaml uses
        problem = str(err).removeprefix(f"{path}: ")
        raise _problem(path, f"not valid YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise _problem(path, f"expected a mapping with keys {', '.join(allowed)}")
    unknown = [str(k) for k in raw if k not in allowed]
    if unknown:
        raise _problem(path, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    return raw


def _overrides(path: Path, raw: dict[str, Any]) -> tuple[str, ...]:
    """The file's `overrides`: a list of `section.key=value` strings (none when absent)."""
    items = raw.get("overrides") or []
    if not isinstance(items, list) or not all(isinstance(o, str) for o in items):
        raise _problem(path, "overrides must be a list of section.key=value strings")
    try:
        apply_overrides({}, list(items))
    except ConfigError as err:
        raise _problem(path, str(err)) from None
    return tuple(items)


def _text(path: Path, raw: dict[str, Any], key: str, required: bool) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _problem(path, f"{key} must be a non-empty string")
    return value


def read_variant(path: Path, baseline: tuple[str, ...] = ()) -> Variant:
    """One variant file; a student's overrides are `baseline`, then its own."""
    raw = _read_mapping(path, KEYS)
    role = raw.get("role")
    if role not in ROLES:
        raise _problem(path, f"role must be one of {', '.join(ROLES)}, not {role!r}")
    own = _overrides(path, raw)
    return Variant(
        role=role,
        overrides=(*baseline, *own) if role == "student" else own,
        about=_text(path, raw, "about", required=True),
        retraces=_text(path, raw, "retraces", required=False),
        control=_text(path, raw, "control", required=False),
    )


def _check_references(variants: dict[str, Variant], files: dict[str, Path]) -> None:
    """Every `retraces` and `control` names a variant."""
    for name, v in variants.items():
        for key in ("retraces", "control"):
            other = getattr(v, key)
            if other is not None and other not in variants:
                raise _problem(files[name], f"{key}: no variant named {other!r}")


def variant_files(folder: Path) -> list[tuple[int, str, Path]]:
    """(order, name, path) of each variant file in `folder`, in order; any other YAML file there
    is an error."""
    found = []
    for path in sorted(folder.glob("*.y*ml")):
        if path.name == BASELINE_FILE:
            continue
        match = FILE_NAME.fullmatch(path.name)
        if match is None:
            raise _problem(path, "not a variant file name: name it NN-name.yaml, e.g. 14-kd2.yaml")
        found.append((int(match[1]), match[2], path))
    return sorted(found)


def load_variants(folder: Path = VARIANTS_DIR) -> dict[str, Variant]:
    """The variants of `folder`, by name, in file order."""
    baseline_file = folder / BASELINE_FILE
    baseline: tuple[str, ...] = ()
    if baseline_file.exists():
        baseline = _overrides(baseline_file, _read_mapping(baseline_file, ("overrides",)))
    variants: dict[str, Variant] = {}
    files: dict[str, Path] = {}
    for _, name, path in variant_files(folder):
        if name in variants:
            raise _problem(path, f"variant {name!r} is also defined by {files[name].name}")
        variants[name], files[name] = read_variant(path, baseline), path
    _check_references(variants, files)
    if "teacher" not in variants or variants["teacher"].role != "teacher":
        raise ConfigError(f"variant folder {folder}: no teacher variant (NN-teacher.yaml)")
    return variants


def controls(variants: dict[str, Variant]) -> dict[str, str]:
    """Each variant with a control, mapped to that control."""
    return {name: v.control for name, v in variants.items() if v.control is not None}
