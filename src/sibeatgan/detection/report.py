"""What `detect` writes per record: beats.csv, summary.json and report.html (the strip chart
with flagged beats marked, and the top flagged beats with their reconstruction and per-tick
error heat, the explanation figure of the BeatGAN paper)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sibeatgan.config import FS  # noqa: E402
from sibeatgan.datasets import CLASSES  # noqa: E402
from sibeatgan.io import write_text  # noqa: E402

ROW_S = 60.0  # seconds of record per strip-chart row
TOP_BEATS = 8  # flagged beats drawn with their explanation
GAP_ROWS = 100  # gaps listed in the report (summary.json holds all)


def png(fig) -> str:
    """A figure as a base64 PNG for an <img> (the report is one self-contained file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def strip_chart(
    signal: np.ndarray,
    times: np.ndarray,
    flags: np.ndarray,
    labels,
    left_out: list[tuple[float, float]] = (),
    fs: float = FS,
):
    """The record (the lead at `fs` Hz, NaN where not analysed) in rows of ROW_S seconds,
    flagged beats shaded red, stretches left out (gaps) grey, abnormal reference labels (when
    the record has annotations) marked above their beats, one colour per class."""
    per_row = int(ROW_S * fs)
    rows = max(1, int(np.ceil(len(signal) / per_row)))
    fig, axes = plt.subplots(rows, 1, figsize=(14, 0.9 * rows + 0.4), squeeze=False)
    lo, hi = _y_range(signal)
    labels = np.asarray(labels, dtype=str)
    kinds = [c for c in CLASSES[1:] if (labels == c).any()]
    colours = dict(
        zip(CLASSES[1:], ("tab:blue", "tab:green", "tab:purple", "tab:orange"), strict=True)
    )
    for r, ax in enumerate(axes[:, 0]):
        start, end = r * ROW_S, (r + 1) * ROW_S
        seg = signal[r * per_row : (r + 1) * per_row]
        ax.plot(start + np.arange(len(seg)) / fs, seg, lw=0.4, color="black")
        in_row = (times >= start) & (times < end)
        flagged = times[in_row & flags]
        ax.broken_barh([(t - 0.2, 0.5) for t in flagged], (lo, hi - lo), color="red", alpha=0.3)
        gaps = [(a, b - a) for a, b in left_out if b > start and a < end]
        ax.broken_barh(gaps, (lo, hi - lo), color="grey", alpha=0.3)
        for c in kinds:
            at = times[in_row & (labels == c)]
            ax.plot(at, np.full(len(at), hi), "v", ms=3, color=colours[c], label=c)
        ax.set_xlim(start, end)
        ax.set_ylim(lo, hi + 0.15 * (hi - lo))
        ax.set_yticks([])
        ax.set_xticks(np.arange(start, end + 1, 10))  # fixed: fast
        ax.tick_params(labelsize=6)
        ax.set_ylabel(f"{start / 60:.0f} min", fontsize=6)
    if kinds:
        handles = [plt.Line2D([], [], marker="v", ls="", color=colours[c]) for c in kinds]
        axes[0, 0].legend(handles, kinds, fontsize=6, loc="upper right", ncol=len(kinds))
    axes[-1, 0].set_xlabel("time (s)")
    return png(fig)


def _y_range(signal: np.ndarray) -> tuple[float, float]:
    """The 0.1-99.9 percentile range of the finite values (a unit range where there is none)."""
    finite = signal[np.isfinite(signal)]
    lo, hi = np.percentile(finite, [0.1, 99.9]) if len(finite) else (0.0, 1.0)
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(lo) + 0.5)


def explanation(beats: np.ndarray, recs: np.ndarray, heat: np.ndarray, titles: list[str]):
    """Each beat (black) with its reconstruction (red, dashed) and, under it, the per-tick
    squared error as a heat strip: where the beat departs from a normal one."""
    n = len(beats)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig = plt.figure(figsize=(3.6 * cols, 2.8 * rows))
    grid = fig.add_gridspec(rows, cols, hspace=0.35)
    for i in range(n):
        cell = grid[divmod(i, cols)].subgridspec(2, 1, height_ratios=[4, 1], hspace=0.05)
        ax = fig.add_subplot(cell[0])
        ax.plot(beats[i], color="black", lw=1, label="beat")
        ax.plot(recs[i], color="red", lw=1, ls="--", label="reconstruction")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(titles[i], fontsize=8)
        strip = fig.add_subplot(cell[1])
        strip.imshow(heat[i][None, :], aspect="auto", cmap="hot_r", interpolation="nearest")
        strip.set_xticks([])
        strip.set_yticks([])
        if i == 0:
            ax.legend(fontsize=6, loc="upper right")
    return png(fig)


