"""A record's beats for detection: read (any sampling rate, any lead by name), then made by the
same code as training's (`data.beats.recording_beats`, `data.beats.normalise`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sibeatgan.data.beats import (
    CLASSES,
    BeatSpec,
    RecordBeats,
    normalise,
    read_recording,
    recording_beats,
    resampled,
)
from sibeatgan.evaluation.detector import Detector


class RecordError(ValueError):
    """A record that cannot be read or holds no beats; the message names the fix."""


@dataclass
class RecordInput:
    name: str
    path: Path
    fs: float  # the record's own sampling rate
    duration_s: float
    lead: str
    annotated: bool
    beats: RecordBeats  # normalised, the detector's leads only
    signal: np.ndarray  # the chosen lead at the detector's rate (FS), for the strip chart

    @property
    def labels(self) -> list[str]:
        return [CLASSES[c] if c >= 0 else "" for c in self.beats.cls]


def record_path(spec: str) -> Path:
    """`data/mitdb/100`, `data/mitdb/100.hea` or `100.dat` -> the path without extension."""
    path = Path(spec)
    return path.with_suffix("") if path.suffix in {".hea", ".dat", ".atr"} else path


def read_for_detection(spec: str, detector: Detector, lead: str) -> RecordInput:
    path = record_path(spec)
    if not Path(f"{path}.hea").is_file():
        raise RecordError(f"no WFDB record {path} ({path}.hea not found); give a record path")
    try:
        raw = read_recording(path, lead)
    except ValueError as err:
        if f"no {lead} lead" in str(err):
            raise RecordError(f"{err}; choose one with --lead") from None
        raise RecordError(f"record {path} is unreadable ({err})") from None
    except Exception as err:  # noqa: BLE001 - wfdb raises many kinds on a damaged record
        raise RecordError(f"record {path} is unreadable ({type(err).__name__}: {err})") from None
    fs, rec = raw.fs, resampled(raw)
    pp = detector.meta["preprocess"]
    if len(rec.sig) < 3 * int(pp["taps"]):
        raise RecordError(f"record {path} is empty or too short ({len(rec.sig)} samples)")
    beats = recording_beats(rec, BeatSpec.from_dict(pp))
    if len(beats.cls) == 0:
        raise RecordError(f"no beats found in record {path}; is it an ECG?")
    nc = int(detector.meta["nc"])
    beats.x = normalise(beats.x[:, :nc])
    beats.record = path.name
    return RecordInput(
        name=path.name,
        path=path,
        fs=fs,
        duration_s=len(rec.sig) / rec.fs,
        lead=lead,
        annotated=rec.annotations is not None,
        beats=beats,
        signal=rec.sig[:, 0],
    )


def class_figures(cls: np.ndarray, flags: np.ndarray) -> dict[str, dict]:
    """Per annotated class: beats and flagged; recall for abnormal classes, the false-alarm
    rate for N."""
    out = {}
    for i, name in enumerate(CLASSES):
        mask = cls == i
        if not mask.any():
            continue
        flagged = int(flags[mask].sum())
        rate = flagged / int(mask.sum())
        out[name] = {
            "beats": int(mask.sum()),
            "flagged": flagged,
            "false_alarm_rate" if i == 0 else "recall": rate,
        }
    return out
