"""`sibeatgan detect` on real, messy recordings: gaps of missing values and dead (flat)
stretches, any sampling rate, dead leads, annotations cut short, absurd headers, a damaged
model, and the integrity of what it writes. Property-based tests (hypothesis) generate WFDB
records with all of these at once: the answer is either one line of a project error, or
outputs that are finite and add up."""

from __future__ import annotations

import csv
import html
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import wfdb
from click.testing import CliRunner
from conftest import detector_with_score, mitdb_dir
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import signal as sps

from sibeatgan.cli import main
from sibeatgan.data.beats import FLAT_S, resample_factor
from sibeatgan.datasets.mitdb import CLASS_OF_SYMBOL
from sibeatgan.detection import report
from sibeatgan.detection import run as detect_run
from sibeatgan.detection.model import resolve_detector
from sibeatgan.detection.records import TAIL_S, RecordError, read_for_detection
from sibeatgan.io import exclusive_folder, read_json

BEFORE, AFTER = 140, 180  # the detector's window at 360 Hz (tiny_overrides keeps the default)
FILES = {"beats.csv", "summary.json", "report.html"}


# ---------------------------------------------------------------- synthetic records


def _bump(t: np.ndarray, centre: float, width: float, amp: float) -> np.ndarray:
    return amp * np.exp(-0.5 * ((t - centre) / width) ** 2)


