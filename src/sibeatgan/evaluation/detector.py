"""A trained generator as a beat detector: its weights (G.pt) beside `detector.json`, which holds
what detection needs besides them: the network's shape, the preprocessing it was trained on and
the flagging thresholds chosen on val when it was trained. `sibeatgan detect` and the served
MLflow model both load a detector from these two files, never from a pickle, and check both
first: detector.json against SCHEMA, the weights against the network it describes (names,
shapes, finite values) before that network is built."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sibeatgan.config import BEAT_LENGTH, FS, QRS_DETECTORS
from sibeatgan.data.beats import BeatSpec
from sibeatgan.data.rhythm import BeatContext
from sibeatgan.datasets import DEFAULT_DATASET, Dataset, dataset, names
from sibeatgan.evaluation import scores
from sibeatgan.evaluation.metrics import best_f1_threshold
from sibeatgan.io import load_state_dict, read_json
from sibeatgan.models import Discriminator, Generator

DETECTOR_FILE = "detector.json"
WEIGHTS_FILE = "G.pt"
D_WEIGHTS_FILE = "D.pt"  # shipped with a detector whose score reads D's features
DETECTOR_KIND = "sibeatgan-beat-detector"
# false-alarm rates on val N beats that get a threshold of their own (`detect --alarm-rate`)
ALARM_RATES = (0.01, 0.05)
# the same thresholds on the record-adaptive scale (robust z among a record's beats; absent
# from detectors trained before it existed)
ADAPTIVE_THRESHOLDS = "adaptive_thresholds"
# the false-alarm rate whose threshold record-adaptive flagging uses unless told otherwise
ADAPTIVE_DEFAULT_RATE = 0.01
# the same for a score that already compares a beat with its record (mse_z_rhythm), flagged
# per beat: on the 22 DS2 records an inter-patient model's alarm_0.05 flagged 3.3% and 0.5% of
# the N beats of records 200 and 233 with V recall 0.98 and 0.99; alarm_0.01 missed most V
CONTEXT_DEFAULT_RATE = 0.05
# fewer beats than this give a record's median and MAD too loosely for record-adaptive scoring
MIN_ADAPTIVE_BEATS = 30


# the largest networks detector.json may describe (the committed models: nz 50, width 32)
MAX_NZ = 1024
MAX_WIDTH = 1024
# a weights file larger than its network's tensors at 8 bytes a value plus this is refused
# before it is read
WEIGHTS_FILE_SLACK = 1 << 20


class DetectorError(ValueError):
    """A model that cannot be used as a detector; the message names the fix."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Rule:
    """What one key of detector.json accepts: a check, and the accepted values in words."""

    ok: Callable[[Any], bool]
    accepts: str


def _ints(lo: int, hi: int, why: str = "") -> Rule:
    return Rule(lambda v: _is_int(v) and lo <= v <= hi, f"an integer in {lo}-{hi}{why}")


def _band(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) == 2
        and all(_is_number(f) for f in v)
        and 0 < v[0] < v[1] < FS / 2
    )


# detector.json's schema, one place: the top-level keys detection reads (other keys are
# provenance: role, run id, data key), the preprocess settings `detect` replays (the ranges of
# config.validate) and the thresholds (finite; >= 0 unless the score is signed)
SCHEMA: dict[str, Rule] = {
    "nc": Rule(lambda v: _is_int(v) and v in (1, 2), "1 or 2 (leads)"),
    "nz": _ints(1, MAX_NZ),
    "width": _ints(1, MAX_WIDTH),
    "fs": Rule(lambda v: _is_int(v) and v == FS, f"{FS} (Hz: detect resamples records to it)"),
    "beat_length": Rule(
        lambda v: _is_int(v) and v == BEAT_LENGTH, f"{BEAT_LENGTH} (the networks' beat length)"
    ),
    "preprocess": Rule(lambda v: isinstance(v, dict), "an object of the preprocess settings"),
    "thresholds": Rule(
        lambda v: isinstance(v, dict) and "val_f1" in v, "an object of named thresholds with val_f1"
    ),
}
PREPROCESS_SCHEMA: dict[str, Rule] = {
    "band_hz": Rule(_band, f"[low, high] Hz with 0 < low < high < {FS / 2:g}"),
    "taps": _ints(3, 1001),
    "before": _ints(0, BEAT_LENGTH - 1, f", with before + after = {BEAT_LENGTH}"),
    "after": _ints(1, BEAT_LENGTH, f", with before + after = {BEAT_LENGTH}"),
    "qrs_tolerance": _ints(0, 100, " (samples)"),
    "qrs_detector": Rule(
        lambda v: isinstance(v, str) and v in QRS_DETECTORS, " or ".join(QRS_DETECTORS)
    ),
}
THRESHOLD = Rule(_is_number, "a finite number >= 0 (a mean squared error)")
# record-adaptive thresholds are robust z-scores within a record: any finite number
Z_THRESHOLD = Rule(_is_number, "a finite number (a robust z-score)")
# a signed score's (scores.Score.signed: a mix of logs) per-beat thresholds: any finite number
SIGNED_THRESHOLD = Rule(_is_number, "a finite number (the score is a mix of logs)")
FIX = "the file was damaged or edited: restore it or train the model again"
WEIGHTS_FIX = "the weights were damaged or edited: restore G.pt or train the model again"
OTHER_MODEL = "the two files are of different models: keep G.pt and detector.json of one training"


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse(where: Path, key: str, value: Any, accepts: str, missing: bool = False) -> None:
    what = "is missing" if missing else f"is {_shown(value)}"
    raise DetectorError(f"{where}: {key} {what}; it must be {accepts} ({FIX})")


