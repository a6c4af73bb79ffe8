"""Typed view of params.yaml, with `key.sub=value` overrides and validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NON_PACED_RECORDS = [
    100, 101, 103, 105, 106, 108, 109, 111, 112, 113, 114, 115, 116, 117, 118, 119, 121, 122,
    123, 124, 200, 201, 202, 203, 205, 207, 208, 209, 210, 212, 213, 214, 215, 219, 220, 221,
    222, 223, 228, 230, 231, 232, 233, 234,
]  # fmt: skip
QRS_DETECTORS = ("xqrs", "hamilton")  # confirm N beats (beats.detect_r_peaks)


class ConfigError(ValueError):
    """A parameter is missing, unknown or out of range."""


@dataclass
class DataCfg:
    mitdb_dir: str = "data/mitdb"
    prepared_dir: str = "data/prepared"
    fold: int = 0
    split: str = "intra"
    split_seed: int = 0  # draws the split; fixed while `seed` (init, batch order) varies
    channels: int = 1


@dataclass
class PreprocessCfg:
    records: list[int] = field(default_factory=lambda: list(NON_PACED_RECORDS))
    band_hz: list[float] = field(default_factory=lambda: [3.0, 45.0])
    taps: int = 109
    before: int = 140
    after: int = 180
    qrs_tolerance: int = 10
    qrs_detector: str = "xqrs"
    workers: int = 2


@dataclass
class ModelCfg:
    nz: int = 50
    width: int = 32


@dataclass
class TrainCfg:
    epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    w_adv: float = 1.0
    w_rec: float = 1.0
    pretrain_g_steps: int = 0
    d_reset_below: float = 5e-6
    d_lr_ratio: float = 1.0
    d_real_label: float = 1.0
    d_noise: float = 0.0
    d_skip_below: float = 0.0
    selection: str = "val_auc"
    augment_copies: int = 0
    log_every: int = 50
    score_batch_size: int = 1024
    threads: int = 0
    precision: str = "fp32"
    ema: float = 0.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    lr_min_ratio: float = 0.0


@dataclass
class StudentCfg:
    kd: bool = True
    fd: bool = False
    temperature: float = 4.0
    kd_weight: float = 1.0
    fd_weight: float = 1.0
    fd_mode: str = "attention"
    score_scaling: str = "standardize"
    width_mult: float = 1.0
    init_from_teacher: bool = False
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
    metric: str = "val_auc"


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, the form MLflow parameters take."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out


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


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (['train', 'epochs'], 3); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


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


def validate(p: Params) -> Params:
    checks = [
        (p.data.fold in range(5), "data.fold must be 0-4"),
        (p.data.split in {"intra", "inter"}, "data.split must be intra or inter"),
        (p.data.channels in {1, 2}, "data.channels must be 1 (MLII) or 2 (both leads)"),
        (len(p.preprocess.records) > 0, "preprocess.records must name at least one record"),
        (len(p.preprocess.band_hz) == 2, "preprocess.band_hz must be [low, high]"),
        (
            p.preprocess.qrs_detector in QRS_DETECTORS,
            f"preprocess.qrs_detector must be {' or '.join(QRS_DETECTORS)}",
        ),
        (p.train.epochs >= 1, "train.epochs must be at least 1"),
        (p.train.batch_size >= 2, "train.batch_size must be at least 2 (BatchNorm)"),
        (p.train.lr > 0, "train.lr must be positive"),
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
        (
            min(p.train.w_rec, p.train.w_adv) >= 0,
            "train.w_rec and train.w_adv must be >= 0 (1 = the published weights)",
        ),
        (p.train.pretrain_g_steps >= 0, "train.pretrain_g_steps must be >= 0"),
        (p.train.d_lr_ratio > 0, "train.d_lr_ratio must be positive (1 = D learns at G's lr)"),
        (
            0.5 < p.train.d_real_label <= 1,
            "train.d_real_label must be in (0.5, 1] (1 = no smoothing; e.g. 0.9)",
        ),
        (p.train.d_noise >= 0, "train.d_noise must be >= 0 (0 = off; e.g. 0.1)"),
        (
            0 <= p.train.d_skip_below < 2,
            "train.d_skip_below must be in [0, 2) (0 = D always updates; e.g. 0.3)",
        ),
        (p.student.temperature > 0, "student.temperature must be positive"),
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
            "student.init_from_teacher needs student.width_mult 1.0 (the shapes must match)",
        ),
        (
            p.registry.metric in {"val_auc", "val_ap", "test_auc", "test_ap"},
            "registry.metric must be val_auc, val_ap, test_auc or test_ap",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return p


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read params.yaml (missing keys take the defaults above), apply overrides, validate."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found; run from the repository root or pass --params")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    return validate(_build(Params, raw, ""))


def read_overrides(path: Path) -> list[str]:
    """The `overrides:` list of `key=value` entries in a YAML file; none when it is missing."""
    if not path.exists():
        return []
    raw = yaml.safe_load(path.read_text()) or {}
    entries = raw.get("overrides") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ConfigError(
            f"{path} must hold 'overrides:' followed by a list of section.key=value entries, "
            "e.g. '  - train.lr=1e-4'"
        )
    for entry in entries:
        parse_override(entry)  # a malformed entry fails here, naming itself
    return entries


def params_from_dict(raw: dict[str, Any]) -> Params:
    """Params from a dict written by an earlier run; keys added since take their defaults."""
    return validate(_build(Params, raw, ""))


def with_overrides(p: Params, overrides: list[str]) -> Params:
    """A copy of `p` with `key=value` overrides applied and validated."""
    return validate(_build(Params, apply_overrides(p.to_dict(), overrides), ""))


def short_hash(fields: Any) -> str:
    """Stable 12-hex-digit hash of JSON-able settings, to key cached results by config."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
