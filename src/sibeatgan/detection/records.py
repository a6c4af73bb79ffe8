"""A record's beats for detection: read (any sampling rate, any lead by name), split at its gaps
(stretches of non-finite values, or of one value repeated: a dead lead), and made stretch by
stretch by the same code as training's (`data.beats.stretch_beats`, `data.beats.normalise`).
No window ever crosses a gap, so every beat the detector sees is finite."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

from sibeatgan.data.beats import (
    Annotations,
    BeatSpec,
    Gap,
    RecordBeats,
    check_rate,
    find_gaps,
    normalise,
    read_recording,
    resample,
    resample_factor,
    runs,
    stretch_beats,
    usable_segments,
)
from sibeatgan.data.rhythm import BeatContext, beat_rhythm, one_record
from sibeatgan.datasets import CLASSES
from sibeatgan.evaluation.detector import Detector

MIN_ANALYSED = 0.5  # a record of which less than this share can be analysed is refused
TAIL_S = 10.0  # annotations that stop this long before the record does were cut short
REFRACTORY_S = 0.2  # no beat follows another sooner: detected beats after the annotations


class RecordError(ValueError):
    """A record that cannot be read or holds no beats; the message names the fix."""


@dataclass
class RecordInput:
    name: str
    path: Path
    fs: float  # the record's own sampling rate
    length: int  # samples, at fs
    lead: str
    leads: list[str]  # every lead of the record
    annotated: bool
    beats: RecordBeats  # normalised, the detector's leads only; samples at fs
    signal: np.ndarray  # the chosen lead at the detector's rate (FS), NaN where not analysed
    gaps: list[Gap]
    segments: list[tuple[int, int]]  # the analysed stretches [start, end), samples at fs
    beats_in_gaps: int | None  # annotated beats lost to a gap (None without annotations)
    annotations_stop_s: float | None  # where annotations cut short stop
    warnings: list[str]

    @property
    def labels(self) -> list[str]:
        return [CLASSES[c] if c >= 0 else "" for c in self.beats.cls]

    @property
    def duration_s(self) -> float:
        return self.length / self.fs

    @property
    def times(self) -> np.ndarray:
        return self.beats.sample / self.fs

    @property
    def timing(self) -> np.ndarray:
        """`rhythm.beat_rhythm` of the beats: neighbours are beats of the same analysed
        stretch, so a gap never passes for a pause."""
        starts = np.array([a for a, _ in self.segments])
        stretch = np.searchsorted(starts, self.beats.sample, side="right")
        return beat_rhythm(stretch, self.beats.sample)

    @property
    def context(self) -> BeatContext:
        """The beats' context for the scores that read it: one record, timed by stretch."""
        return one_record(self.timing)

    @property
    def analysed_s(self) -> float:
        return sum(b - a for a, b in self.segments) / self.fs

    def left_out_s(self) -> list[tuple[float, float]]:
        """The stretches not analysed (gaps, and pieces between gaps too short for a beat)."""
        analysed = np.zeros(self.length, dtype=bool)
        for a, b in self.segments:
            analysed[a:b] = True
        return [(a / self.fs, b / self.fs) for a, b in runs(~analysed)]

    def gap_rows(self) -> list[dict]:
        return [
            {"lead": g.lead, "start_s": g.start / self.fs, "end_s": g.end / self.fs, "kind": g.kind}
            for g in self.gaps
        ]


def record_path(spec: str) -> Path:
    """`data/mitdb/100`, `data/mitdb/100.hea` or `100.dat` -> the path without extension."""
    path = Path(spec)
    return path.with_suffix("") if path.suffix in {".hea", ".dat", ".atr"} else path


