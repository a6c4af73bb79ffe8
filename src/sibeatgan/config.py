"""Typed view of params.yaml, with `key.sub=value` overrides and validation.

params.yaml is the one source of defaults: the dataclasses below hold the same values (a test
checks it), so a key missing from a file, or from params written by an earlier run, means what
params.yaml means."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sibeatgan.datasets import DEFAULT_DATASET, dataset
from sibeatgan.datasets import names as dataset_names

FS = 360  # the networks' sampling rate (Hz): every dataset's beats are resampled to it
BEAT_LENGTH = 320  # samples per beat window: what the networks take
QRS_DETECTORS = ("xqrs", "hamilton")  # confirm N beats (beats.detect_r_peaks)


class ConfigError(ValueError):
    """A parameter is missing, unknown or out of range."""


@dataclass
class DataCfg:
    fold: int = 0
    split: str = "intra"
    split_seed: int = 0  # draws the split; fixed while `seed` (init, batch order) varies
    channels: int = 1


@dataclass
class PreprocessCfg:
    dataset: str = DEFAULT_DATASET  # a name from sibeatgan.datasets
    records: list[int] = field(default_factory=lambda: list(dataset(DEFAULT_DATASET).records))
    band_hz: list[float] = field(default_factory=lambda: [3.0, 45.0])
    taps: int = 109
    before: int = 140
    after: int = 180
    qrs_tolerance: int = 10
    qrs_detector: str = "xqrs"


@dataclass
class ModelCfg:
    nz: int = 50
    width: int = 32


@dataclass
class TrainCfg:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    w_adv: float = 1.0
    d_reset_below: float = 5e-6
    selection: str = "val_auc"
    score: str = "mse"
    augment_copies: int = 0
    precision: str = "fp32"
    ema: float = 0.999
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    lr_min_ratio: float = 0.0


@dataclass
class StudentCfg:
    epochs: int = 4  # the student's own budget
    kd: bool = True
    fd: bool = False
    temperature: float = 4.0
    kd_weight: float = 1.0
    fd_weight: float = 1.0
    fd_mode: str = "attention"
    score_scaling: str = "standardize"
    width_mult: float = 1.0
    init_from_teacher: bool = True
    rank: bool = False
    rank_weight: float = 1.0
    mimic: bool = False
    mimic_weight: float = 1.0

    @property
    def terms(self) -> dict[str, bool]:
        """Which distillation terms are on."""
        return {"kd": self.kd, "fd": self.fd, "rank": self.rank, "mimic": self.mimic}


@dataclass
class EvaluateCfg:
    curve_points: int = 200


@dataclass
class RegistryCfg:
    model_name: str = "sibeatgan-generator"
    detector_name: str = "sibeatgan-detector"
    metric: str = "val_auc"


@dataclass
class RuntimeCfg:
    """How and where this machine runs the recipe: no stage declares these, no run's recipe
    holds them, and changing one reruns nothing."""

    threads: int = 0  # torch CPU threads; 0 = all cores
    workers: int = 2  # records preprocessed in parallel
    log_every: int = 50  # steps between logged step losses
    score_batch_size: int = 1024  # beats per scoring batch
    records_dir: str = "data/mitdb"  # the dataset's WFDB records
    beats_dir: str = "data/beats"
    prepared_dir: str = "data/prepared"


@dataclass
class Params:
    seed: int = 0
    data: DataCfg = field(default_factory=DataCfg)
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    student: StudentCfg = field(default_factory=StudentCfg)
    evaluate: EvaluateCfg = field(default_factory=EvaluateCfg)
    registry: RegistryCfg = field(default_factory=RegistryCfg)
    runtime: RuntimeCfg = field(default_factory=RuntimeCfg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, the form MLflow parameters take."""
        return flatten(self.to_dict())


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as `a.b -> value`."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def describe_changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """`a.b 1 -> 2, ...` for every key whose value differs between two nested dicts."""
    old, new = flatten(before), flatten(after)
    return ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in new.items() if old.get(k) != v)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check `value` against the type of the dataclass default; YAML ints pass as floats."""
    if isinstance(default, bool):
        text = str(value).lower()  # MLproject passes strings; `-S x=1` arrives as an int
        if not isinstance(value, float) and text in {"true", "false", "1", "0", "yes", "no"}:
            return text in {"true", "1", "yes"}
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int | float) and isinstance(value, str):
        value = _number(value, type(default), where)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return value
    return value


