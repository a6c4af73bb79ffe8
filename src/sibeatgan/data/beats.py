"""Beat extraction from one WFDB record (protocol section 2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb
import wfdb.processing
from scipy import signal as sps

from sibeatgan.config import QRS_DETECTORS

CLASSES = ("N", "S", "V", "F", "Q")
CLASS_OF_SYMBOL = {
    **dict.fromkeys("NLR", 0),
    **dict.fromkeys("AaJSje", 1),
    **dict.fromkeys("VE", 2),
    "F": 3,
    **dict.fromkeys("/fQ", 4),
}
PRIMARY_LEAD = "MLII"


@dataclass
class RecordBeats:
    """Beats of one record: `x` is [n, 2, before+after] float32, MLII first."""

    record: int
    x: np.ndarray
    cls: np.ndarray
    sample: np.ndarray
    dropped_n: int  # N beats rejected because no detected R peak was near the annotation


def read_record(mitdb_dir: str | Path, record: int) -> tuple[np.ndarray, float, np.ndarray, list]:
    """Signal [n, 2] with MLII in column 0, sampling rate, annotation samples and symbols."""
    path = str(Path(mitdb_dir) / str(record))
    rec = wfdb.rdrecord(path)
    if PRIMARY_LEAD not in rec.sig_name:
        raise ValueError(f"record {record} has no {PRIMARY_LEAD} lead (leads: {rec.sig_name})")
    lead = rec.sig_name.index(PRIMARY_LEAD)
    order = [lead] + [i for i in range(rec.n_sig) if i != lead]
    sig = rec.p_signal[:, order[:2]]
    if sig.shape[1] == 1:  # a one-lead record: repeat MLII so every beat has two channels
        sig = np.repeat(sig, 2, axis=1)
    ann = wfdb.rdann(path, "atr")
    return sig, float(rec.fs), np.asarray(ann.sample), list(ann.symbol)


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
    symbols: list[str], samples: np.ndarray, length: int, before: int, after: int
) -> np.ndarray:
    """Class of each annotation (CLASSES index); -1 for symbols outside the class map and for
    beats whose window [R - before, R + after) leaves the record."""
    cls = np.array([CLASS_OF_SYMBOL.get(s, -1) for s in symbols], dtype=np.int8)
    inside = (samples - before >= 0) & (samples + after <= length)
    return np.where(inside, cls, -1).astype(np.int8)


def extract_beats(
    mitdb_dir: str | Path,
    record: int,
    band_hz: list[float],
    taps: int,
    before: int,
    after: int,
    qrs_tolerance: int,
    qrs_detector: str = "xqrs",
) -> RecordBeats:
    sig, fs, samples, symbols = read_record(mitdb_dir, record)
    filtered = bandpass(sig, fs, band_hz, taps)
    cls = beat_classes(symbols, samples, len(sig), before, after)
    keep = cls >= 0
    is_n = keep & (cls == 0)
    peaks = detect_r_peaks(filtered[:, 0], fs, qrs_detector)
    confirmed = near_detection(samples, peaks, qrs_tolerance)
    dropped = int(np.sum(is_n & ~confirmed))
    keep &= (cls != 0) | confirmed
    starts = samples[keep] - before
    offsets = np.arange(before + after)
    windows = filtered[starts[:, None] + offsets].transpose(0, 2, 1)  # [n, 2, length]
    return RecordBeats(
        record=record,
        x=windows.astype(np.float32),
        cls=cls[keep],
        sample=samples[keep].astype(np.int32),
        dropped_n=dropped,
    )


def normalise(x: np.ndarray) -> np.ndarray:
    """Per beat and channel to [-1, 1]; a flat channel (max == min) becomes zeros."""
    lo = x.min(axis=-1, keepdims=True)
    hi = x.max(axis=-1, keepdims=True)
    span = hi - lo
    flat = span == 0
    out = 2.0 * (x - lo) / np.where(flat, 1.0, span) - 1.0
    return np.where(flat, 0.0, out).astype(np.float32)
