"""`sibeatgan detect` on synthetic WFDB records: the beats are the ones `preprocess` makes, any
sampling rate works, every bad input is one line and writes nothing."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import synthetic_symbols, write_record

from sibeatgan.cli import main
from sibeatgan.data.preprocess import load_data
from sibeatgan.detection.model import resolve_detector
from sibeatgan.detection.records import read_for_detection
from sibeatgan.evaluation import scores as scores_mod
from sibeatgan.evaluation.detector import (
    ALARM_RATES,
    adaptive_thresholds_on_val,
    alarm_key,
    thresholds_on_val,
)
from sibeatgan.io import read_json


def detect(*args: str) -> object:
    return CliRunner().invoke(main, ["detect", *args])


def test_detect_beats_are_the_beats_preprocess_makes(prepared, model_dir, synthetic_mitdb):
    data = load_data(prepared)
    detector = resolve_detector(str(model_dir))
    for record in (100, 103):
        rec = read_for_detection(str(synthetic_mitdb / str(record)), detector, "MLII")
        mine = data.records == record
        assert rec.annotated and rec.fs == 360
        np.testing.assert_array_equal(rec.beats.sample, data.samples[mine])
        np.testing.assert_array_equal(rec.beats.cls, data.classes[mine])
        np.testing.assert_array_equal(rec.beats.x, data.beats[mine][:, :1])


@pytest.mark.parametrize(("fs", "scoring"), [(360, "auto"), (250, "adaptive"), (360, "beat")])
def test_detect_writes_csv_summary_and_report(model_dir, tmp_path, fs, scoring):
    symbols = synthetic_symbols(60, seed=5)
    samples = write_record(tmp_path / "in", "rec", symbols, seconds=61, seed=5, fs=fs)
    out = tmp_path / "out"
    result = detect(
        str(tmp_path / "in" / "rec"), "--model", str(model_dir), "--out", str(out),
        "--scoring", scoring,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "rec: 60 beats" in result.output and "recall" in result.output
    rows = list(csv.DictReader((out / "rec" / "beats.csv").open()))
    assert len(rows) == len(symbols)
    # samples in the record's own rate: the annotations, give or take the resampling's rounding
    assert np.abs(np.array([int(r["sample"]) for r in rows]) - samples).max() <= 1
    assert [r["label"] for r in rows] == [{"A": "S"}.get(s, s) for s in symbols]
    summary = read_json(out / "rec" / "summary.json")
    assert (
        summary["fs"] == fs and summary["beats"] == 60 and summary["beat_source"] == "annotations"
    )
    scoring = "adaptive" if scoring == "auto" else scoring  # 60 beats: enough to adapt
    assert summary["scoring"] == scoring
    meta = read_json(model_dir / "detector.json")
    units = meta["adaptive_thresholds"] if scoring == "adaptive" else meta["thresholds"]
    name = "alarm_0.01" if scoring == "adaptive" else "val_f1"  # the defaults of each scoring
    assert summary["threshold"] == {"name": name, "value": units[name]}
    flags = np.array([int(r["flag"]) for r in rows], bool)
    scores = np.array([float(r["score"]) for r in rows])
    flagged_on = scores
    if scoring == "adaptive":  # the robust z among the record's beats, computed here anew
        median = np.median(scores)
        flagged_on = (scores - median) / (1.4826 * np.median(np.abs(scores - median)))
        np.testing.assert_allclose([float(r["z"]) for r in rows], flagged_on, rtol=1e-4, atol=1e-4)
    else:
        assert "z" not in rows[0]
    assert summary["flagged"] == flags.sum()
    value = summary["threshold"]["value"]
    near = np.abs(flagged_on - value) < 1e-4  # a value at the threshold may round either way
    assert np.array_equal(flags[~near], (flagged_on >= value)[~near])
    v = np.array([s == "V" for s in symbols])
    assert summary["classes"]["V"]["recall"] == pytest.approx(flags[v].mean())
    assert summary["classes"]["N"]["false_alarm_rate"] == pytest.approx(
        flags[np.array(symbols) == "N"].mean()
    )
    page = (out / "rec" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "Against the reference" in page
    assert ("record-adaptive" in page) == (scoring == "adaptive")


def test_adaptive_thresholds_mean_the_same_for_records_of_any_score_scale():
    """The record-adaptive thresholds flag the asked share of val N whatever each record's
    score level, which per-beat thresholds cannot: two patients, one scoring 10x the other."""
    rng = np.random.default_rng(0)
    cls = np.r_[np.zeros(4000, int), np.full(200, 2)]
    records = np.r_[np.full(2000, 1), np.full(2000, 2), np.full(100, 1), np.full(100, 2)]
    scale = np.where(records == 2, 10.0, 1.0)
    scores = np.r_[rng.gamma(2, 1, 4000), rng.gamma(2, 1, 200) + 8] * scale
    found = adaptive_thresholds_on_val(cls, scores, records)
    z = scores_mod.record_adaptive(scores, records)
    for rec in (1, 2):
        normal = (cls == 0) & (records == rec)
        assert np.mean(z[normal] >= found["alarm_0.05"]) == pytest.approx(0.05, abs=0.02)
    per_beat = thresholds_on_val(cls, scores)
    low = (cls == 0) & (records == 1)
    assert np.mean(scores[low] >= per_beat["alarm_0.05"]) < 0.01, "per-beat units do not carry"


def test_a_short_record_is_scored_per_beat_with_a_warning_unless_adaptive_is_asked(
    model_dir, tmp_path
):
    write_record(tmp_path / "in", "short", ["N"] * 20, seconds=21, seed=4)
    rec, out = str(tmp_path / "in" / "short"), tmp_path / "out"
    result = detect(rec, "--model", str(model_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "record short: scored per beat (its 20 beats are too few" in result.stderr
    assert read_json(out / "short" / "summary.json")["scoring"] == "beat"
    out2 = tmp_path / "out2"
    result = detect(rec, "--model", str(model_dir), "--out", str(out2), "--scoring", "adaptive")
    _one_line_and_nothing_written(result, out2, "record short has 20 beats", "at least 30")


def test_a_detector_without_adaptive_thresholds_scores_per_beat_or_says_why_not(
    model_dir, tmp_path, synthetic_mitdb
):
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    meta = read_json(old / "detector.json")
    del meta["adaptive_thresholds"]
    (old / "detector.json").write_text(json.dumps(meta))
    rec, out = str(synthetic_mitdb / "101"), tmp_path / "out"
    result = detect(rec, "--model", str(old), "--out", str(out), "--scoring", "adaptive")
    _one_line_and_nothing_written(result, out, "no record-adaptive thresholds", "--scoring beat")
    result = detect(rec, "--model", str(old), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "no record-adaptive thresholds" in result.stderr
    summary = read_json(out / "101" / "summary.json")
    assert summary["scoring"] == "beat"
    assert summary["threshold"]["value"] == meta["thresholds"]["val_f1"]


def test_detect_without_annotations_finds_beats_with_the_qrs_detector(model_dir, tmp_path):
    write_record(tmp_path, "plain", ["N"] * 40, seconds=41, seed=2, annotations=False)
    out = tmp_path / "out"
    result = detect(str(tmp_path / "plain.hea"), "--model", str(model_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = read_json(out / "plain" / "summary.json")
    assert summary["beat_source"] == "QRS detector" and summary["classes"] is None
    assert 38 <= summary["beats"] <= 40
    header = (out / "plain" / "beats.csv").read_text().splitlines()[0]
    assert header == "beat,sample,time_s,score,z,flag"


def test_alarm_rate_picks_the_val_false_alarm_threshold(model_dir, tmp_path, synthetic_mitdb):
    meta = read_json(model_dir / "detector.json")
    out = tmp_path / "out"
    result = detect(
        str(synthetic_mitdb / "101"), "--model", str(model_dir), "--out", str(out),
        "--alarm-rate", "0.05",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = read_json(out / "101" / "summary.json")
    value = meta["adaptive_thresholds"]["alarm_0.05"]  # detect scores record-adaptively by default
    assert summary["threshold"] == {"name": "alarm_0.05", "value": value}


def test_thresholds_on_val_flag_the_asked_share_of_val_n():
    rng = np.random.default_rng(0)
    cls = np.r_[np.zeros(10_000, int), np.full(500, 2)]
    scores = np.r_[rng.gamma(2, 1, 10_000), rng.gamma(2, 1, 500) + 5]
    found = thresholds_on_val(cls, scores)
    for rate in ALARM_RATES:
        assert np.mean(scores[cls == 0] >= found[alarm_key(rate)]) == pytest.approx(rate, abs=1e-3)
    assert found["alarm_0.05"] < found["alarm_0.01"]
    predicted = scores >= found["val_f1"]
    assert predicted[cls > 0].mean() > 0.9 and predicted[cls == 0].mean() < 0.05


def _one_line_and_nothing_written(result, out: Path, *words: str) -> None:
    assert result.exit_code == 1, result.output
    # the error is the last line and one line (a fresh MLflow store may log its creation first)
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: "), result.output
    assert sum(line.startswith("Error") for line in result.output.splitlines()) == 1
    for word in words:
        assert word in message, message
    assert not out.exists()


def test_a_record_without_mlii_needs_lead(model_dir, tmp_path):
    write_record(tmp_path, "v1v2", ["N"] * 20, seconds=21, lead_names=("V1", "V2"))
    out = tmp_path / "out"
    result = detect(str(tmp_path / "v1v2"), "--model", str(model_dir), "--out", str(out))
    _one_line_and_nothing_written(result, out, "no MLII lead", "['V1', 'V2']", "--lead")
    result = detect(
        str(tmp_path / "v1v2"), "--model", str(model_dir), "--out", str(out), "--lead", "V2"
    )
    assert result.exit_code == 0, result.output
    assert read_json(out / "v1v2" / "summary.json")["lead"] == "V2"


def test_bad_records_are_one_line_each(model_dir, tmp_path, synthetic_mitdb):
    write_record(tmp_path, "good", ["N"] * 20, seconds=21)
    header = (tmp_path / "good.hea").read_text().replace("good", "broken")
    (tmp_path / "broken.hea").write_text(header)
    (tmp_path / "broken.dat").write_bytes(b"\x00\x01")  # far shorter than its header says
    (tmp_path / "empty.hea").write_text("empty 1 360 0\nempty.dat 212 200 11 1024 0 0 0 MLII\n")
    (tmp_path / "empty.dat").write_bytes(b"")
    out = tmp_path / "out"
    cases = {
        "missing": ("no WFDB record", "missing.hea not found"),
        "broken": ("broken", "unreadable"),
        "empty": ("empty", "empty or too short"),
    }
    for name, words in cases.items():
        # with a good record first: nothing is written for it either
        result = detect(
            str(tmp_path / "good"), str(tmp_path / name), "--model", str(model_dir), "--out",
            str(out),
        )  # fmt: skip
        _one_line_and_nothing_written(result, out, *words)


def test_no_store_here_is_one_line_and_creates_none(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_record(tmp_path, "rec", ["N"] * 20, seconds=21)
    out = tmp_path / "out"
    _one_line_and_nothing_written(detect("rec", "--out", str(out)), out, "no MLflow store here")
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_models_are_one_line_each(model_dir, tmp_path, synthetic_mitdb, mlflow_store):
    record = str(synthetic_mitdb / "100")
    out = tmp_path / "out"
    result = detect(record, "--model", "models:/no-such-detector@champion", "--out", str(out))
    _one_line_and_nothing_written(result, out, "models:/no-such-detector@champion", "resolve")
    generator_like = tmp_path / "generator"
    generator_like.mkdir()
    (generator_like / "MLmodel").write_text("flavors:\n  pytorch: {}\n")
    result = detect(record, "--model", str(generator_like), "--out", str(out))
    _one_line_and_nothing_written(result, out, "MLflow model of another kind", "detector")
    result = detect(record, "--model", str(tmp_path / "nowhere"), "--out", str(out))
    _one_line_and_nothing_written(result, out, "neither a folder nor an MLflow model URI")
    planted = tmp_path / "planted"
    shutil.copytree(model_dir, planted)
    torch.save({"x": __import__("collections").OrderedDict()}, planted / "G.pt")
    meta = json.loads((planted / "detector.json").read_text())
    meta["kind"] = "something-else"
    (planted / "detector.json").write_text(json.dumps(meta))
    result = detect(record, "--model", str(planted), "--out", str(out))
    _one_line_and_nothing_written(result, out, "does not describe a sibeatgan-beat-detector")