def _number(text: str, kind: type, where: str) -> int | float:
    """YAML reads `2e-4` as a string; accept it (and `3` for floats) as a number."""
    try:
        return kind(text) if kind is float else int(text)
    except ValueError:
        name = "a number" if kind is float else "an integer"
        raise ConfigError(f"{where} must be {name}, got {text!r}") from None


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    moved = sorted(f"{where}{k}" for k in unknown if f"{where}{k}" in MOVED_KNOBS)
    if moved:
        old = moved[0]
        why = "" if old.startswith("runtime.") else " (a runtime setting, not part of the recipe)"
        raise ConfigError(f"{old} is now {MOVED_KNOBS[old]}{why}; write it under that name")
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(sorted(f'{where}{k}' for k in unknown))}; "
            f"known in this section: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in raw.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name} must be a mapping")
            kwargs[name] = _build(type(default), value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, default, f"{where}{name}")
    return cls(**kwargs)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """`line L, column C: problem` from a YAML error (one line)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (['train', 'epochs'], 3); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    if not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        return key.strip().split("."), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML ({_yaml_problem(err)}); quote it "
            "or fix it, e.g. -S preprocess.records=[100,101]"
        ) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return raw


def _duplicates(items: list[Any]) -> list[Any]:
    """Items listed more than once, each named once, in order."""
    seen: list[Any] = []
    for i, x in enumerate(items):
        if x in items[:i] and x not in seen:
            seen.append(x)
    return seen


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def validate(p: Params) -> Params:
    """Every parameter checked up front, so a bad value stops the command before any work,
    with one line naming it and the accepted range."""
    pp, t = p.preprocess, p.train
    nyquist = FS / 2
    checks = [
        (p.seed >= 0, "seed must be >= 0"),
        (p.data.split_seed >= 0, "data.split_seed must be >= 0"),
        (p.data.fold in range(5), "data.fold must be 0-4"),
        (p.data.split in {"intra", "inter"}, "data.split must be intra or inter"),
        (
            p.data.channels in {1, 2},
            "data.channels must be 1 (the dataset's lead, e.g. MLII) or 2 (it and the next)",
        ),
        (
            pp.dataset in dataset_names(),
            f"preprocess.dataset must be one of {', '.join(dataset_names())}",
        ),
        (
            p.data.split != "inter"
            or pp.dataset not in dataset_names()
            or dataset(pp.dataset).inter_patient is not None,
            f"data.split=inter needs a dataset with an inter-patient split; {pp.dataset} has "
            "none (use data.split=intra)",
        ),
        (len(pp.records) > 0, "preprocess.records must name at least one record"),
        (
            all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in pp.records),
            "preprocess.records must be record numbers, e.g. [100, 101]",
        ),
        (
            not _duplicates(pp.records),
            f"preprocess.records lists {_duplicates(pp.records)} more than once; list each "
            "record once (a record twice would put the same beats in train and test)",
        ),
        (
            len(pp.band_hz) == 2
            and all(isinstance(f, int | float) and not isinstance(f, bool) for f in pp.band_hz)
            and 0 < pp.band_hz[0] < pp.band_hz[1] < nyquist,
            f"preprocess.band_hz must be [low, high] with 0 < low < high < {nyquist:g} Hz "
            f"(half the networks' {FS} Hz sampling rate), e.g. [3.0, 45.0]",
        ),
        (3 <= pp.taps <= 1001, "preprocess.taps must be 3-1001 (e.g. 109)"),
        (
            pp.before >= 0 and pp.after >= 1 and pp.before + pp.after == BEAT_LENGTH,
            f"preprocess.before and preprocess.after must be >= 0 and add up to {BEAT_LENGTH}, "
            "the networks' beat length (e.g. 140 and 180)",
        ),
        (0 <= pp.qrs_tolerance <= 100, "preprocess.qrs_tolerance must be 0-100 samples (e.g. 10)"),
        (p.runtime.workers >= 1, "runtime.workers must be >= 1"),
        (p.model.nz >= 1, "model.nz must be >= 1 (e.g. 50)"),
        (p.model.width >= 1, "model.width must be >= 1 (e.g. 32)"),
        (
            p.preprocess.qrs_detector in QRS_DETECTORS,
            f"preprocess.qrs_detector must be {' or '.join(QRS_DETECTORS)}",
        ),
        (p.train.epochs >= 1, "train.epochs must be at least 1"),
        (p.student.epochs >= 1, "student.epochs must be at least 1 (the student's epochs)"),
        (p.train.batch_size >= 2, "train.batch_size must be at least 2 (BatchNorm)"),
        (_finite(t.lr) and t.lr > 0, "train.lr must be a positive finite number (e.g. 1e-4)"),
        (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1)"),
        (
            _finite(t.w_adv, t.d_reset_below, t.lr_min_ratio),
            "train.w_adv, d_reset_below and lr_min_ratio must be finite",
        ),
        (t.d_reset_below >= 0, "train.d_reset_below must be >= 0 (0 = never reset D)"),
        (0 <= t.lr_min_ratio <= 1, "train.lr_min_ratio must be in [0, 1]"),
        (t.augment_copies >= 0, "train.augment_copies must be >= 0 (0 = off; BeatGAN_aug: 2)"),
        (p.runtime.log_every >= 1, "runtime.log_every must be >= 1 (steps between logged losses)"),
        (p.runtime.score_batch_size >= 1, "runtime.score_batch_size must be >= 1 (e.g. 1024)"),
        (p.runtime.threads >= 0, "runtime.threads must be >= 0 (0 = all cores)"),
        (
            isinstance(t.score, str) and t.score.isidentifier(),
            "train.score must name an anomaly score (e.g. mse; evaluation/scores.py lists them)",
        ),
        (
            p.train.selection in {"val_auc", "last", "val_recon"},
            "train.selection must be val_auc, last or val_recon",
        ),
        (
            p.train.precision in {"fp32", "bf16", "auto"},
            "train.precision must be fp32, bf16 or auto",
        ),
        (0 <= p.train.ema < 1, "train.ema must be in [0, 1) (0 = off; e.g. 0.999)"),
        (
            p.train.lr_schedule in {"constant", "cosine"},
            "train.lr_schedule must be constant or cosine",
        ),
        (p.train.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
        (p.train.w_adv >= 0, "train.w_adv must be >= 0 (1 = the published weight)"),
        (
            _finite(p.student.temperature) and p.student.temperature > 0,
            "student.temperature must be a positive finite number (e.g. 4)",
        ),
        (
            _finite(
                p.student.kd_weight,
                p.student.fd_weight,
                p.student.rank_weight,
                p.student.mimic_weight,
                p.student.width_mult,
            ),
            "student weights and width_mult must be finite numbers",
        ),
        (
            min(
                p.student.kd_weight,
                p.student.fd_weight,
                p.student.rank_weight,
                p.student.mimic_weight,
            )
            >= 0,
            "student.kd_weight, fd_weight, rank_weight and mimic_weight must be >= 0",
        ),
        (p.student.fd_mode in {"attention", "hint"}, "student.fd_mode must be attention or hint"),
        (
            p.student.score_scaling in {"standardize", "none"},
            "student.score_scaling must be standardize or none",
        ),
        (0 < p.student.width_mult <= 4, "student.width_mult must be in (0, 4]"),
        (
            not p.student.init_from_teacher or p.student.width_mult == 1.0,
            "student.init_from_teacher needs student.width_mult 1.0 (the shapes must match); "
            "add student.init_from_teacher=false for a student of another width",
        ),
        (
            p.registry.metric in {"val_auc", "val_ap", "test_auc", "test_ap"},
            "registry.metric must be val_auc, val_ap, test_auc or test_ap",
        ),
        (p.evaluate.curve_points >= 2, "evaluate.curve_points must be >= 2"),
        (bool(p.registry.model_name.strip()), "registry.model_name must not be empty"),
        (bool(p.registry.detector_name.strip()), "registry.detector_name must not be empty"),
        (
            p.registry.detector_name != p.registry.model_name,
            "registry.detector_name must differ from registry.model_name",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return p


class _DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping (raised while loading, turned into a ConfigError)."""

    def __init__(self, key: str, first: int, again: int):
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error: plain
    YAML loading keeps the last value silently (`records: [100]` then `records: [119]` reads
    119), and a section given twice silently loses the first."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_unique(node, "")
        return super().construct_document(node)