def read_for_detection(spec: str, detector: Detector, lead: str | None = None) -> RecordInput:
    """A record's beats as `detector` scores them; `lead` defaults to the lead of the dataset
    the detector was trained on, whose class map labels annotated beats."""
    lead = lead or detector.dataset.lead
    class_of_symbol = detector.dataset.class_of_symbol
    path = record_path(spec)
    raw = _read(path, lead)
    raw.annotations, notes = _read_annotations(path, detector.dataset.annotator)
    pp = BeatSpec.from_dict(detector.meta["preprocess"])
    nc = int(detector.meta["nc"])
    sig, names = raw.sig[:, :nc], _column_leads(lead, raw.leads)[:nc]
    factor = float(resample_factor(raw.fs))
    # a stretch must hold a beat's window and the band-pass's padding, at FS
    min_length = int(np.ceil(max(3 * pp.taps + 1, pp.before + pp.after) / factor))
    if len(sig) < min_length:
        raise RecordError(f"record {path} is empty or too short ({len(sig)} samples)")
    gaps = find_gaps(sig, names, raw.fs)
    segments = usable_segments(len(sig), gaps, min_length)
    if sum(b - a for a, b in segments) < MIN_ANALYSED * len(sig):
        raise RecordError(_unusable(path.name, gaps, segments, len(sig), raw.fs, raw.leads))
    ann, qrs_from, warnings = _annotations(path.name, raw.annotations, len(sig), raw.fs)
    warnings = notes + warnings
    beats = _beats(sig, raw.fs, segments, ann, qrs_from, pp, class_of_symbol)
    if len(beats.cls) == 0:
        raise RecordError(f"no beats found in record {path}; is it an ECG?")
    if not np.isfinite(beats.x).all():  # cannot happen: gaps are cut out; a safety net
        raise RecordError(f"record {path} gives non-finite beat windows; report this as a bug")
    beats.x = normalise(beats.x)
    beats.record = path.name
    lost = None
    if ann is not None:
        lost = _beats_in_gaps(ann, segments, len(sig), raw.fs, pp, class_of_symbol)
    if gaps:
        warnings.insert(0, _gap_warning(path.name, gaps, raw.fs, lost))
    return RecordInput(
        name=path.name,
        path=path,
        fs=raw.fs,
        length=len(sig),
        lead=lead,
        leads=raw.leads,
        annotated=ann is not None,
        beats=beats,
        signal=_display(sig[:, 0], segments, raw.fs),
        gaps=gaps,
        segments=segments,
        beats_in_gaps=lost,
        annotations_stop_s=None if ann is None or qrs_from is None else _last(ann) / raw.fs,
        warnings=warnings,
    )


def _read(path: Path, lead: str):
    """The record, its rate checked before its signal is read; every failure a RecordError."""
    if not Path(f"{path}.hea").is_file():
        raise RecordError(f"no WFDB record {path} ({path}.hea not found); give a record path")
    try:
        fs = float(wfdb.rdheader(str(path)).fs)
        check_rate(fs)
        return read_recording(path, lead, annotator=None)
    except ValueError as err:
        if f"no {lead} lead" in str(err):
            raise RecordError(f"{err}; choose one with --lead") from None
        if "sampling rate" in str(err):
            raise RecordError(f"record {path}: {err}") from None
        raise RecordError(f"record {path} is unreadable ({err})") from None
    except Exception as err:  # noqa: BLE001 - wfdb raises many kinds on a damaged record
        raise RecordError(f"record {path} is unreadable ({type(err).__name__}: {err})") from None


def _read_annotations(path: Path, annotator: str) -> tuple[Annotations | None, list[str]]:
    """The record's annotations (`annotator`: MIT-BIH's .atr) when it has them. A file cut
    mid-annotation (wfdb cannot read it) gives the annotations before the cut, with a warning."""
    file = Path(f"{path}.{annotator}")
    if not file.is_file():
        return None, []
    notes = []
    try:
        found = wfdb.rdann(str(path), annotator)
    except Exception:  # noqa: BLE001 - wfdb fails in many ways on a damaged file
        found = _before_the_cut(file)
        notes.append(f"warning: {file} ends mid-annotation (cut short); read up to the cut")
    return Annotations(np.asarray(found.sample, dtype=np.int64), list(found.symbol)), notes


def _before_the_cut(file: Path):
    """The annotations of a file cut mid-annotation: the longest prefix, a few bytes shorter,
    that wfdb reads (annotations are 2 bytes, 6 with a skip)."""
    data = file.read_bytes()
    with tempfile.TemporaryDirectory(prefix="sibeatgan-ann-") as tmp:
        for end in range(len(data) - len(data) % 2, max(len(data) - 8, 1), -2):
            (Path(tmp) / "cut.atr").write_bytes(data[:end])
            try:
                return wfdb.rdann(str(Path(tmp) / "cut"), "atr")
            except Exception:  # noqa: BLE001 - try a shorter prefix
                continue
    raise RecordError(
        f"annotation file {file} is damaged (wfdb cannot read it); repair it, or move it away "
        "to detect with the QRS detector"
    )


def _column_leads(lead: str, leads: list[str]) -> list[str]:
    """The lead of each column `read_recording` returns: the chosen one first, then the next
    (the chosen one again for a one-lead record)."""
    rest = [name for name in leads if name != lead]
    return [lead, rest[0] if rest else lead]


def _annotations(
    name: str, ann: Annotations | None, length: int, fs: float
) -> tuple[Annotations | None, int | None, list[str]]:
    """The annotations to use, the sample from which the QRS detector finds the beats (None:
    nowhere; 0: everywhere), and the warnings about them."""
    if ann is None:
        return None, 0, []
    if len(ann.samples) == 0:
        empty = (
            f"warning: record {name}'s annotation file is empty; beats come from the QRS detector"
        )
        return None, 0, [empty]
    last = _last(ann)
    if (length - 1 - last) / fs <= TAIL_S:
        return ann, None, []
    warning = (
        f"warning: record {name}'s annotations stop at {last / fs:.1f} s of {length / fs:.1f} s; "
        f"the beats after that come from the QRS detector, unlabelled (not in the per-class "
        "figures)"
    )
    return ann, last + int(np.ceil(REFRACTORY_S * fs)), [warning]