def ecg(
    fs: float, symbols: list[str], seed: int = 0, early: dict[int, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Two leads [n, 2] at `fs` Hz, one beat a second from 0.5 s to 1.5 s before the end (N
    narrow and upright, V wide and inverted, others wide and upright; beat i `early[i]` s
    early), and each beat's R sample. The shapes are conftest.write_record's, in seconds, so
    any rate holds them."""
    n = int(round((len(symbols) + 1) * fs))
    t = np.arange(n) / fs
    rng = np.random.default_rng(seed)
    mlii = 0.02 * rng.standard_normal(n)
    r_s = (
        np.arange(len(symbols))
        + 0.5
        - np.array([(early or {}).get(i, 0.0) for i in range(len(symbols))])
    )
    samples = np.round(r_s * fs).astype(np.int64)
    for s, sym in zip(samples, symbols, strict=True):
        r = s / fs
        if sym == "N":
            mlii += _bump(t, r, 4 / 360, 1.2) + _bump(t, r + 0.25, 18 / 360, 0.3)
        else:
            amp = -1.0 if sym == "V" else 0.9
            mlii += _bump(t, r, 10 / 360, amp) + _bump(t, r + 100 / 360, 25 / 360, 0.25)
    return np.stack([mlii, 0.5 * mlii + 0.02 * rng.standard_normal(n)], axis=1), samples


def write(folder: Path, name: str, sig: np.ndarray, fs: float, samples=None, symbols=None) -> Path:
    """WFDB files of a two-lead record (MLII, V1; NaN stored as WFDB's missing value)."""
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        name, fs=fs, units=["mV", "mV"], sig_name=["MLII", "V1"], p_signal=sig,
        fmt=["16", "16"], adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(folder),
    )  # fmt: skip
    if samples is not None:
        wfdb.wrann(name, "atr", sample=np.asarray(samples), symbol=symbols, write_dir=str(folder))
    return folder / name


def detect(*args: str):
    return CliRunner().invoke(main, ["detect", *args])


def one_line_error(result, *words: str) -> str:
    """The call failed with exactly one line, an `Error:` naming `words`."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: "), result.output
    assert sum(line.startswith("Error") for line in lines) == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


def record_folders(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def rows_of(folder: Path) -> list[dict]:
    return list(csv.DictReader((folder / "beats.csv").open()))


@pytest.fixture(scope="module")
def detector(model_dir):
    return resolve_detector(str(model_dir))


SYMBOLS = ["N", "N", "V", "N", "N", "A", "N", "N", "F", "N"] * 4  # 40 beats, 41 s


# ---------------------------------------------------------------- gaps


@pytest.mark.parametrize("annotated", [True, False])
def test_a_nan_gap_is_left_out_reported_and_the_rest_analysed(model_dir, tmp_path, annotated):
    # the QRS detector misses the synthetic wide beats: without annotations, N beats only
    symbols = SYMBOLS if annotated else ["N"] * 40
    sig, samples = ecg(360, symbols)
    sig[7164:7992, 0] = np.nan  # 19.9-22.2 s: the beats at 20.5 and 21.5 s
    path = write(tmp_path, "gap", sig, 360, *((samples, symbols) if annotated else ()))
    out = tmp_path / "out"
    result = detect(str(path), "--model", str(model_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "1 gap(s) (nan; 2.3 s in lead MLII) left out" in result.stderr
    summary = read_json(out / "gap" / "summary.json")
    assert summary["gaps"] == [{"lead": "MLII", "start_s": 19.9, "end_s": 22.2, "kind": "nan"}]
    rows = rows_of(out / "gap")
    assert summary["beats"] == len(rows) and all(np.isfinite(float(r["score"])) for r in rows)
    # the beats at 20.5 and 21.5 s sit in the gap; those at 19.5 and 22.5 s have windows that
    # would reach into it ([R - 0.39 s, R + 0.5 s)); every other beat is there
    times = np.array([float(r["time_s"]) for r in rows])
    assert not ((times > 19.4) & (times < 22.6)).any()
    if annotated:
        assert len(rows) == 40 - 4 and summary["beats_in_gaps"] == 4
        assert summary["classes"]["N"]["beats"] == 28 - 3 and summary["classes"]["V"]["beats"] == 3
    else:
        assert len(rows) == 36 and summary["beats_in_gaps"] is None
    page = (out / "gap" / "report.html").read_text()
    assert "Gaps: left out of the analysis" in page and "missing values (NaN)" in page


Z_RHYTHM = {
    "name": "mse_z_rhythm",
    "params": {"w_mse_z": 1.0, "w_prematurity": -2.0, "w_pause": 0.5},
}


def test_a_detector_of_beat_timing_reads_each_stretch_between_gaps_apart(model_dir, tmp_path):
    """mse_rhythm through detect: a beat 0.3 s early reads prematurity 0.7 and pause 1.3, the
    score is the detector's mix of log mse and their logs, and a gap is never read as a pause
    (the beats either side of it start and end a stretch of their own)."""
    from sibeatgan.detection.records import read_for_detection

    sig, samples = ecg(360, SYMBOLS, early={12: 0.3})
    sig[7164:7992, 0] = np.nan  # 19.9-22.2 s, as above: beats 19-22 are lost
    path = write(tmp_path / "in", "timed", sig, 360, samples, SYMBOLS)
    params = {"w_mse": 1.0, "w_prematurity": -2.0, "w_pause": 0.5}
    folder = detector_with_score(model_dir, tmp_path, {"name": "mse_rhythm", "params": params})
    out = tmp_path / "out"
    result = detect(str(path), "--model", str(folder), "--out", str(out), "--scoring", "beat")
    assert result.exit_code == 0, result.output
    rows = rows_of(out / "timed")
    time_s = np.array([float(r["time_s"]) for r in rows])
    timing = np.array([[float(r["prematurity"]), float(r["pause"])] for r in rows])
    early = int(np.argmin(np.abs(time_s - 12.2)))
    assert timing[early] == pytest.approx([0.7, 1.3], abs=0.01)
    before_gap, after_gap = np.flatnonzero(time_s < 19.9)[-1], np.flatnonzero(time_s > 22.2)[0]
    assert timing[before_gap, 1] == 1.0 and timing[after_gap, 0] == 1.0
    assert timing[after_gap + 1, 0] == 1.0  # no interval before the stretch's first interval
    plain = read_for_detection(str(path), resolve_detector(str(model_dir)), None)
    mse = resolve_detector(str(model_dir)).run(plain.beats.x)[0]
    want = np.log(mse) - 2 * np.log(plain.timing[:, 0]) + 0.5 * np.log(plain.timing[:, 1])
    np.testing.assert_allclose([float(r["score"]) for r in rows], want, rtol=1e-4, atol=1e-4)


def test_a_score_comparing_a_beat_with_its_record_refuses_a_short_record(model_dir, tmp_path):
    sig, samples = ecg(360, SYMBOLS[:20])
    path = write(tmp_path / "in", "short", sig, 360, samples, SYMBOLS[:20])
    folder = detector_with_score(model_dir, tmp_path, Z_RHYTHM)
    out = tmp_path / "out"
    result = detect(str(path), "--model", str(folder), "--out", str(out))
    one_line_error(result, "record short has 20 beats", "'mse_z_rhythm'", "at least 30")
    assert record_folders(out) == []


def test_a_score_comparing_a_beat_with_its_record_flags_per_beat_at_5_percent(model_dir, tmp_path):
    sig, samples = ecg(360, SYMBOLS, early={12: 0.3})
    path = write(tmp_path / "in", "rec", sig, 360, samples, SYMBOLS)
    folder = detector_with_score(model_dir, tmp_path, Z_RHYTHM)
    meta = read_json(folder / "detector.json")
    out = tmp_path / "out"
    result = detect(str(path), "--model", str(folder), "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = read_json(out / "rec" / "summary.json")
    assert summary["scoring"] == "beat" and "warning" not in result.stderr
    value = meta["thresholds"]["alarm_0.05"]
    assert summary["threshold"] == {"name": "alarm_0.05", "value": value}
    rows = rows_of(out / "rec")
    scores = np.array([float(r["score"]) for r in rows])
    assert [int(r["flag"]) for r in rows] == [int(s >= value) for s in scores]


def test_a_flat_stretch_is_a_gap_a_short_one_is_not(model_dir, tmp_path):
    sig, samples = ecg(360, SYMBOLS)
    level = sig[int(10.2 * 360), 0]
    sig[int(10.2 * 360) : int(13.2 * 360), 0] = level  # 3 s at one value: a dead stretch
    sig[int(30.0 * 360) : int(31.0 * 360), 0] = level  # 1 s: a flat line, but not dead
    path = write(tmp_path, "flat", sig, 360, samples, SYMBOLS)
    out = tmp_path / "out"
    result = detect(str(path), "--model", str(model_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = read_json(out / "flat" / "summary.json")
    (gap,) = summary["gaps"]
    assert gap["kind"] == "flat" and gap["lead"] == "MLII"
    assert gap["start_s"] <= 10.2 and 13.2 <= gap["end_s"] < 13.2 + 0.05
    assert summary["beats_in_gaps"] == 4  # 10.5, 11.5 and 12.5 s in it; 13.5 s too near


def test_a_dead_lead_is_one_line_naming_it_and_another_lead_works(model_dir, tmp_path):
    sig, samples = ecg(360, SYMBOLS)
    sig[:, 0] = 0.0
    path = write(tmp_path, "dead", sig, 360, samples, SYMBOLS)
    out = tmp_path / "out"
    result = detect(str(path), "--model", str(model_dir), "--out", str(out))
    one_line_error(result, "lead MLII is flat", "throughout", "--lead", "MLII, V1")
    assert not out.exists()
    result = detect(str(path), "--model", str(model_dir), "--out", str(out), "--lead", "V1")
    assert result.exit_code == 0, result.output
    assert read_json(out / "dead" / "summary.json")["beats"] == 40


def test_a_record_mostly_gap_is_one_line(model_dir, tmp_path):
    sig, samples = ecg(360, SYMBOLS)
    sig[int(5 * 360) : int(30 * 360), 0] = np.nan
    path = write(tmp_path, "holey", sig, 360, samples, SYMBOLS)
    out = tmp_path / "out"
    result = detect(str(path), "--model", str(model_dir), "--out", str(out))
    one_line_error(result, "holey", "only 39%", "missing (NaN) for 61%", "--lead")
    assert not out.exists()


# ---------------------------------------------------------------- sampling rates


@pytest.mark.parametrize("fs", [128.0, 257.0, 360.1, 500.5, 1000.0])
def test_any_rate_keeps_the_beats_on_their_r_peaks(detector, tmp_path, fs):
    """The same beats as at 360 Hz, each at its annotation's own sample exactly, its window's
    R peak where training put it (tick 140). HEAD rounded 360/360.1 to 1/1 and left the
    signal unresampled while scaling the annotations: beats drifted off their peaks."""
    symbols = SYMBOLS * 4  # 160 s: a drift of 1/3600 would move the last beats 45 ms
    sig, samples = ecg(fs, symbols, seed=3)
    ref_sig, ref_samples = ecg(360.0, symbols, seed=3)
    paths = (
        write(tmp_path, "r", sig, fs, samples, symbols),
        write(tmp_path, "ref", ref_sig, 360.0, ref_samples, symbols),
    )
    rec, ref = (read_for_detection(str(p), detector, "MLII") for p in paths)
    assert len(rec.beats.cls) == len(ref.beats.cls) == 160
    np.testing.assert_array_equal(rec.beats.cls, ref.beats.cls)
    np.testing.assert_array_equal(rec.beats.sample, samples)  # the annotations, exactly
    np.testing.assert_allclose(rec.times, ref.times, atol=0.5 / fs)
    normal = rec.beats.cls == 0
    peak = np.argmax(rec.beats.x[normal, 0], axis=1)
    assert np.abs(peak - BEFORE).max() <= 1, np.unique(peak)


@pytest.mark.parametrize("fs", [257.0, 360.1, 500.5, 1000.0])
def test_mitbih_at_other_rates_gives_the_beats_of_360_hz(detector, tmp_path, fs):
    """Five minutes of record 119 resampled to `fs` (signal and annotations): the same beats,
    classes and (to a sample) times as the record itself."""
    if mitdb_dir() is None:
        pytest.skip("needs MIT-BIH (MITDB_DIR)")
    src = str(mitdb_dir() / "119")
    n = 300 * 360
    rec = wfdb.rdrecord(src, sampto=n)
    ann = wfdb.rdann(src, "atr", sampto=n)
    ref = write(tmp_path, "ref", rec.p_signal, 360.0, ann.sample, ann.symbol)
    factor = resample_factor(360.0, fs)
    sig = sps.resample_poly(rec.p_signal, factor.numerator, factor.denominator, axis=0)
    at = np.round(ann.sample * float(factor)).astype(np.int64)
    path = write(tmp_path, "other", sig, fs, at, ann.symbol)
    mine, theirs = (read_for_detection(str(p), detector, "MLII") for p in (path, ref))
    assert len(theirs.beats.cls) == 326
    np.testing.assert_array_equal(mine.beats.cls, theirs.beats.cls)
    np.testing.assert_allclose(mine.times, theirs.times, atol=1.0 / fs + 1e-9)


@pytest.mark.parametrize("annotated", [True, False])
def test_record_119_with_a_nan_gap_keeps_its_beats_and_reports_the_gap(
    detector, tmp_path, annotated
):
    """The issue's case: a 1.4 s NaN gap in record 119's MLII (30 minutes). Before, the QRS
    detector found no peak in the whole record and every N beat was lost."""
    if mitdb_dir() is None:
        pytest.skip("needs MIT-BIH (MITDB_DIR)")
    src = str(mitdb_dir() / "119")
    rec = wfdb.rdrecord(src)
    ann = wfdb.rdann(src, "atr")
    labels = (ann.sample, ann.symbol) if annotated else (None, None)
    sig = rec.p_signal.copy()
    start = 600 * 360
    sig[start : start + round(1.4 * 360), 0] = np.nan
    mine = read_for_detection(str(write(tmp_path, "gap", sig, 360.0, *labels)), detector, "MLII")
    clean = write(tmp_path, "clean", rec.p_signal, 360.0, *labels)
    ref = read_for_detection(str(clean), detector, "MLII")
    assert [(g["lead"], g["kind"]) for g in mine.gap_rows()] == [("MLII", "nan")]
    gap = mine.gap_rows()[0]
    assert gap["start_s"] == pytest.approx(600, abs=0.01)
    assert gap["end_s"] - gap["start_s"] == pytest.approx(1.4, abs=0.01)
    assert np.isfinite(mine.beats.x).all()
    # every beat of the clean record is kept but those within a window of the gap
    assert len(ref.beats.cls) > 1900
    assert len(ref.beats.cls) - 6 <= len(mine.beats.cls) <= len(ref.beats.cls)
    if annotated:
        assert mine.beats_in_gaps == len(ref.beats.cls) - len(mine.beats.cls)
        assert (mine.beats.cls == 0).sum() >= (ref.beats.cls == 0).sum() - 6


@pytest.mark.parametrize(
    ("fs", "shown"), [("0", "0 Hz"), ("50", "50 Hz"), ("1000000", "1e+06 Hz"), ("0.001", "0.001")]
)
def test_an_absurd_sampling_rate_is_one_line(model_dir, tmp_path, fs, shown):
    sig, samples = ecg(360, SYMBOLS)
    write(tmp_path, "ok", sig, 360, samples, SYMBOLS)
    header = (tmp_path / "ok.hea").read_text().splitlines()
    header[0] = header[0].replace(" 360 ", f" {fs} ")
    (tmp_path / "odd.hea").write_text("\n".join(header) + "\n")
    shutil.copy(tmp_path / "ok.dat", tmp_path / "odd.dat")
    out = tmp_path / "out"
    result = detect(str(tmp_path / "odd"), "--model", str(model_dir), "--out", str(out))
    one_line_error(result, "odd", shown, "outside 100-20000 Hz", "header")
    assert not out.exists()


# ---------------------------------------------------------------- annotations cut short


def test_annotations_cut_short_warn_and_the_rest_comes_from_the_qrs_detector(model_dir, tmp_path):
    sig, samples = ecg(360, SYMBOLS[:15] + ["N"] * 25)  # the QRS detector misses wide beats
    path = write(tmp_path, "cut", sig, 360, samples[:15], SYMBOLS[:15])
    out = tmp_path / "out"
    result = detect(str(path), "--model", str(model_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    warning = "warning: record cut's annotations stop at 14.5 s of 41.0 s"
    tail = "; the beats after that come from the QRS detector, unlabelled (not in the per-class "
    tail += "figures)"
    assert [line for line in result.stderr.splitlines() if "warning" in line] == [warning + tail]
    summary = read_json(out / "cut" / "summary.json")
    assert summary["annotations_stop_s"] == 14.5 and summary["warnings"][0].startswith(warning)
    assert summary["unlabelled_beats"] == 25 and summary["beats"] == 40
    assert sum(c["beats"] for c in summary["classes"].values()) == 15
    rows = rows_of(out / "cut")
    assert [r["label"] == "" for r in rows] == [False] * 15 + [True] * 25
    times = np.array([float(r["time_s"]) for r in rows])
    np.testing.assert_allclose(times, samples / 360, atol=0.02)
    assert html.escape(warning) in (out / "cut" / "report.html").read_text()


def test_an_annotation_file_cut_mid_annotation_is_read_to_the_cut(model_dir, tmp_path):
    symbols = SYMBOLS[:10] + ["N"] * 30
    sig, samples = ecg(360, symbols)
    path = write(tmp_path, "torn", sig, 360, samples, symbols)
    atr = tmp_path / "torn.atr"
    data = atr.read_bytes()
    atr.write_bytes(data[: len(data) // 4 * 2 + 1])  # an odd length: wfdb cannot read it
    out = tmp_path / "out"
    result = detect(str(path), "--model", str(model_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "torn.atr ends mid-annotation (cut short)" in result.stderr
    summary = read_json(out / "torn" / "summary.json")
    assert 10 < summary["annotations_stop_s"] < 30 and summary["beats"] == 40


# ---------------------------------------------------------------- the model


def test_a_model_giving_non_finite_scores_is_one_line(
    model_dir, tmp_path, two_records, monkeypatch
):
    """Weights that overflow on some beats only (loading checks them on a plain beat): a
    non-finite score on the second record stops the call, nothing written for either."""
    real = detect_run.scores_with_progress

    def overflowing(detector, rec):
        scores, heat = real(detector, rec)
        if rec.name == "b":
            scores[3], heat[3] = np.inf, np.nan
        return scores, heat

    monkeypatch.setattr(detect_run, "scores_with_progress", overflowing)
    out = tmp_path / "out"
    result = detect(*two_records, "--model", str(model_dir), "--out", str(out))
    one_line_error(result, "non-finite scores for 1 of 20", "record b", "weights are damaged")
    assert not out.exists()


# ---------------------------------------------------------------- what detect writes


@pytest.fixture
def two_records(tmp_path) -> list[str]:
    paths = []
    for i, name in enumerate(["a", "b"]):
        sig, samples = ecg(360, SYMBOLS[:20], seed=i)
        paths.append(str(write(tmp_path / "in", name, sig, 360, samples, SYMBOLS[:20])))
    return paths


def test_a_record_folder_is_replaced_whole(model_dir, tmp_path, two_records):
    out = tmp_path / "out"
    assert detect(*two_records, "--model", str(model_dir), "--out", str(out)).exit_code == 0
    (out / "a" / "stale.csv").write_text("from an earlier call\n")
    result = detect(two_records[0], "--model", str(model_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert {p.name for p in (out / "a").iterdir()} == FILES
    assert record_folders(out) == ["a", "b"]  # b, not in this call, stays as it was


def test_out_in_use_is_one_line_and_writes_nothing(model_dir, tmp_path, two_records):
    out = tmp_path / "out"
    with exclusive_folder(out, "detect"):
        result = detect(*two_records, "--model", str(model_dir), "--out", str(out))
    one_line_error(result, "in use by another detect")
    assert record_folders(out) == []


def test_a_record_named_dotdot_stays_inside_out(model_dir, tmp_path):
    sig, samples = ecg(360, SYMBOLS[:20])
    write(tmp_path / "in", "x", sig, 360, samples, SYMBOLS[:20])
    for ext in ("hea", "atr"):  # a record whose name is `..`: files ...hea, ...atr
        (tmp_path / "in" / f"x.{ext}").rename(tmp_path / "in" / f"...{ext}")
    out = tmp_path / "work" / "out"
    result = detect(str(tmp_path / "in" / ".."), "--model", str(model_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (
        record_folders(out) == ["record"] and {p.name for p in (out / "record").iterdir()} == FILES
    )
    assert [p.name for p in out.parent.iterdir() if not p.name.startswith(".")] == ["out"]
    assert read_json(out / "record" / "summary.json")["record"] == ".."


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_call_stopped_on_its_second_record_leaves_nothing(
    model_dir,
    tmp_path,
    two_records,
    monkeypatch,
    stop,
):
    """Ctrl-C or SIGTERM (which `main` turns into KeyboardInterrupt) or a failure while the
    second record is written: no file of the call anywhere, the earlier call's as it was."""
    out = tmp_path / "out"
    assert detect(two_records[0], "--model", str(model_dir), "--out", str(out)).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    written = []
    real = report.write_html

    def fail_on_second(path, *args):
        written.append(Path(path).parent.name)
        if len(written) == 2:
            raise stop("stopped")
        return real(path, *args)

    monkeypatch.setattr(report, "write_html", fail_on_second)
    result = detect(*two_records, "--model", str(model_dir), "--out", str(out))
    assert result.exit_code != 0 and written == ["a", "b"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert record_folders(out) == ["a"]  # no b, no staging folder


def test_a_failed_move_into_place_puts_back_what_it_moved(
    model_dir, tmp_path, two_records, monkeypatch
):
    out = tmp_path / "out"
    assert detect(*two_records, "--model", str(model_dir), "--out", str(out)).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real, moves = os.replace, []

    def replace(src, dst):
        moves.append(dst)
        if len(moves) == 3:  # a's old folder away, a's new one in, b's old one away: fails
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(detect_run, "os", SimpleNamespace(replace=replace))  # commit's moves
    result = detect(*two_records, "--model", str(model_dir), "--out", str(out))
    one_line_error(result, "cannot move the results into", "nothing of this call was kept")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_what_a_killed_call_left_is_removed_by_the_next(model_dir, tmp_path, two_records):
    out = tmp_path / "out"
    left = out / ".detect-staging-killed" / "a"  # detect_run.STAGING_PREFIX
    left.mkdir(parents=True)
    (left / "beats.csv").write_text("beat\n")
    result = detect(two_records[1], "--model", str(model_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert record_folders(out) == ["b"]


def test_signals_wait_until_the_records_are_moved_into_place():
    got = []
    previous = signal.signal(signal.SIGTERM, lambda *_: got.append("TERM"))
    try:
        with detect_run.signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert got == []
        time.sleep(0.01)
        assert got == ["TERM"]
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- properties (hypothesis)

# a small, deterministic budget: the whole file stays well under a minute on one thread
MESSY = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RATES = st.one_of(
    st.sampled_from([100.0, 128.0, 250.0, 257.0, 360.0, 500.5, 1000.0, 2000.0]),
    st.integers(1000, 20000).map(lambda k: k / 10),  # 100.0-2000.0 Hz in 0.1 Hz steps
)


@dataclass
class Messy:
    fs: float
    symbols: list[str]
    gaps: list[tuple[float, float, str]]  # start (s), length (s), nan | flat; in MLII
    annotated: bool
    keep: int | None  # annotations kept (the file cut short), None: all
    seed: int
    v1_nan: bool  # NaN in V1, a lead the one-lead detector does not read
    sig: np.ndarray = field(init=False, repr=False)
    samples: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.sig, self.samples = ecg(self.fs, self.symbols, self.seed)
        rng = np.random.default_rng(self.seed)
        for start, length, kind in self.gaps:
            a, b = self.stretch(start, length)
            self.sig[a:b, 0] = np.nan if kind == "nan" else round(rng.uniform(-1, 1), 2)
        if self.v1_nan:
            self.sig[: len(self.sig) // 3, 1] = np.nan

    @property
    def n(self) -> int:
        return len(self.sig)

    def stretch(self, start: float, length: float) -> tuple[int, int]:
        a = min(int(start * self.fs), self.n - 1)
        return a, min(self.n, a + max(1, int(length * self.fs)))

    def untouched(self, at: np.ndarray, before: float, after: float) -> np.ndarray:
        """Whether [at - before, at + after) misses every stretch the generator tampered with."""
        touched = np.zeros(self.n + 1, dtype=int)
        for start, length, _ in self.gaps:
            a, b = self.stretch(start, length)
            touched[a + 1 : b + 1] = 1
        inside = np.cumsum(touched)  # tampered samples before each index
        lo = np.clip(np.floor(at - before).astype(int), 0, self.n)
        hi = np.clip(np.ceil(at + after).astype(int), 0, self.n)
        return inside[hi] == inside[lo]

    def write(self, folder: Path) -> Path:
        keep = slice(None, self.keep)
        ann = (self.samples[keep], self.symbols[keep]) if self.annotated else ()
        return write(folder, "messy", self.sig, self.fs, *ann)


def dead_ecg(path: Path) -> np.ndarray:
    """Which samples of the written record's MLII hold no ECG: non-finite, or in a run of one
    value FLAT_S long or longer (an oracle independent of the code under test)."""
    rec = wfdb.rdrecord(str(path), channel_names=["MLII"])
    x = rec.p_signal[:, 0]
    dead = ~np.isfinite(x)
    i = 0
    for value, run in groupby(x.tolist()):
        k = len(list(run))
        if np.isfinite(value) and k >= FLAT_S * rec.fs:
            dead[i : i + k] = True
        i += k
    return dead


@st.composite
def messy_records(draw) -> Messy:
    n_beats = draw(st.integers(12, 40))
    duration = n_beats + 1
    lengths = {  # seconds: within a beat's window, a few beats, much of the record
        "short": st.floats(0.002, 1.0),
        "medium": st.floats(1.0, 6.0),
        "long": st.floats(6.0, 1.2 * duration),
    }
    gap = st.tuples(
        st.floats(0, duration),
        st.sampled_from(["short", "short", "medium", "medium", "long"]).flatmap(lengths.get),
        st.sampled_from(["nan", "flat"]),
    )
    annotated = draw(st.booleans())
    return Messy(
        fs=draw(RATES),
        symbols=draw(st.lists(st.sampled_from("NNNNNNVAF"), min_size=n_beats, max_size=n_beats)),
        gaps=draw(st.lists(gap, max_size=4)),
        annotated=annotated,
        keep=draw(st.none() | st.integers(1, n_beats)) if annotated else None,
        seed=draw(st.integers(0, 2**16)),
        v1_nan=draw(st.booleans()),
    )


def _check_record(m: Messy, rec, dead: np.ndarray) -> None:
    """What every analysed record satisfies."""
    factor = float(resample_factor(m.fs))
    # every beat window finite and normalised; gaps reported exactly where the ECG is missing
    assert np.isfinite(rec.beats.x).all() and np.abs(rec.beats.x).max() <= 1.0
    assert {g.lead for g in rec.gaps} <= {"MLII"}  # V1's NaN: not a lead the detector reads
    reported = np.zeros(m.n, dtype=bool)
    for g in rec.gaps:
        assert g.kind in ("nan", "flat") and g.start < g.end
        reported[g.start : g.end] = True
    assert np.array_equal(reported, dead)
    # analysed stretches never touch a gap; every window lies inside one stretch
    for a, b in rec.segments:
        assert not reported[a:b].any()
    starts = np.array([a for a, _ in rec.segments])
    ends = np.array([b for _, b in rec.segments])
    own = rec.beats.sample
    idx = np.searchsorted(starts, own, side="right") - 1
    assert (idx >= 0).all()
    assert (own - BEFORE / factor >= starts[idx] - 1).all()
    assert (own + AFTER / factor <= ends[idx] + 1).all()
    assert rec.analysed_s <= m.n / m.fs and len(rec.left_out_s()) >= (len(rec.segments) > 1)
    # beats the QRS detector found, where no stretch was tampered with (a step between two
    # short flat stretches is ECG by the definition, and may pass for a beat): on R peaks
    clean = m.untouched(own, BEFORE / factor + 2, AFTER / factor + 2)
    found = clean & (rec.beats.cls == -1)
    off = np.abs(own[found, None] - m.samples[None, :]).min(axis=1, initial=m.n)
    assert (off <= 0.1 * m.fs).all(), "a detected beat is off every R peak (100 ms)"
    if not m.annotated:
        assert (rec.beats.cls == -1).all() and rec.beats_in_gaps is None
        return
    # annotated beats: on their annotation's sample, with its class; every one accounted for
    kept = slice(None, m.keep)
    samples, symbols = m.samples[kept], m.symbols[kept]
    labelled = rec.beats.cls >= 0
    at = np.searchsorted(samples, own[labelled])
    assert np.array_equal(samples[at], own[labelled])
    assert [CLASS_OF_SYMBOL[symbols[i]] for i in at] == rec.beats.cls[labelled].tolist()
    assert labelled.sum() + rec.beats.dropped_n + rec.beats_in_gaps == len(samples)
    normal = rec.beats.x[clean & labelled & (rec.beats.cls == 0), 0]
    assert (np.abs(np.argmax(normal, axis=1) - BEFORE) <= 2).all(), "a beat is off its R peak"
    # annotations cut short: said so, and the rest found by the QRS detector, unlabelled
    stop = samples[-1] / m.fs
    if m.n / m.fs - stop > TAIL_S + 1:
        assert rec.annotations_stop_s == pytest.approx(stop)
        assert any("annotations stop at" in w for w in rec.warnings)
        assert (rec.times[~labelled] > stop).all()
    elif m.n / m.fs - stop < TAIL_S - 1:
        assert rec.annotations_stop_s is None and labelled.all()


@MESSY
@given(m=messy_records())
def test_any_messy_record_is_analysed_soundly_or_refused_in_one_line(detector, m: Messy):
    with tempfile.TemporaryDirectory() as tmp:
        path = m.write(Path(tmp))
        dead = dead_ecg(path)
        try:
            rec = read_for_detection(str(path), detector, "MLII")
        except RecordError as err:
            message = str(err)
            assert "\n" not in message and "messy" in message
            assert "--lead" in message or "no beats found" in message, message
            assert dead.mean() > 0.3, f"refused, with only {dead.mean():.0%} missing: {message}"
            why = "lead dead throughout" if "throughout" in message else "mostly gap"
            event(f"refused in one line: {'no beats' if 'no beats' in message else why}")
            return
    assert dead.mean() < 0.5, "a record mostly without ECG must be refused"
    _check_record(m, rec, dead)
    event(f"analysed: {len(rec.segments)} stretch(es)")
    event("annotated" if m.annotated else "QRS detector")
    if rec.annotations_stop_s is not None:
        event("annotations cut short")
    for kind in sorted({g.kind for g in rec.gaps}):
        event(f"{kind} gap reported")


@settings(MESSY, max_examples=15)
@given(m=messy_records())
def test_detect_on_any_messy_record_writes_consistent_files_or_nothing(model_dir, m: Messy):
    with tempfile.TemporaryDirectory() as tmp:
        path, out = m.write(Path(tmp)), Path(tmp) / "out"
        result = detect(str(path), "--model", str(model_dir), "--out", str(out))
        if result.exit_code != 0:
            one_line_error(result)
            event("refused in one line")
            assert not out.exists()
            return
        assert record_folders(out) == ["messy"]
        assert {p.name for p in (out / "messy").iterdir()} == FILES
        summary = read_json(out / "messy" / "summary.json")
        rows = rows_of(out / "messy")
        scores = np.array([float(r["score"]) for r in rows])
        flags = np.array([int(r["flag"]) for r in rows])
        assert summary["beats"] == len(rows) > 0 and np.isfinite(scores).all()
        assert summary["flagged"] == flags.sum()
        assert summary["analysed_s"] <= summary["duration_s"]
        assert all(
            g["kind"] in ("nan", "flat") and g["start_s"] < g["end_s"] for g in summary["gaps"]
        )
        assert bool(summary["gaps"]) == bool(dead_ecg(path).any())
        if m.annotated:
            labelled = sum(r["label"] != "" for r in rows)
            assert sum(c["beats"] for c in summary["classes"].values()) == labelled
            assert summary["unlabelled_beats"] == len(rows) - labelled
        page = (out / "messy" / "report.html").read_text()
        assert ("Gaps: left out" in page) == bool(summary["gaps"])