def score_timeline(
    times: np.ndarray, scores: np.ndarray, flags: np.ndarray, threshold: float, unit: str = ""
):
    """The flagged values per beat against time (a log axis for scores, linear for z)."""
    fig, ax = plt.subplots(figsize=(14, 2.2))
    ax.scatter(times[~flags], scores[~flags], s=3, color="grey", label="beat")
    ax.scatter(times[flags], scores[flags], s=5, color="red", label="flagged")
    ax.axhline(threshold, color="red", lw=0.8, ls="--", label="threshold")
    positive = bool((scores > 0).all()) and threshold > 0
    ylabel = f"anomaly score{f' ({unit})' if unit else ''}"
    ax.set(xlabel="time (s)", ylabel=ylabel, yscale="log" if positive else "linear")
    ax.legend(fontsize=7, loc="upper right")
    return png(fig)


def _table(rows: list[list], head: list[str]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def _gap_section(s: dict) -> list[str]:
    """The gaps left out of the analysis, as a table (the first GAP_ROWS; all in summary.json)."""
    what = {"nan": "missing values (NaN)", "flat": "flat (one value: a dead lead)"}
    rows = [
        [g["lead"], f"{g['start_s']:.2f}", f"{g['end_s']:.2f}", what[g["kind"]]]
        for g in s["gaps"][:GAP_ROWS]
    ]
    lost = s.get("beats_in_gaps")
    note = "" if lost is None else f" {lost} annotated beat(s) fell in them or too near them."
    more = len(s["gaps"]) - len(rows)
    return [
        "<h2>Gaps: left out of the analysis</h2>",
        f"<p>Stretches with no ECG to analyse; the record was analysed around them, no beat "
        f"window crosses one.{note}</p>",
        _table(rows, ["lead", "start (s)", "end (s)", "what"]),
        f"<p>and {more} more: summary.json lists them all.</p>" if more > 0 else "",
    ]


def write_html(path: Path, summary: dict, images: dict[str, str], top_rows: list[list]) -> None:
    s = summary
    facts = [
        ["record", s["record"]],
        ["duration", f"{s['duration_s'] / 60:.1f} min at {s['fs']:g} Hz, lead {s['lead']}"],
        ["analysed", f"{s['analysed_s'] / 60:.1f} min ({len(s['gaps'])} gaps left out)"],
        ["beats", f"{s['beats']} ({s['beat_source']})"],
        ["flagged", f"{s['flagged']} ({100 * s['flagged_fraction']:.1f}%)"],
        ["threshold", f"{s['threshold']['name']} = {s['threshold']['value']:.5g}"],
        ["scoring", "record-adaptive (robust z)" if s.get("scoring") == "adaptive" else "per beat"],
        ["model", f"{s['model']['spec']} ({s['model'].get('role', '?')})"],
    ]
    classes = s.get("classes") or {}
    class_rows = [
        [c, v["beats"], v["flagged"], f"{v.get('recall', v.get('false_alarm_rate')):.3f}"]
        for c, v in classes.items()
    ]
    parts = [
        f"<h1>Beat detection: record {html.escape(str(s['record']))}</h1>",
        _table(facts, ["", ""]),
    ]
    parts += [f"<p class='warn'>{html.escape(w)}</p>" for w in s["warnings"]]
    if s["gaps"]:
        parts += _gap_section(s)
    if class_rows:
        parts += [
            "<h2>Against the reference annotations</h2>",
            "<p>Recall for abnormal classes; for N, the false-alarm rate.</p>",
            _table(class_rows, ["class", "beats", "flagged", "recall / false alarms"]),
        ]
    parts += [
        "<h2>Anomaly score per beat</h2>",
        f'<img src="data:image/png;base64,{images["timeline"]}">',
    ]
    if "explain" in images:
        parts += [
            f"<h2>Top {len(top_rows)} flagged beats: why</h2>",
            "<p>Each beat (black) with the model's reconstruction of it (red, dashed); the strip "
            "under it is the squared error per tick: dark where the beat departs from the "
            "normal beats the model learnt.</p>",
            f'<img src="data:image/png;base64,{images["explain"]}">',
            _table(top_rows, ["beat", "time (s)", "score", "label"]),
        ]
    parts += [
        "<h2>The record</h2><p>Flagged beats shaded red, gaps grey; abnormal beats of the "
        "reference annotations marked above them.</p>",
        f'<img src="data:image/png;base64,{images["strip"]}">',
    ]
    style = (
        "body{font-family:sans-serif;max-width:1400px;margin:auto}img{max-width:100%}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
        ".warn{color:#a40}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(str(s['record']))}"
        f" beat detection</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
    write_text(path, page)
