"""A detector's two files (detector.json and G.pt) are checked when loaded: each fault gives
`sibeatgan detect` one line naming the file, the key or tensor and what it accepts, and
nothing is written; no network is built at a size the weights do not match."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import detector_with_score, write_record

from sibeatgan.cli import main
from sibeatgan.config import Params
from sibeatgan.evaluation import detector as detector_module
from sibeatgan.evaluation.detector import DetectorError, detector_meta, load_detector
from sibeatgan.io import save_state_dict
from sibeatgan.models import Generator

NZ, WIDTH = 8, 4
THRESHOLDS = {"val_f1": 0.05, "alarm_0.01": 0.2, "alarm_0.05": 0.1}


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("record")
    write_record(folder, "rec", ["N"] * 12 + ["V"] * 3, seconds=16)
    return str(folder / "rec")


def write_model(folder: Path, width: int = WIDTH, **meta_changes) -> Path:
    """A detector folder as training leaves it: untrained G.pt and its detector.json."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_state_dict(folder / "G.pt", Generator(1, NZ, width).eval().state_dict())
    preprocess = Params().to_dict()["preprocess"]
    meta = detector_meta(1, NZ, WIDTH, preprocess, dict(THRESHOLDS), role="teacher", run_id="r")
    meta.update(meta_changes)
    (folder / "detector.json").write_text(json.dumps(meta))
    return folder


