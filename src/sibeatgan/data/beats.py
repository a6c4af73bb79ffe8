"""Beat extraction from one WFDB record (protocol section 2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import wfdb
import wfdb.processing
from scipy import signal as sps

from sibeatgan.config import FS, QRS_DETECTORS
from sibeatgan.datasets import Dataset

FS_RANGE = (100.0, 20_000.0)  # sampling rates a record may have (Hz)
MAX_RATIO_TERM = 20_000  # resampling's up and down stay below this (filter of 20 x taps)
FLAT_S = 2.0  # one value repeated this long (s) is a dead lead, not ECG


@dataclass
class RecordBeats:
    """Beats of one record: `x` is [n, 2, before+after] float32, the chosen lead (the
    dataset's, e.g. MLII) first; `cls` is the AAMI class index
    (sibeatgan.datasets.CLASSES) of each beat, -1 where the record has no annotations."""

    record: int | str
    x: np.ndarray
    cls: np.ndarray
    sample: np.ndarray
    dropped_n: int  # N beats rejected because no detected R peak was near the annotation


@dataclass
class Annotations:
    samples: np.ndarray
    symbols: list[str]


@dataclass
class Recording:
    """A record's signal [n, 2] (the chosen lead first) at `fs` Hz, and its beat annotations
    when it has them."""

    sig: np.ndarray
    fs: float
    lead: str
    leads: list[str]
    annotations: Annotations | None


def read_recording(path: str | Path, lead: str, annotator: str | None = "atr") -> Recording:
    """A WFDB record (`path` without extension); annotations from `annotator` when given and
    present. Raises ValueError naming the leads when the record has no lead `lead`."""
    header = wfdb.rdheader(str(path))
    # wfdb refuses to read a record of no samples; it reads as an empty signal
    rec = wfdb.rdrecord(str(path)) if header.sig_len else header
    if lead not in rec.sig_name:
        raise ValueError(f"record {Path(path).name} has no {lead} lead (leads: {rec.sig_name})")
    first = rec.sig_name.index(lead)
    order = [first] + [i for i in range(rec.n_sig) if i != first]
    signal = getattr(rec, "p_signal", None)
    signal = signal if signal is not None else np.zeros((0, rec.n_sig))
    sig = signal[:, order[:2]]
    if sig.shape[1] == 1:  # a one-lead record: repeat the lead so every beat has two channels
        sig = np.repeat(sig, 2, axis=1)
    ann = None
    if annotator and Path(f"{path}.{annotator}").exists():
        found = wfdb.rdann(str(path), annotator)
        ann = Annotations(np.asarray(found.sample, dtype=np.int64), list(found.symbol))
    return Recording(sig, float(rec.fs), lead, list(rec.sig_name), ann)


def check_rate(fs: float) -> None:
    """Refuse a sampling rate outside FS_RANGE (a header's 0, a typo): resampling from it would
    divide by zero or need absurd memory."""
    lo, hi = FS_RANGE
    if not lo <= fs <= hi:  # False for NaN too
        raise ValueError(
            f"sampling rate {fs:g} Hz is outside {lo:g}-{hi:g} Hz (the band-pass needs content "
            "up to 45 Hz); fix the rate in the record's header"
        )


def resample_factor(fs_in: float, fs_out: float = FS) -> Fraction:
    """up/down with fs_in * up / down == fs_out: exact for rates written with few digits (every
    whole rate, 500.5 Hz: the ratio of their decimal forms); for a ratio with a term beyond
    MAX_RATIO_TERM the nearest one within it (relative error < 1e-4). Signal and annotations
    are scaled by this same factor, so they stay aligned even then."""
    check_rate(fs_in)
    exact = Fraction(repr(float(fs_out))) / Fraction(repr(float(fs_in)))
    if max(exact.numerator, exact.denominator) <= MAX_RATIO_TERM:
        return exact
    return exact.limit_denominator(MAX_RATIO_TERM)


def resample(sig: np.ndarray, factor: Fraction) -> np.ndarray:
    """Polyphase resampling along time (scipy's resample_poly) by exactly `factor`."""
    if factor == 1:
        return sig
    return sps.resample_poly(sig, factor.numerator, factor.denominator, axis=0)


@dataclass(frozen=True)
class Gap:
    """A stretch [start, end) of one lead (samples at the record's own rate) that holds no
    ECG: non-finite values (`nan`) or one value repeated for at least FLAT_S (`flat`: a
    dead or disconnected lead)."""

    lead: str
    start: int
    end: int
    kind: str


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-d boolean array."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def find_gaps(sig: np.ndarray, leads: list[str], fs: float, flat_s: float = FLAT_S) -> list[Gap]:
    """The gaps of each column of `sig` [n, k] (named by `leads`), in time order per lead."""
    gaps = []
    min_flat = max(2, int(np.ceil(flat_s * fs)))
    for name, x in zip(leads, sig.T, strict=True):
        found = [Gap(name, a, b, "nan") for a, b in runs(~np.isfinite(x))]
        same = x[1:] == x[:-1]  # False at and beside non-finite values
        for a, b in runs(same):  # samples a..b (b - a + 1 of them) hold one value
            if b + 1 - a >= min_flat:
                found.append(Gap(name, a, b + 1, "flat"))
        gaps += sorted(found, key=lambda g: g.start)
    return gaps


def usable_segments(length: int, gaps: list[Gap], min_length: int) -> list[tuple[int, int]]:
    """[start, end) of the stretches between the gaps (of any lead) at least `min_length`
    samples long: the parts of a record that can be analysed."""
    covered = np.zeros(length, dtype=bool)
    for g in gaps:
        covered[g.start : g.end] = True
    return [(a, b) for a, b in runs(~covered) if b - a >= min_length]


def read_record(records_dir: str | Path, record: int, ds: Dataset) -> Recording:
    """A record of dataset `ds` (its lead in column 0) with its beat annotations."""
    rec = read_recording(Path(records_dir) / str(record), ds.lead, ds.annotator)
    if rec.annotations is None:
        raise ValueError(
            f"record {record} has no annotation file {record}.{ds.annotator} in {records_dir}"
        )
    return rec


def bandpass(sig: np.ndarray, fs: float, band_hz: list[float], taps: int) -> np.ndarray:
    """Zero-phase FIR band-pass along time (axis 0)."""
    b = sps.firwin(taps, band_hz, pass_zero=False, fs=fs)
    return sps.filtfilt(b, [1.0], sig, axis=0)


def detect_r_peaks(lead: np.ndarray, fs: float, detector: str = "xqrs") -> np.ndarray:
    """R peaks of a band-passed lead, each moved to the local maximum within 50 ms.
    `xqrs`: wfdb's XQRS (87,303 N beats confirmed on the 44 records). `hamilton`: biosppy's
    Hamilton segmenter and R-peak correction, the detector of the published preprocessing
    (`research/scripts/qrs_detectors.py` compares the two record by record)."""
    if detector == "hamilton":
        from biosppy.signals import ecg  # only this detector needs it

        (onsets,) = ecg.hamilton_segmenter(signal=lead, sampling_rate=fs)
        (peaks,) = ecg.correct_rpeaks(signal=lead, rpeaks=onsets, sampling_rate=fs, tol=0.05)
        return np.sort(np.asarray(peaks, dtype=np.int64))
    if detector != "xqrs":
        raise ValueError(f"unknown QRS detector {detector!r}; known: {', '.join(QRS_DETECTORS)}")
    qrs = wfdb.processing.xqrs_detect(sig=lead, fs=fs, verbose=False)
    if len(qrs) == 0:
        return np.asarray(qrs, dtype=np.int64)
    radius = int(0.05 * fs)
    peaks = wfdb.processing.correct_peaks(
        lead, qrs, search_radius=radius, smooth_window_size=radius * 2, peak_dir="up"
    )
    return np.sort(np.asarray(peaks, dtype=np.int64))


def near_detection(samples: np.ndarray, peaks: np.ndarray, tolerance: int) -> np.ndarray:
    """For each sample, whether some detected peak lies within `tolerance` samples."""
    if len(peaks) == 0:
        return np.zeros(len(samples), dtype=bool)
    idx = np.searchsorted(peaks, samples)
    left = peaks[np.clip(idx - 1, 0, len(peaks) - 1)]
    right = peaks[np.clip(idx, 0, len(peaks) - 1)]
    nearest = np.minimum(np.abs(left - samples), np.abs(right - samples))
    return nearest <= tolerance


def beat_classes(
    symbols: list[str],
    samples: np.ndarray,
    length: int,
    before: int,
    after: int,
    class_of_symbol: Mapping[str, int],
) -> np.ndarray:
    """Class of each annotation (CLASSES index); -1 for symbols outside the class map and for
    beats whose window [R - before, R + after) leaves the record."""
    cls = np.array([class_of_symbol.get(s, -1) for s in symbols], dtype=np.int8)
    inside = (samples - before >= 0) & (samples + after <= length)
    return np.where(inside, cls, -1).astype(np.int8)


@dataclass(frozen=True)
class BeatSpec:
    """How beats are cut from a record (the preprocess.* knobs of that name): the band-pass,
    the window [R - before, R + after) and the check that confirms N beats."""

    band_hz: list[float]
    taps: int
    before: int
    after: int
    qrs_tolerance: int
    qrs_detector: str = "xqrs"

    @classmethod
    def from_dict(cls, values: dict) -> BeatSpec:
        """From preprocess params or a detector's stored copy (other keys are ignored)."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def extract_beats(records_dir: str | Path, record: int, spec: BeatSpec, ds: Dataset) -> RecordBeats:
    """The beats `preprocess` keeps from one record of a dataset: `stretch_beats` of the whole
    record at its annotated beats, the path `detect` takes too (a record at another rate than
    FS is resampled to it; its beats keep their samples at the record's own rate)."""
    rec = read_record(records_dir, record, ds)
    beats = stretch_beats(rec.sig, rec.fs, spec, ds.class_of_symbol, rec.annotations)
    beats.record = record
    return beats


def stretch_beats(
    sig: np.ndarray,
    fs: float,
    spec: BeatSpec,
    class_of_symbol: Mapping[str, int],
    annotations: Annotations | None = None,
    qrs_from: int | None = None,
) -> RecordBeats:
    """The beats of one finite stretch of a record sampled at `fs` Hz, the way `preprocess`
    makes them: resampled to FS Hz, band-passed and windowed; at its annotated beats (kept as
    `preprocess` keeps them), and from sample `qrs_from` on at the R peaks the QRS detector
    finds (unlabelled: class -1). Samples in and out are the stretch's own, from its start; an
    annotated beat keeps its annotation's sample exactly. Not normalised."""
    factor = resample_factor(fs)
    filtered = bandpass(resample(sig, factor), FS, spec.band_hz, spec.taps)
    peaks = detect_r_peaks(filtered[:, 0], FS, spec.qrs_detector)
    parts = [_unlabelled(filtered, np.zeros(0, np.int64), factor, spec)]  # shapes when empty
    if annotations is not None:
        own = np.asarray(annotations.samples, dtype=np.int64)
        at = np.round(own * float(factor)).astype(np.int64)
        beats, keep = _annotated(filtered, peaks, at, annotations.symbols, spec, class_of_symbol)
        beats.sample = own[keep]
        parts.append(beats)
    if qrs_from is not None:
        parts.append(_unlabelled(filtered, peaks[peaks >= qrs_from * float(factor)], factor, spec))
    return RecordBeats(
        record="",
        x=np.concatenate([p.x for p in parts]),
        cls=np.concatenate([p.cls for p in parts]),
        sample=np.concatenate([p.sample for p in parts]).astype(np.int64),
        dropped_n=sum(p.dropped_n for p in parts),
    )


def _unlabelled(
    filtered: np.ndarray, peaks: np.ndarray, factor: Fraction, spec: BeatSpec
) -> RecordBeats:
    """Beats at detected R peaks (of a signal resampled by `factor`) whose window fits; their
    samples back at the signal's own rate."""
    found = np.unique(peaks)
    found = found[(found - spec.before >= 0) & (found + spec.after <= len(filtered))]
    return RecordBeats(
        record="",
        x=window(filtered, found, spec.before, spec.after),
        cls=np.full(len(found), -1, dtype=np.int8),
        sample=np.round(found / float(factor)).astype(np.int64),
        dropped_n=0,
    )


def window(filtered: np.ndarray, centres: np.ndarray, before: int, after: int) -> np.ndarray:
    """Windows [R - before, R + after) of a filtered signal [n, 2]: [beats, 2, length]."""
    starts = np.asarray(centres, dtype=np.int64) - before
    offsets = np.arange(before + after)
    return filtered[starts[:, None] + offsets].transpose(0, 2, 1).astype(np.float32)


def _annotated(
    filtered: np.ndarray,
    peaks: np.ndarray,
    samples: np.ndarray,
    symbols: list[str],
    spec: BeatSpec,
    class_of_symbol: Mapping[str, int],
) -> tuple[RecordBeats, np.ndarray]:
    """Annotated beats of the classes in `class_of_symbol` whose window fits in the filtered
    signal; an N beat only where a detected R peak lies within `qrs_tolerance` samples. Also
    which annotations it kept."""
    before, after = spec.before, spec.after
    cls = beat_classes(symbols, samples, len(filtered), before, after, class_of_symbol)
    keep = cls >= 0
    is_n = keep & (cls == 0)
    confirmed = near_detection(samples, peaks, spec.qrs_tolerance)
    dropped = int(np.sum(is_n & ~confirmed))
    keep &= (cls != 0) | confirmed
    beats = RecordBeats(
        record="",
        x=window(filtered, samples[keep], before, after),
        cls=cls[keep],
        sample=samples[keep].astype(np.int32),
        dropped_n=dropped,
    )
    return beats, keep


def normalise(x: np.ndarray) -> np.ndarray:
    """Per beat and channel to [-1, 1]; a flat channel (max == min) becomes zeros."""
    lo = x.min(axis=-1, keepdims=True)
    hi = x.max(axis=-1, keepdims=True)
    span = hi - lo
    flat = span == 0
    out = 2.0 * (x - lo) / np.where(flat, 1.0, span) - 1.0
    return np.where(flat, 0.0, out).astype(np.float32)