def _last(ann: Annotations) -> int:
    return int(np.max(ann.samples))


def _beats(
    sig: np.ndarray,
    fs: float,
    segments: list[tuple[int, int]],
    ann: Annotations | None,
    qrs_from: int | None,
    spec: BeatSpec,
    class_of_symbol: Mapping[str, int],
) -> RecordBeats:
    """The beats of every analysed stretch, each made on its own (samples at fs)."""
    parts = []
    for a, b in segments:
        local = None
        if ann is not None:
            inside = (ann.samples >= a) & (ann.samples < b)
            symbols = [s for s, keep in zip(ann.symbols, inside, strict=True) if keep]
            local = Annotations(ann.samples[inside] - a, symbols)
        start = None if qrs_from is None else max(qrs_from - a, 0)
        beats = stretch_beats(sig[a:b], fs, spec, class_of_symbol, local, start)
        beats.sample = beats.sample + a
        parts.append(beats)
    return RecordBeats(
        record="",
        x=np.concatenate([p.x for p in parts]),
        cls=np.concatenate([p.cls for p in parts]),
        sample=np.concatenate([p.sample for p in parts]),
        dropped_n=sum(p.dropped_n for p in parts),
    )


def _beats_in_gaps(
    ann: Annotations,
    segments: list[tuple[int, int]],
    length: int,
    fs: float,
    spec: BeatSpec,
    class_of_symbol: Mapping[str, int],
) -> int:
    """Annotated beats (of the class map) not scored because of a gap: in one, or so near one
    that their window [R - before, R + after) at FS would cross it."""
    factor = resample_factor(fs)
    samples = ann.samples
    lost = np.array([s in class_of_symbol for s in ann.symbols], dtype=bool)
    lost &= (samples >= 0) & (samples < length)
    for a, b in segments:
        inside = (samples >= a) & (samples < b)
        at = np.round((samples - a) * float(factor))
        resampled = -(-(b - a) * factor.numerator // factor.denominator)  # resample_poly's
        crosses = ((at - spec.before < 0) & (a > 0)) | (
            (at + spec.after > resampled) & (b < length)
        )
        lost &= ~inside | crosses
    return int(lost.sum())


def _display(lead: np.ndarray, segments: list[tuple[int, int]], fs: float) -> np.ndarray:
    """The lead at FS for the strip chart, NaN where it was not analysed."""
    factor = resample_factor(fs)
    out = np.full(int(np.ceil(len(lead) * factor)), np.nan, dtype=np.float32)
    for a, b in segments:
        start = int(round(a * factor))
        part = resample(lead[a:b], factor)[: len(out) - start]
        out[start : start + len(part)] = part
    return out


def _gap_warning(name: str, gaps: list[Gap], fs: float, lost: int | None) -> str:
    seconds = sum(g.end - g.start for g in gaps) / fs
    kinds = sorted({g.kind for g in gaps})
    line = (
        f"warning: record {name}: {len(gaps)} gap(s) ({', '.join(kinds)}; {seconds:.1f} s in "
        f"lead {', '.join(sorted({g.lead for g in gaps}))}) left out, the rest analysed"
    )
    if lost is not None:
        line += f"; {lost} annotated beat(s) fell in them"
    return line + " (summary.json lists the gaps)"


def _unusable(
    name: str,
    gaps: list[Gap],
    segments: list[tuple[int, int]],
    length: int,
    fs: float,
    leads: list[str],
) -> str:
    """One line: how much of which lead is missing or flat, and what to do."""
    share: dict[tuple[str, str], float] = {}
    for g in gaps:
        share[g.lead, g.kind] = share.get((g.lead, g.kind), 0.0) + (g.end - g.start) / length
    what = {"nan": "missing (NaN)", "flat": "flat (one value)"}
    dead = [
        f"lead {lead} is {what[kind]} throughout" for (lead, kind), s in share.items() if s == 1
    ]
    if dead:
        head = "; ".join(dead) + " (a dead or disconnected lead)"
    else:
        parts = [
            f"lead {lead} {what[kind]} for {100 * s:.0f}%" for (lead, kind), s in share.items()
        ]
        analysed = sum(b - a for a, b in segments) / length
        head = (
            f"only {100 * analysed:.0f}% of its {length / fs:.1f} s can be analysed "
            f"({'; '.join(parts)})"
        )
    return (
        f"record {name}: {head}; choose another lead with --lead (leads: {', '.join(leads)}) or "
        "give the record's usable part"
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