def _check_keys(where: Path, table: dict[str, Rule], values: dict, prefix: str = "") -> None:
    for key, rule in table.items():
        if key not in values:
            _refuse(where, prefix + key, None, rule.accepts, missing=True)
        if not rule.ok(values[key]):
            _refuse(where, prefix + key, values[key], rule.accepts)


def validate_meta(meta: Any, where: Path) -> dict:
    """detector.json checked against SCHEMA: one DetectorError line naming the file, the key
    and what it accepts for the first violation."""
    if not isinstance(meta, dict) or meta.get("kind") != DETECTOR_KIND:
        kind = _shown(meta.get("kind")) if isinstance(meta, dict) else "not a JSON object"
        raise DetectorError(
            f"{where} does not describe a {DETECTOR_KIND} (kind: {kind}); use a model folder "
            "trained by this version (models/student) or restore the file"
        )
    _check_keys(where, SCHEMA, meta)
    if meta.get("dataset", DEFAULT_DATASET) not in names():
        _refuse(where, "dataset", meta["dataset"], f"a known dataset ({', '.join(names())})")
    pp = meta["preprocess"]
    _check_keys(where, PREPROCESS_SCHEMA, pp, "preprocess.")
    extra = sorted(set(pp) - set(PREPROCESS_SCHEMA))
    if extra:
        raise DetectorError(
            f"{where}: preprocess.{extra[0]} is not a setting this version replays; it knows "
            f"{', '.join(PREPROCESS_SCHEMA)} (a model of a newer version? use that version)"
        )
    if pp["before"] + pp["after"] != meta["beat_length"]:
        total = pp["before"] + pp["after"]
        _refuse(where, "preprocess.before + after", total, f"{BEAT_LENGTH} (beat_length)")
    _check_score(where, meta.get("score", DEFAULT_SCORE))
    signed = scores.SCORES[meta_score(meta)[0]].signed  # a mix of logs: thresholds below 0 too
    rule = SIGNED_THRESHOLD if signed else THRESHOLD
    for name, value in meta["thresholds"].items():
        if not rule.ok(value) or (value < 0 and not signed):
            _refuse(where, f"thresholds.{name}", value, rule.accepts)
    adaptive = meta.get(ADAPTIVE_THRESHOLDS, {"val_f1": 0.0})
    if not isinstance(adaptive, dict) or "val_f1" not in adaptive:
        _refuse(where, ADAPTIVE_THRESHOLDS, adaptive, "an object of named thresholds with val_f1")
    for name, value in adaptive.items():
        if not Z_THRESHOLD.ok(value):
            _refuse(where, f"{ADAPTIVE_THRESHOLDS}.{name}", value, Z_THRESHOLD.accepts)
    return meta


# a detector.json without "score" (older models) scores as these were trained: mse
DEFAULT_SCORE = {"name": "mse", "params": {}}


def _check_score(where: Path, value: Any) -> None:
    """detector.json's score: a name in the scores table and the parameters it was fitted
    with on val (finite)."""
    if not isinstance(value, dict) or not isinstance(value.get("params"), dict):
        _refuse(where, "score", value, 'an object {"name": ..., "params": {...}}')
    try:
        scores.check_params(value.get("name"), value["params"])
    except scores.ScoreError as err:
        raise DetectorError(f"{where}: {err} ({FIX})") from None


