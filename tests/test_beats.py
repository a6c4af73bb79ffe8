import dataclasses

import numpy as np
import pytest
from conftest import write_record

from sibeatgan.data.beats import (
    BeatSpec,
    extract_beats,
    near_detection,
    normalise,
    read_record,
)
from sibeatgan.datasets.mitdb import CLASS_OF_SYMBOL, MITDB

SPEC = BeatSpec(band_hz=[3.0, 45.0], taps=109, before=140, after=180, qrs_tolerance=10)


def test_class_map_follows_beatgan():
    assert {s for s, c in CLASS_OF_SYMBOL.items() if c == 1} == set("AaJSje")
    assert {s for s, c in CLASS_OF_SYMBOL.items() if c == 2} == {"V", "E"}
    assert {s for s, c in CLASS_OF_SYMBOL.items() if c == 4} == {"/", "f", "Q"}
    assert "+" not in CLASS_OF_SYMBOL and "~" not in CLASS_OF_SYMBOL


def test_mlii_is_found_by_name_and_put_first(tmp_path):
    write_record(tmp_path, "114", ["N"] * 10, seconds=11, lead_names=("V5", "MLII"))
    rec = read_record(tmp_path, 114, MITDB)
    sig, fs = rec.sig, rec.fs
    assert fs == 360
    # MLII carries the full-size beats in the synthetic record, V5 is half of it
    assert np.abs(sig[:, 0]).max() > 1.5 * np.abs(sig[:, 1]).max()


def test_windows_labels_and_skips(tmp_path):
    symbols = ["N", "V", "A", "N", "F", "N", "+", "Q", "N", "N", "N", "N"]
    samples = write_record(tmp_path, "100", symbols, seconds=12.2)
    beats = extract_beats(tmp_path, 100, SPEC, MITDB)
    # the '+' rhythm annotation is ignored; every other window fits inside the record
    assert beats.x.shape == (11, 2, 320)
    assert beats.x.dtype == np.float32
    assert list(beats.cls) == [0, 2, 1, 0, 3, 0, 4, 0, 0, 0, 0]
    kept = [s for s, sym in zip(samples, symbols, strict=True) if sym != "+"]
    assert list(beats.sample) == kept
    # each window is centred so the R peak sits at index 140 of the MLII channel
    n_beat = beats.x[0, 0]
    assert abs(int(np.argmax(n_beat)) - 140) <= 2


def test_window_leaving_the_record_is_skipped(tmp_path):
    write_record(tmp_path, "101", ["N"] * 5, seconds=4.99)
    beats = extract_beats(tmp_path, 101, SPEC, MITDB)
    # beats sit at 180 + 360 k; the last window [1480, 1800) leaves the 1796-sample record
    assert list(beats.sample) == [180, 540, 900, 1260]


@pytest.mark.parametrize("detector", ["xqrs", "hamilton"])
def test_n_beat_without_detected_peak_is_dropped(tmp_path, detector):
    import wfdb

    samples = write_record(tmp_path, "103", ["N"] * 12, seconds=12.2)
    # add an N annotation half-way between two real beats, where no R peak exists
    fake = int((samples[5] + samples[6]) // 2)
    all_samples = np.sort(np.append(samples, fake))
    wfdb.wrann("103", "atr", sample=all_samples, symbol=["N"] * 13, write_dir=str(tmp_path))
    beats = extract_beats(tmp_path, 103, dataclasses.replace(SPEC, qrs_detector=detector), MITDB)
    assert fake not in beats.sample
    assert beats.dropped_n == 1
    assert len(beats.sample) == 12


def test_near_detection():
    peaks = np.array([100, 400, 800])
    samples = np.array([95, 110, 111, 399, 600, 805, 1000])
    assert list(near_detection(samples, peaks, 10)) == [True, True, False, True, False, True, False]
    assert not near_detection(samples, np.array([], dtype=int), 10).any()


def test_normalise_range_and_flat_beats():
    x = np.stack([np.linspace(-3, 5, 320), np.full(320, 2.0)])[None].astype(np.float32)
    y = normalise(x)
    assert y[0, 0].min() == pytest.approx(-1) and y[0, 0].max() == pytest.approx(1)
    assert np.all(y[0, 1] == 0) and np.isfinite(y).all()