def _check_unique(node: yaml.Node, where: str) -> None:
    """Raise _DuplicateKey for the first key given twice in a mapping under `node`, named with
    its section (`preprocess.records`). Merge keys (`<<`) may repeat what they merge."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique(item, f"{where}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        name = f"{where}.{key_node.value}" if where else str(key_node.value)
        line = key_node.start_mark.line + 1
        if name in seen:
            kind = "section" if isinstance(value_node, yaml.MappingNode) else "key"
            raise _DuplicateKey(f"{kind} {name}", seen[name], line)
        seen[name] = line
        _check_unique(value_node, name)


def read_yaml(path: Path) -> Any:
    """A YAML file; a syntax error or a key given twice is one line naming the file, line and
    problem."""
    try:
        return yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # a SafeLoader: plain data
    except _DuplicateKey as err:
        raise ConfigError(
            f"{path}: {err.key} is given twice (lines {err.first} and {err.again}); keep one "
            "(YAML would silently use the last)"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {_yaml_problem(err)}; fix the YAML there") from None
    except OSError as err:
        raise ConfigError(f"{path} cannot be read ({err.strerror or err})") from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read params.yaml (missing keys take the defaults above), apply overrides, validate."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found; run from the repository root or pass --params")
    raw = read_yaml(path)
    if raw is None:  # an empty file (or only comments): not "every default" by accident
        raise ConfigError(
            f"{path} is empty (or holds only comments); write the parameters there (the "
            "repository's params.yaml lists every one)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    return validate(_build(Params, raw, ""))


def read_overrides(path: Path) -> list[str]:
    """The `overrides:` list of `key=value` entries in a YAML file; none when it is missing."""
    if not path.exists():
        return []
    raw = read_yaml(path) or {}
    entries = raw.get("overrides") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ConfigError(
            f"{path} must hold 'overrides:' followed by a list of section.key=value entries, "
            "e.g. '  - train.lr=1e-4'"
        )
    for entry in entries:
        parse_override(entry)  # a malformed entry fails here, naming itself
    return entries


# Knobs removed after their probes did not help (docs/research-log.md), with the value at which
# they did nothing: params written with one of them at that value trained as today's code does.
REMOVED_KNOBS: dict[str, dict[str, Any]] = {
    "train": {
        "w_rec": 1.0,
        "pretrain_g_steps": 0,
        "d_lr_ratio": 1.0,
        "d_real_label": 1.0,
        "d_noise": 0.0,
        "d_skip_below": 0.0,
    },
    "model": {"d_norm": "batch"},
}


# Knobs added after runs were written, with the value that trains as those runs did (where it
# differs from today's default): a run's params without the knob read as that value.
ADDED_KNOBS: dict[str, dict[str, Any]] = {
    "student": {"epochs": 0},  # 0 then meant train.epochs (see _student_epochs_explicit)
    "preprocess": {"dataset": DEFAULT_DATASET},
}


# Settings that moved out of the recipe into `runtime:` (old name -> new name): params written
# by earlier runs hold them under the old name.
MOVED_KNOBS: dict[str, str] = {
    "train.threads": "runtime.threads",
    "train.log_every": "runtime.log_every",
    "train.score_batch_size": "runtime.score_batch_size",
    "preprocess.workers": "runtime.workers",
    "data.mitdb_dir": "runtime.records_dir",
    "runtime.mitdb_dir": "runtime.records_dir",
    "data.prepared_dir": "runtime.prepared_dir",
}


def _with_moved(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with settings written under their old names moved to their new ones."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for old, new in MOVED_KNOBS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = out.get(old_section)
        if isinstance(section, dict) and old_key in section:
            value = section.pop(old_key)
            out.setdefault(new_section, {}).setdefault(new_key, value)
    return out


def _with_added(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with the knobs it predates set to the value that trained as it did."""
    out = dict(raw)
    for section, knobs in ADDED_KNOBS.items():
        if isinstance(raw.get(section), dict):
            out[section] = {**knobs, **raw[section]}
    return out