def meta_score(meta: dict) -> tuple[str, dict[str, float]]:
    """The anomaly score a detector replays, and its parameters."""
    entry = meta.get("score", DEFAULT_SCORE)
    return entry["name"], dict(entry["params"])


def alarm_key(rate: float) -> str:
    return f"alarm_{rate:g}"


def thresholds_on_val(val_classes: np.ndarray, val_scores: np.ndarray) -> dict[str, float]:
    """Flagging thresholds (flag when score >= threshold): `val_f1`, the one maximising F1 on
    val (the threshold `evaluate` reports figures at), and one per ALARM_RATES entry that
    flags that fraction of val N beats."""
    labels = (val_classes > 0).astype(int)
    out = {"val_f1": best_f1_threshold(labels, val_scores)[0]}
    normal = val_scores[val_classes == 0]
    for rate in ALARM_RATES:
        out[alarm_key(rate)] = float(np.quantile(normal, 1.0 - rate))
    return out


def adaptive_thresholds_on_val(
    val_classes: np.ndarray, val_scores: np.ndarray, val_records: np.ndarray
) -> dict[str, float]:
    """`thresholds_on_val` on the record-adaptive scale: each val beat's robust z among the
    val beats of its own record. In these units a threshold means the same for every patient."""
    return thresholds_on_val(val_classes, scores.record_adaptive(val_scores, val_records))


def detector_meta(
    nc: int,
    nz: int,
    width: int,
    preprocess: dict,
    thresholds: dict,
    score: dict | None = None,
    adaptive_thresholds: dict | None = None,
    **about: Any,
) -> dict:
    """The contents of detector.json; `preprocess` the preprocess section (its dataset names
    the class map and lead detect reads records with); `score` is {"name", "params"} (default:
    mse); `adaptive_thresholds` the record-adaptive ones; `about` adds provenance (role, run
    id, data key)."""
    extra = {ADAPTIVE_THRESHOLDS: adaptive_thresholds} if adaptive_thresholds else {}
    return {
        "kind": DETECTOR_KIND,
        "dataset": preprocess.get("dataset", DEFAULT_DATASET),
        "nc": nc,
        "nz": nz,
        "width": width,
        "fs": FS,
        "beat_length": preprocess["before"] + preprocess["after"],
        "preprocess": dataclasses.asdict(BeatSpec.from_dict(preprocess)),  # what detect replays
        "thresholds": thresholds,
        "score": score or DEFAULT_SCORE,
        **extra,
        **about,
    }