def edit_meta(folder: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads((folder / "detector.json").read_text())
    change(meta)
    (folder / "detector.json").write_text(json.dumps(meta))  # NaN and Infinity as Python writes


def edit_weights(folder: Path, change: Callable[[dict], None]) -> None:
    state = torch.load(folder / "G.pt", weights_only=True)
    change(state)
    torch.save(state, folder / "G.pt")


def detect_fails(record: str, model: Path, tmp_path: Path, *words: str) -> str:
    """`sibeatgan detect` with `model`: exit 1, one `Error:` line holding `words`, no output."""
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["detect", record, "--model", str(model), "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


def test_a_valid_model_folder_detects(record, tmp_path):
    model = write_model(tmp_path / "model")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["detect", record, "--model", str(model), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "rec" / "summary.json").read_text())
    assert summary["beats"] == 15 and summary["threshold"]["value"] == THRESHOLDS["val_f1"]


def _pp(key: str, value) -> Callable[[dict], None]:
    return lambda meta: meta["preprocess"].__setitem__(key, value)


def _set(key: str, value) -> Callable[[dict], None]:
    return lambda meta: meta.__setitem__(key, value)


def _threshold(name: str, value) -> Callable[[dict], None]:
    return lambda meta: meta["thresholds"].__setitem__(name, value)


META_FAULTS = {
    "threshold NaN": (_threshold("val_f1", float("nan")), ["thresholds.val_f1", "NaN", ">= 0"]),
    "threshold inf": (_threshold("alarm_0.01", float("inf")), ["thresholds.alarm_0.01", "finite"]),
    "threshold < 0": (_threshold("val_f1", -0.5), ["thresholds.val_f1 is -0.5", ">= 0"]),
    "threshold text": (_threshold("alarm_0.05", "0.1"), ["thresholds.alarm_0.05", "number"]),
    "no val_f1": (lambda m: m["thresholds"].pop("val_f1"), ["thresholds", "val_f1"]),
    "adaptive NaN": (
        _set("adaptive_thresholds", {"val_f1": float("nan")}),
        ["adaptive_thresholds.val_f1 is NaN", "finite number (a robust z-score)"],
    ),
    "adaptive text": (
        _set("adaptive_thresholds", {"val_f1": 1.0, "alarm_0.01": "3"}),
        ["adaptive_thresholds.alarm_0.01", "finite number"],
    ),
    "adaptive list": (_set("adaptive_thresholds", [2.0]), ["adaptive_thresholds is [2.0]"]),
    "adaptive no val_f1": (_set("adaptive_thresholds", {}), ["adaptive_thresholds is {}"]),
    "no nz": (lambda m: m.pop("nz"), ["nz is missing", "1-1024"]),
    "huge width": (_set("width", 20_000), ["width is 20000", "1-1024"]),
    "width true": (_set("width", True), ["width is true", "integer"]),
    "width text": (_set("width", "4"), ["width", "integer in 1-1024"]),
    "nc 3": (_set("nc", 3), ["nc is 3", "1 or 2"]),
    "fs": (_set("fs", 250), ["fs is 250", "360"]),
    "beat_length": (_set("beat_length", 300), ["beat_length is 300", "320"]),
    "taps": (_pp("taps", 0), ["preprocess.taps is 0", "3-1001"]),
    "band": (_pp("band_hz", [45.0, 3.0]), ["preprocess.band_hz", "0 < low < high < 180"]),
    "window": (_pp("before", 100), ["preprocess.before + after is 280", "320"]),
    "detector": (_pp("qrs_detector", "pan"), ["preprocess.qrs_detector", "xqrs or hamilton"]),
    "no tolerance": (lambda m: m["preprocess"].pop("qrs_tolerance"), ["qrs_tolerance is missing"]),
    "new knob": (_pp("notch_hz", 50), ["preprocess.notch_hz", "not a setting this version"]),
    "no preprocess": (_set("preprocess", [1, 2]), ["preprocess is [1, 2]", "object"]),
}


@pytest.mark.parametrize("fault", list(META_FAULTS))
def test_a_bad_detector_json_is_one_line_naming_file_key_and_range(fault, record, tmp_path):
    change, words = META_FAULTS[fault]
    model = write_model(tmp_path / "model")
    edit_meta(model, change)
    detect_fails(record, model, tmp_path, "detector.json", *words)


def test_a_detector_json_that_is_not_an_object_is_refused(record, tmp_path):
    model = write_model(tmp_path / "model")
    (model / "detector.json").write_text("[1, 2]")
    detect_fails(
        record,
        model,
        tmp_path,
        "detector.json",
        "does not describe a sibeatgan",
        "not a JSON object",
    )


def _fill(name: str, value: float) -> Callable[[dict], None]:
    return lambda state: state[name].fill_(value)


def _overflowing(state: dict) -> None:
    """Finite weights whose products overflow float32: the network's output is NaN."""
    gen = torch.Generator().manual_seed(0)
    for t in state.values():
        if t.ndim == 3:
            t.copy_(torch.sign(torch.randn(t.shape, generator=gen)) * 1e30)


WEIGHT_FAULTS = {
    "all NaN": (
        lambda s: [t.fill_(float("nan")) for t in s.values() if t.is_floating_point()],
        ["G.pt", "encoder.blocks.0.0.weight", "NaN or infinite"],
    ),
    "one inf": (
        lambda s: s["decoder.net.1.weight"].__setitem__(0, float("inf")),
        ["decoder.net.1.weight holds 1 NaN or infinite"],
    ),
    "negative variance": (
        _fill("decoder.net.1.running_var", -1.0),
        ["decoder.net.1.running_var", "negative"],
    ),
    "missing tensor": (
        lambda s: s.pop("encoder.last.weight"),
        ["lacks encoder.last.weight of the network"],
    ),
    "extra tensor": (
        lambda s: s.__setitem__("encoder.extra", torch.zeros(3)),
        ["holds encoder.extra, which is not in the network"],
    ),
    "integer weights": (
        lambda s: s.__setitem__("encoder.last.weight", s["encoder.last.weight"].long()),
        ["encoder.last.weight is torch.int64"],
    ),
    "overflow": (_overflowing, ["reconstruction of a plain beat is not finite"]),
    "too big a file": (
        lambda s: s.__setitem__("padding", torch.zeros(1_000_000)),
        ["bytes, more than the network detector.json describes"],
    ),
}


@pytest.mark.parametrize("fault", list(WEIGHT_FAULTS))
def test_bad_weights_are_one_line_each(fault, record, tmp_path):
    change, words = WEIGHT_FAULTS[fault]
    model = write_model(tmp_path / "model")
    edit_weights(model, change)
    detect_fails(record, model, tmp_path, "G.pt", *words)


def test_weights_of_another_width_are_named_with_both_shapes(record, tmp_path):
    model = write_model(tmp_path / "model", width=8)  # G.pt of width 8, detector.json says 4
    message = detect_fails(record, model, tmp_path, "G.pt", "different models")
    assert "has shape (8, 1, 4) where the network detector.json describes" in message
    assert "(nc 1, nz 8, width 4) has (4, 1, 4)" in message


class _RealSizeSpy(Generator):
    """A Generator that refuses to be built on a real device at a width above 64."""

    def __init__(self, nc: int = 1, nz: int = 50, width: int = 32, *args, **kwargs):
        device = torch.get_default_device().type
        assert device == "meta" or width <= 64, f"a width-{width} network built on {device}"
        super().__init__(nc, nz, width, *args, **kwargs)


def test_a_large_width_is_checked_against_the_weights_before_any_network_is_built(
    tmp_path, monkeypatch
):
    """Width 1024 (in range) over weights of width 4: refused from the shapes alone; the
    network at its real size (about 3 GB at this width) is never built."""
    monkeypatch.setattr(detector_module, "Generator", _RealSizeSpy)
    model = write_model(tmp_path / "model")
    edit_meta(model, _set("width", 1024))
    with pytest.raises(DetectorError, match=r"has shape \(4, 1, 4\) where .* width 1024\) has"):
        load_detector(model / "G.pt", model / "detector.json")


def test_non_finite_beats_and_scores_are_refused_not_scored(tmp_path):
    model = write_model(tmp_path / "model")
    detector = load_detector(model / "G.pt", model / "detector.json")
    beats = np.zeros((3, 320), np.float32)
    beats[1, 5] = np.nan
    with pytest.raises(DetectorError, match="1 of 3 beats hold NaN or infinite"):
        detector.run(beats)
    with torch.no_grad():
        for p in detector.g.parameters():
            p.mul_(1e30)  # weights that overflow on these beats, after loading
    with pytest.raises(DetectorError, match="scores of 3 of 3 beats are not finite"):
        detector.run(np.full((3, 320), 0.5, np.float32))


# ------------------------------------------------------------------ the score a detector replays


def test_training_records_the_score_it_was_fitted_with(model_dir):
    meta = json.loads((model_dir / "detector.json").read_text())
    assert meta["score"] == {"name": "mse", "params": {}}


def test_a_detector_replays_a_score_that_reads_d(model_dir, tmp_path):
    """mse_dfeat's parameters in detector.json and D.pt beside G.pt: the detector scores as
    the table does with those networks and parameters."""
    from sibeatgan.evaluation import scores
    from sibeatgan.models import Discriminator

    params = {"weight": 0.3, "scale_mse": 0.01, "scale_dfeat": 0.5}
    folder = detector_with_score(model_dir, tmp_path, {"name": "mse_dfeat", "params": params})
    detector = load_detector(folder / "G.pt", folder / "detector.json")
    assert isinstance(detector.d, Discriminator) and not detector.d.training
    beats = np.random.default_rng(0).uniform(-1, 1, (6, 320)).astype(np.float32)
    got, heat = detector.run(beats)
    want, _ = scores.beat_scores(
        "mse_dfeat", scores.Models(detector.g, detector.d), beats[:, None], params
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    plain = load_detector(model_dir / "G.pt", model_dir / "detector.json")
    assert plain.d is None and not np.allclose(got, plain.run(beats)[0])


@pytest.mark.parametrize(
    ("score", "keep_d", "message"),
    [
        ({"name": "mse_dfeat", "params": {}}, True, "lacks its parameters"),
        ({"name": "fancy", "params": {}}, True, "unknown anomaly score 'fancy'; known: mse"),
        (
            {"name": "mse_dfeat", "params": {"weight": "0.3", "scale_mse": 1, "scale_dfeat": 1}},
            True,
            "not finite numbers",
        ),
        ("mse", True, 'score is "mse"'),
        ({"name": "dfeat", "params": {}}, False, "D.pt is missing; keep D.pt beside G.pt"),
    ],
)
def test_a_damaged_score_entry_is_one_line(model_dir, tmp_path, score, keep_d, message):
    folder = detector_with_score(model_dir, tmp_path, score, keep_d)
    with pytest.raises(DetectorError) as err:
        load_detector(folder / "G.pt", folder / "detector.json")
    assert message in str(err.value) and "\n" not in str(err.value)