def _without_removed(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` less the removed knobs left at their no-op value (any other value stays, and is
    then refused as unknown: that run trained another way)."""
    out = dict(raw)
    for section, knobs in REMOVED_KNOBS.items():
        if isinstance(raw.get(section), dict):
            out[section] = {
                k: v for k, v in raw[section].items() if k not in knobs or v != knobs[k]
            }
    return out


def _student_epochs_explicit(raw: dict[str, Any]) -> dict[str, Any]:
    """`student.epochs: 0` once meant "train.epochs"; runs written then read as that number."""
    student, train = raw.get("student"), raw.get("train")
    if not isinstance(student, dict) or student.get("epochs") != 0:
        return raw
    epochs = train.get("epochs", TrainCfg.epochs) if isinstance(train, dict) else TrainCfg.epochs
    return {**raw, "student": {**student, "epochs": epochs}}


def params_from_dict(raw: dict[str, Any]) -> Params:
    """Params from a dict written by an earlier run; keys added since take the value that
    trains as the run did (ADDED_KNOBS, else the default), knobs removed since are dropped
    where they were off, settings moved to `runtime` are read there."""
    raw = _with_added(_without_removed(_with_moved(raw)))
    return validate(_build(Params, _student_epochs_explicit(raw), ""))


def role_train(p: Params, role: str) -> TrainCfg:
    """The training settings of `role`: the student's own epochs (student.epochs) on top of
    train.*."""
    epochs = p.student.epochs if role == "student" else p.train.epochs
    return dataclasses.replace(p.train, epochs=epochs)


def with_overrides(p: Params, overrides: list[str]) -> Params:
    """A copy of `p` with `key=value` overrides applied and validated."""
    return validate(_build(Params, apply_overrides(p.to_dict(), overrides), ""))


def short_hash(fields: Any) -> str:
    """Stable 12-hex-digit hash of JSON-able settings, to key cached results by config."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
