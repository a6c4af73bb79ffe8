"""`sibeatgan detect`: score, flag and explain every beat of ECG records with a trained
detector. Everything is checked (the model, every record) before anything is written."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sibeatgan.config import FS
from sibeatgan.detection import report
from sibeatgan.detection.model import resolve_detector
from sibeatgan.detection.records import RecordError, RecordInput, class_figures, read_for_detection
from sibeatgan.evaluation.detector import Detector
from sibeatgan.io import ensure_writable, write_csv, write_json

SCORE_BATCH = 512


def detect(
    records: list[str],
    model: str,
    out: Path,
    lead: str = "MLII",
    alarm_rate: float | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict]:
    """Detect on every record; write OUT/<record>/{beats.csv, summary.json, report.html};
    return the summaries."""
    started = time.perf_counter()
    detector = resolve_detector(model)
    threshold = detector.threshold(alarm_rate)
    inputs, read_s = [], []
    for spec in records:
        t0 = time.perf_counter()
        inputs.append(read_for_detection(spec, detector, lead))
        read_s.append(time.perf_counter() - t0)
    names = [r.name for r in inputs]
    if len(set(names)) < len(names):
        raise RecordError(f"two records share a name ({', '.join(names)}); detect them apart")
    ensure_writable(out)
    summaries = []
    setup_s = (time.perf_counter() - started) - sum(read_s)
    for rec, seconds in zip(inputs, read_s, strict=True):
        t0 = time.perf_counter()
        summary = detect_record(rec, detector, model, threshold, out / rec.name)
        summary["time_s"] = round(seconds + time.perf_counter() - t0 + setup_s / len(inputs), 3)
        write_json(out / rec.name / "summary.json", summary)
        summaries.append(summary)
        echo(one_line(summary, out / rec.name))
    return summaries


def scores_with_progress(detector: Detector, rec: RecordInput) -> tuple[np.ndarray, np.ndarray]:
    x = rec.beats.x
    parts = [
        detector.run(x[start : start + SCORE_BATCH], SCORE_BATCH)
        for start in tqdm(
            range(0, len(x), SCORE_BATCH), desc=f"detect {rec.name}", unit="batch", leave=False
        )
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def detect_record(
    rec: RecordInput, detector: Detector, model: str, threshold: tuple[str, float], folder: Path
) -> dict:
    name, value = threshold
    scores, heat = scores_with_progress(detector, rec)
    flags = scores >= value
    peaks = rec.beats.sample.astype(np.int64)  # at FS Hz
    times = peaks / FS
    own_samples = np.round(peaks * rec.fs / FS).astype(np.int64)
    labels = rec.labels
    table = {
        "beat": np.arange(len(scores)),
        "sample": own_samples,
        "time_s": np.round(times, 4),
        "score": scores,
        "flag": flags.astype(int),
    }
    if rec.annotated:
        table["label"] = labels
    write_csv(folder / "beats.csv", table)
    summary = {
        "record": rec.name,
        "path": str(rec.path),
        "fs": rec.fs,
        "duration_s": round(rec.duration_s, 3),
        "lead": rec.lead,
        "beat_source": "annotations" if rec.annotated else "QRS detector",
        "beats": int(len(scores)),
        "flagged": int(flags.sum()),
        "flagged_fraction": float(flags.mean()),
        "threshold": {"name": name, "value": value},
        "model": {
            "spec": model,
            **{k: detector.meta.get(k) for k in ("role", "run_id", "data_key")},
        },
        "classes": class_figures(rec.beats.cls, flags) if rec.annotated else None,
        "files": ["beats.csv", "summary.json", "report.html"],
    }
    images = {
        "timeline": report.score_timeline(times, scores, flags, value),
        "strip": report.strip_chart(rec.signal, FS, peaks, flags, labels),
    }
    top = [int(i) for i in np.argsort(-scores) if flags[i]][: report.TOP_BEATS]
    top_rows = []
    if top:
        with torch.no_grad():
            recs = detector.g(detector.beats(rec.beats.x[top])).numpy()
        titles = [f"beat {i} at {times[i]:.1f} s, score {scores[i]:.3g} {labels[i]}" for i in top]
        images["explain"] = report.explanation(rec.beats.x[top, 0], recs[:, 0], heat[top], titles)
        top_rows = [[i, f"{times[i]:.2f}", f"{scores[i]:.4g}", labels[i]] for i in top]
    report.write_html(folder / "report.html", summary, images, top_rows)
    return summary


def one_line(s: dict, folder: Path) -> str:
    line = (
        f"{s['record']}: {s['beats']} beats, {s['flagged']} flagged "
        f"({100 * s['flagged_fraction']:.1f}%) at {s['threshold']['name']}"
    )
    if s["classes"]:
        recall = ", ".join(
            f"{c} {v['recall']:.2f}" for c, v in s["classes"].items() if "recall" in v
        )
        normal = s["classes"].get("N")
        line += f"; recall {recall or '-'}"
        if normal:
            line += f"; N false alarms {normal['false_alarm_rate']:.3f}"
    return line + f"; {s['time_s']:.1f} s -> {folder}/report.html"