@dataclass
class Detector:
    g: Generator
    meta: dict
    d: Discriminator | None = None  # loaded only for a score that reads D's features

    @property
    def dataset(self) -> Dataset:
        """The dataset it was trained on (detector files without one: MIT-BIH)."""
        return dataset(self.meta.get("dataset", DEFAULT_DATASET))

    @property
    def score_name(self) -> str:
        return meta_score(self.meta)[0]

    @property
    def beat_length(self) -> int:
        return int(self.meta["beat_length"])

    @property
    def nc(self) -> int:
        return int(self.meta["nc"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One beat as the model takes it: (length,) for one lead, (leads, length) for more."""
        return (self.beat_length,) if self.nc == 1 else (self.nc, self.beat_length)

    @property
    def adaptive(self) -> bool:
        """Whether this detector holds record-adaptive thresholds."""
        return ADAPTIVE_THRESHOLDS in self.meta

    def threshold(
        self, alarm_rate: float | None = None, adaptive: bool = False
    ) -> tuple[str, float]:
        """The named threshold: the one for a false-alarm rate on val N, or by default val
        F1's (per beat), CONTEXT_DEFAULT_RATE's (per beat, for a score that compares a beat
        with its record) or ADAPTIVE_DEFAULT_RATE's (record-adaptive: F1 on val depends on
        val's share of abnormal beats, which a new record does not share; on DS2 records an
        inter-patient model's val-F1 threshold flagged 66% of N beats, the 1% one 2.7%)."""
        if alarm_rate is None and adaptive:
            alarm_rate = ADAPTIVE_DEFAULT_RATE
        elif alarm_rate is None and self.reads_record:  # val F1 is no guide on new patients
            alarm_rate = CONTEXT_DEFAULT_RATE
        key = "val_f1" if alarm_rate is None else alarm_key(alarm_rate)
        if adaptive and not self.adaptive:
            raise DetectorError(
                "this detector has no record-adaptive thresholds (it was trained before they "
                "existed); train it again, or score per beat (detect --scoring beat)"
            )
        known = self.meta[ADAPTIVE_THRESHOLDS if adaptive else "thresholds"]
        if key not in known:
            rates = ", ".join(f"{r:g}" for r in ALARM_RATES)
            raise DetectorError(f"no threshold for alarm rate {alarm_rate:g}; use one of {rates}")
        return key, float(known[key])

    @staticmethod
    def record_adaptive(found: np.ndarray, what: str = "the record") -> np.ndarray:
        """Each beat's robust z-score among `found`, the scores of one record's beats."""
        if len(found) < MIN_ADAPTIVE_BEATS:
            raise DetectorError(
                f"{what} has {len(found)} beats; record-adaptive scoring needs at least "
                f"{MIN_ADAPTIVE_BEATS} of one record (their median and spread are its "
                "reference): send more beats, or score per beat"
            )
        return scores.robust_z(found).astype(np.float32)

    def beats(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Beats as G takes them, [n, nc, length] float32, from [n, length] or [n, nc, length]."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        nc = self.nc
        if x.ndim == 2 and nc == 1:
            x = x[:, None, :]
        if x.ndim != 3 or x.shape[1] != nc or x.shape[2] != self.beat_length:
            want = " x ".join(["n", *map(str, self.input_shape)])
            raise DetectorError(
                f"beats of shape {tuple(x.shape)}; this detector takes {want} float32 (beats "
                "windowed and normalised to [-1, 1] as `preprocess` makes them)"
            )
        return x

    @property
    def reads_context(self) -> bool:
        """Whether its score reads each beat's context in its record (`run`'s context)."""
        return scores.SCORES[self.score_name].reads_context

    @property
    def reads_record(self) -> bool:
        """Whether its score compares a beat with the other beats of its record, so that it
        needs MIN_ADAPTIVE_BEATS of one record."""
        return scores.SCORES[self.score_name].reads_record

    def run(
        self,
        x: np.ndarray | torch.Tensor,
        batch_size: int = 1024,
        context: BeatContext | None = None,
    ):
        """Score and per-tick error heat [n, length] of every beat (`context`: the beats'
        records and timing, which a score of beat context needs). Beats that are not finite
        are refused (they would score NaN, which no threshold flags), and so are scores that
        are not finite (weights that overflow on these beats)."""
        beats = self.beats(x)
        bad = int((~torch.isfinite(beats)).flatten(1).any(1).sum())
        if bad:
            raise DetectorError(
                f"{bad:,} of {len(beats):,} beats hold NaN or infinite values (a gap in the "
                "record?); beats must be finite, normalised to [-1, 1]"
            )
        name, params = meta_score(self.meta)
        try:
            found, heat = scores.beat_scores(
                name, scores.Models(self.g, self.d), beats, params, batch_size, context
            )
        except scores.ScoreError as err:
            raise DetectorError(str(err)) from None
        if not np.isfinite(found).all():
            raise DetectorError(
                f"the model's scores of {int((~np.isfinite(found)).sum()):,} of {len(found):,} "
                "beats are not finite (weights that overflow on them); train the model again"
            )
        return found, heat


def load_detector(weights: Path, meta_file: Path, d_weights: Path | None = None) -> Detector:
    """A detector from its files, each checked before use: detector.json against SCHEMA, the
    weights (loaded as plain tensors: nothing runs) against the shapes of the network it
    describes, before that network is built at its real size, and finite. D's weights
    (`d_weights`, default D.pt beside G.pt) are read only when the score needs them."""
    meta = validate_meta(read_json(meta_file), meta_file)
    nc, nz, width = meta["nc"], meta["nz"], meta["width"]
    g = _checked_network(Generator, (nc, nz, width), weights, meta_file)
    d = None
    if scores.score_def(meta_score(meta)[0]).needs_d:
        d = load_discriminator(d_weights or weights.parent / D_WEIGHTS_FILE, meta, meta_file)
    detector = Detector(g.eval(), meta, d)
    _check_plain_beat(detector, weights)
    return detector


def load_discriminator(d_weights: Path, meta: dict, meta_file: Path) -> Discriminator:
    """D of the network `meta` describes, from `d_weights` checked as G's are (eval mode)."""
    if not d_weights.is_file():
        raise DetectorError(
            f"{meta_file}: the score {meta_score(meta)[0]!r} reads D's features and "
            f"{d_weights} is missing; keep {D_WEIGHTS_FILE} beside {WEIGHTS_FILE}"
        )
    d = _checked_network(Discriminator, (meta["nc"], meta["width"]), d_weights, meta_file)
    return d.eval()


def _checked_network(kind: type, shape: tuple[int, ...], weights: Path, meta_file: Path):
    """`kind(*shape)` with the weights of `weights`, checked first (size, names, shapes, finite)."""
    names = ("nc", "nz", "width") if kind is Generator else ("nc", "width")
    what = "network" if kind is Generator else "discriminator"
    sizes = ", ".join(f"{k} {v}" for k, v in zip(names, shape, strict=True))
    described = f"the {what} {meta_file.name} describes ({sizes})"
    expected = expected_state(kind, *shape)
    _check_size(weights, expected, described)
    state = load_state_dict(weights)
    check_weights(state, expected, weights, described)
    net = kind(*shape)
    net.load_state_dict(state)
    return net


def expected_state(kind: type, *shape: int) -> dict[str, torch.Tensor]:
    """Names, shapes and dtypes of a network's parameters and buffers, on the meta device:
    nothing is allocated, whatever the width."""
    with torch.device("meta"):
        return kind(*shape).state_dict()


def _check_size(weights: Path, expected: dict[str, torch.Tensor], described: str) -> None:
    """A file far larger than its network is refused before it is read into memory."""
    limit = 8 * sum(t.numel() for t in expected.values()) + WEIGHTS_FILE_SLACK
    size = weights.stat().st_size if weights.is_file() else 0
    if size > limit:
        raise DetectorError(
            f"{weights} is {size:,} bytes, more than {described} can hold (at most {limit:,}); "
            f"{OTHER_MODEL}"
        )


def check_weights(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], weights: Path, described: str
) -> None:
    """The weights of `state` match `expected` by name, shape and kind of dtype, and every
    floating tensor is finite (BatchNorm's running variances also >= 0); one line otherwise."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = f"lacks {missing[0]} of" if missing else f"holds {extra[0]}, which is not in"
        raise DetectorError(
            f"{weights} {what} {described} ({len(missing)} tensors missing, {len(extra)} "
            f"unexpected); {OTHER_MODEL}"
        )
    for name, want in expected.items():
        got = state[name]
        if tuple(got.shape) != tuple(want.shape):
            raise DetectorError(
                f"{weights}: {name} has shape {tuple(got.shape)} where {described} has "
                f"{tuple(want.shape)}; {OTHER_MODEL}"
            )
        if got.is_floating_point() != want.is_floating_point():
            raise DetectorError(
                f"{weights}: {name} is {got.dtype}, not {want.dtype}; {WEIGHTS_FIX}"
            )
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            bad = int((~torch.isfinite(got)).sum())
            raise DetectorError(
                f"{weights}: {name} holds {bad:,} NaN or infinite values of {got.numel():,}; "
                f"{WEIGHTS_FIX} (a diverged training?)"
            )
        if name.endswith("running_var") and bool((got < 0).any()):
            raise DetectorError(f"{weights}: {name} holds negative variances; {WEIGHTS_FIX}")


def _check_plain_beat(detector: Detector, weights: Path) -> None:
    """Finite weights can still overflow: the reconstruction of a plain beat must be finite."""
    t = torch.linspace(0, 2 * math.pi, detector.beat_length)
    beat = torch.sin(t).expand(1, detector.nc, -1).contiguous()
    with torch.no_grad():
        out = detector.g(beat)
    if not bool(torch.isfinite(out).all()):
        raise DetectorError(
            f"{weights}: the network's reconstruction of a plain beat is not finite (weights "
            f"that overflow); {WEIGHTS_FIX}"
        )


def detector_files(folder: Path) -> tuple[Path, Path] | None:
    """G.pt and detector.json of a model folder (a trained model's, or the `artifacts` of a
    logged detector model), or None."""
    for where in (folder, folder / "artifacts"):
        if (where / DETECTOR_FILE).is_file() and (where / WEIGHTS_FILE).is_file():
            return where / WEIGHTS_FILE, where / DETECTOR_FILE
    return None
