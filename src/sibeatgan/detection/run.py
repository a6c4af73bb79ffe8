"""`sibeatgan detect`: score, flag and explain every beat of ECG records with a trained
detector. Everything is checked (the model, every record, every score) before anything is
written; a call's records are written into a hidden folder inside --out, then moved into place
together, each replacing the folder of an earlier call whole, so a call that fails or is
stopped leaves none of them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sibeatgan.data.rhythm import COLUMNS, BeatContext, RhythmError
from sibeatgan.detection import report
from sibeatgan.detection.model import resolve_detector
from sibeatgan.detection.records import RecordError, RecordInput, class_figures, read_for_detection
from sibeatgan.evaluation.detector import MIN_ADAPTIVE_BEATS, Detector, DetectorError
from sibeatgan.io import ensure_writable, exclusive_folder, write_csv, write_json

SCORE_BATCH = 512
STAGING_PREFIX = ".detect-staging-"  # a call's records until they are all written
ADAPTIVE, PER_BEAT, AUTO = "adaptive", "beat", "auto"  # how detect flags: see `detect`


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def detect(
    records: list[str],
    model: str,
    out: Path,
    lead: str | None = None,
    alarm_rate: float | None = None,
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] = _stderr,
    scoring: str = AUTO,
) -> list[dict]:
    """Detect on every record; write OUT/<record>/{beats.csv, summary.json, report.html} for
    all of them or none; return the summaries. `scoring`: ADAPTIVE flags a beat by its robust
    z-score among its record's beats (a threshold in the same units for every patient),
    PER_BEAT by its score alone (the published protocol's units), AUTO adaptively where the
    detector and the record allow it, else per beat with a warning saying why."""
    started = time.perf_counter()
    detector = resolve_detector(model)
    if scoring != PER_BEAT:  # a detector or alarm rate that cannot: one line, before any work
        detector.threshold(alarm_rate, adaptive=scoring == ADAPTIVE)
    inputs, seconds = [], []
    for spec in records:
        t0 = time.perf_counter()
        rec = read_for_detection(spec, detector, lead)
        for line in rec.warnings:
            warn(line)
        inputs.append(rec)
        seconds.append(time.perf_counter() - t0)
    folders = output_folders([r.name for r in inputs])
    setup_s = (time.perf_counter() - started) - sum(seconds)
    scored = []
    for i, rec in enumerate(inputs):
        t0 = time.perf_counter()
        found, heat = finite_scores(detector, rec, model)
        mode = record_scoring(scoring, detector, rec.name, len(found), warn)
        flagged_on = found
        if mode == ADAPTIVE:
            flagged_on = detector.record_adaptive(found, f"record {rec.name}")
        threshold = detector.threshold(alarm_rate, adaptive=mode == ADAPTIVE)
        scored.append(((threshold, mode), (found, flagged_on, heat)))
        seconds[i] += time.perf_counter() - t0 + setup_s / len(inputs)
    summaries = []
    with exclusive_folder(out, "detect"), staging(out) as stage:
        for rec, (flagging, values), folder, spent in zip(
            inputs, scored, folders, seconds, strict=True
        ):
            t0 = time.perf_counter()
            summary = write_record(rec, detector, model, flagging, values, stage / folder)
            summary["folder"] = folder
            summary["time_s"] = round(spent + time.perf_counter() - t0, 3)
            write_json(stage / folder / "summary.json", summary)
            summaries.append(summary)
        commit(stage, out, folders)
    for summary, folder in zip(summaries, folders, strict=True):
        echo(one_line(summary, out / folder))
    return summaries


def record_scoring(
    scoring: str, detector: Detector, name: str, n_beats: int, warn: Callable[[str], None]
) -> str:
    """ADAPTIVE or PER_BEAT for one record: AUTO is adaptive where the detector has the
    thresholds and the record enough beats, else per beat, with a warning saying why; per beat
    for a score that compares each beat with its record already (adapting it again loses)."""
    if scoring != AUTO:
        return scoring
    if detector.reads_record:
        return PER_BEAT
    if not detector.adaptive:
        warn(
            f"warning: record {name}: scored per beat (this detector has no record-adaptive "
            "thresholds: it was trained before they existed)"
        )
        return PER_BEAT
    if n_beats < MIN_ADAPTIVE_BEATS:
        warn(
            f"warning: record {name}: scored per beat (its {n_beats} beats are too few for "
            f"record-adaptive scoring, which needs {MIN_ADAPTIVE_BEATS})"
        )
        return PER_BEAT
    return ADAPTIVE


def output_folders(names: list[str]) -> list[str]:
    """A folder name for each record that stays inside --out whatever the record is called:
    characters other than letters, digits, `.`, `_` and `-` become `_`, leading dots go (`..`
    would be the parent folder, `.x` a hidden one)."""
    folders = [re.sub(r"[^\w.-]", "_", name).lstrip(".") or "record" for name in names]
    if len(set(folders)) < len(folders):
        raise RecordError(
            f"records {', '.join(names)} would share an output folder; detect them apart "
            "(another --out)"
        )
    return folders


def scores_with_progress(detector: Detector, rec: RecordInput) -> tuple[np.ndarray, np.ndarray]:
    x = rec.beats.x
    context = record_context(detector, rec)
    if context is not None:  # a beat's score reads its record's other beats: all at once
        return detector.run(x, SCORE_BATCH, context)
    parts = [
        detector.run(x[start : start + SCORE_BATCH], SCORE_BATCH)
        for start in tqdm(
            range(0, len(x), SCORE_BATCH), desc=f"detect {rec.name}", unit="batch", leave=False
        )
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def record_context(detector: Detector, rec: RecordInput) -> BeatContext | None:
    """The beats' context in their record, for a detector whose score reads it; one line for
    a record too short for a score that compares a beat with the record's other beats."""
    if not detector.reads_context:
        return None
    n = len(rec.beats.x)
    if detector.reads_record and n < MIN_ADAPTIVE_BEATS:
        raise RecordError(
            f"record {rec.name} has {n} beats; the score {detector.score_name!r} compares each "
            f"beat with its record's other beats and needs at least {MIN_ADAPTIVE_BEATS}: "
            "detect a longer record, or use a model of a per-beat score"
        )
    try:
        return rec.context
    except RhythmError as err:
        raise RecordError(f"record {rec.name}: {err}") from None


def finite_scores(detector: Detector, rec: RecordInput, model: str) -> tuple[np.ndarray, ...]:
    """Scores and heat of every beat; a non-finite one (the beats are finite: the model's
    weights are damaged) stops the call before anything is written."""
    scores, heat = scores_with_progress(detector, rec)
    bad = int(np.sum(~np.isfinite(scores)))
    if bad:
        raise DetectorError(
            f"model {model} gives non-finite scores for {bad} of {len(scores)} finite beats of "
            f"record {rec.name}: its weights are damaged (NaN or Inf); train it again or use "
            "another model"
        )
    return scores, heat


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A new hidden folder inside `out` for a call's records; removed when the block ends,
    with `out` itself when this call created it and left nothing in it. Call it holding the
    lock of `out`: it removes what killed calls left there."""
    created = not out.exists()
    ensure_writable(out)
    for stale in out.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            with suppress(OSError):
                out.rmdir()  # only when empty: a failed call


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then act as they would have (Python runs
    signal handlers in the main thread only, so a handler that notes them holds them whichever
    thread the system hands them to)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # no handler runs while this thread is in the block
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, _: pending.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


def commit(stage: Path, out: Path, folders: list[str]) -> None:
    """Move the staged record folders into `out`, each replacing the one of its name whole; all
    or none: a failed move puts back the ones done, and a signal waits until they are."""
    replaced = stage / ".replaced"
    replaced.mkdir()
    done: list[tuple[Path, Path]] = []
    with signals_held():
        try:
            for folder in folders:
                target = out / folder
                if target.exists() or target.is_symlink():
                    os.replace(target, replaced / folder)
                    done.append((target, replaced / folder))
                os.replace(stage / folder, target)
                done.append((stage / folder, target))
        except OSError as err:
            for source, moved in reversed(done):
                os.replace(moved, source)
            raise PermissionError(
                f"cannot move the results into {out} ({err.strerror or err}); nothing of this "
                "call was kept: free the folder or choose another --out"
            ) from None


def write_record(
    rec: RecordInput,
    detector: Detector,
    model: str,
    flagging: tuple[tuple[str, float], str],
    scored: tuple[np.ndarray, np.ndarray, np.ndarray],
    folder: Path,
) -> dict:
    """beats.csv and report.html of one record into `folder`; its summary (not yet written).
    `flagging` is the threshold and the scoring (ADAPTIVE or PER_BEAT); `scored` the beats'
    scores, the values the threshold flags (the scores, or their record-adaptive z) and heat."""
    (name, value), scoring = flagging
    scores, flagged_on, heat = scored
    flags = flagged_on >= value
    times = rec.times
    labels = rec.labels
    table = {
        "beat": np.arange(len(scores)),
        "sample": rec.beats.sample,
        "time_s": np.round(times, 4),
        "score": scores,
        **({"z": flagged_on} if scoring == ADAPTIVE else {}),
        "flag": flags.astype(int),
    }
    if detector.reads_context:  # what the score read besides the beat's shape
        table.update(zip(COLUMNS, np.round(rec.timing, 4).T, strict=True))
    if rec.annotated:
        table["label"] = labels
    write_csv(folder / "beats.csv", table)
    summary = record_summary(rec, detector, model, (name, value), flags)
    summary["scoring"] = scoring
    images = {
        "timeline": report.score_timeline(
            times, flagged_on, flags, value, "robust z in the record" if scoring == ADAPTIVE else ""
        ),
        "strip": report.strip_chart(rec.signal, times, flags, labels, rec.left_out_s()),
    }
    top = [int(i) for i in np.argsort(-flagged_on) if flags[i]][: report.TOP_BEATS]
    top_rows = []
    if top:
        with torch.no_grad():
            recs = detector.g(detector.beats(rec.beats.x[top])).numpy()
        titles = [f"beat {i} at {times[i]:.1f} s, score {scores[i]:.3g} {labels[i]}" for i in top]
        images["explain"] = report.explanation(rec.beats.x[top, 0], recs[:, 0], heat[top], titles)
        top_rows = [[i, f"{times[i]:.2f}", f"{scores[i]:.4g}", labels[i]] for i in top]
    report.write_html(folder / "report.html", summary, images, top_rows)
    return summary


def record_summary(
    rec: RecordInput,
    detector: Detector,
    model: str,
    threshold: tuple[str, float],
    flags: np.ndarray,
) -> dict:
    name, value = threshold
    labelled = rec.beats.cls >= 0
    source = "annotations" if rec.annotated else "QRS detector"
    if rec.annotations_stop_s is not None:
        source = "annotations, then the QRS detector (unlabelled) where they stop"
    return {
        "record": rec.name,
        "path": str(rec.path),
        "fs": rec.fs,
        "duration_s": round(rec.duration_s, 3),
        "analysed_s": round(rec.analysed_s, 3),
        "lead": rec.lead,
        "beat_source": source,
        "beats": int(len(flags)),
        "flagged": int(flags.sum()),
        "flagged_fraction": float(flags.mean()),
        "threshold": {"name": name, "value": value},
        "model": {
            "spec": model,
            **{k: detector.meta.get(k) for k in ("role", "run_id", "data_key")},
        },
        "classes": class_figures(rec.beats.cls, flags) if rec.annotated else None,
        "gaps": rec.gap_rows(),
        "beats_in_gaps": rec.beats_in_gaps,
        "unconfirmed_n": rec.beats.dropped_n if rec.annotated else None,
        "annotations_stop_s": rec.annotations_stop_s,
        "unlabelled_beats": int((~labelled).sum()) if rec.annotated else None,
        "warnings": rec.warnings,
        "files": ["beats.csv", "summary.json", "report.html"],
    }


def one_line(s: dict, folder: Path) -> str:
    line = (
        f"{s['record']}: {s['beats']} beats, {s['flagged']} flagged "
        f"({100 * s['flagged_fraction']:.1f}%) at {s['threshold']['name']}"
        f"{' (record-adaptive)' if s.get('scoring') == ADAPTIVE else ''}"
    )
    if s["classes"]:
        recall = ", ".join(
            f"{c} {v['recall']:.2f}" for c, v in s["classes"].items() if "recall" in v
        )
        normal = s["classes"].get("N")
        line += f"; recall {recall or '-'}"
        if normal:
            line += f"; N false alarms {normal['false_alarm_rate']:.3f}"
    if s["gaps"]:
        line += f"; {s['duration_s'] - s['analysed_s']:.1f} s left out ({len(s['gaps'])} gaps)"
    return line + f"; {s['time_s']:.1f} s -> {folder}/report.html"
