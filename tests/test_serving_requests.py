"""The served detector checks every request before scoring it: beats of the signature's shape,
finite and in [-1, 1], at most MAX_BEATS of them, known params and threshold names only. A
refusal is a short JSON answer (4xx) naming the problem, without stack trace or input. One
`mlflow models serve` for the module; the request space is fuzzed on the model in process."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sibeatgan.config import Params
from sibeatgan.detection.serve import post_beats, served
from sibeatgan.evaluation.detector import detector_meta, load_detector
from sibeatgan.io import save_state_dict
from sibeatgan.models import Generator
from sibeatgan.tracking import detector_model
from sibeatgan.tracking.detector_model import (
    MAX_BEATS,
    BeatDetectorModel,
    RequestError,
    check_request,
    guard_scoring_server,
)

THRESHOLDS = {"val_f1": 0.05, "alarm_0.01": 0.2, "alarm_0.05": 0.1}
ADAPTIVE = {"val_f1": 2.0, "alarm_0.01": 4.0, "alarm_0.05": 3.0}  # robust z units
MARK = 0.123456789  # a value whose text must never come back in an error
JSON = "application/json"


def write_detector(
    folder: Path, adaptive: dict | None = ADAPTIVE, score: dict | None = None
) -> Path:
    """A detector folder (untrained width-4 G, detector.json): serving mechanics only."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_state_dict(folder / "G.pt", Generator(1, 8, 4).eval().state_dict())
    preprocess = Params().to_dict()["preprocess"]
    meta = detector_meta(
        1, 8, 4, preprocess, dict(THRESHOLDS), score, adaptive_thresholds=adaptive, role="t"
    )
    (folder / "detector.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> BeatDetectorModel:
    folder = write_detector(tmp_path_factory.mktemp("detector"))
    m = BeatDetectorModel()
    m.detector = load_detector(folder / "G.pt", folder / "detector.json")
    return m


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The detector logged to a private MLflow store and served by `mlflow models serve` on a
    loopback port; yields its URL."""
    from sibeatgan import tracking

    root = tmp_path_factory.mktemp("served")
    folder = write_detector(root / "model")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        tracking.setup()
        with mlflow.start_run():
            model_uri = tracking.log_detector(folder)
        with served(model_uri, root / "server.log", 180) as url:
            yield url
        mlflow.set_tracking_uri(None)


def beats(n: int, width: int = 320, value: float = MARK) -> list:
    return np.full((n, width), value).tolist()


def post(url: str, body: bytes | str, content_type: str = JSON) -> requests.Response:
    return requests.post(
        f"{url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=60
    )


def assert_short_refusal(response: requests.Response, status: int, *words: str) -> None:
    text = response.text
    assert response.status_code == status, text[:500]
    assert len(text) < 400 and "Traceback" not in text and "Failed to predict" not in text, text
    assert str(MARK)[:6] not in text, f"the input came back: {text}"
    message = response.json()["message"]
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_bad_requests_are_short_json_4xx_without_trace_or_input(server):
    url = server
    nan = beats(3)
    nan[1][7] = float("nan")
    cases = {  # body, status, words of the message
        "nan": (json.dumps({"inputs": nan}), 400, ["1 of 3 beats", "NaN or infinite"]),
        "inf": (json.dumps({"inputs": beats(2, value=float("inf"))}), 400, ["2 of 2 beats"]),
        "width": (json.dumps({"inputs": beats(4, 319)}), 400, ["(4, 319)", "n x 320"]),
        "one beat flat": (json.dumps({"inputs": beats(1)[0]}), 400, ["shape (320,)", "n x 320"]),
        "ragged": (json.dumps({"inputs": [beats(1)[0], [MARK] * 3]}), 400, ["ragged"]),
        "text": (json.dumps({"inputs": [[str(MARK)] * 320]}), 400, ["not numbers"]),
        "booleans": (json.dumps({"inputs": [[True] + [MARK] * 319]}), 400, ["not numbers"]),
        "range": (json.dumps({"inputs": beats(2, value=3 * MARK + 1)}), 400, ["outside [-1, 1]"]),
        "no beats": (json.dumps({"inputs": []}), 400, ["0 beats", f"1 to {MAX_BEATS:,}"]),
        "too many": (
            json.dumps({"inputs": np.zeros((MAX_BEATS + 1, 320), int).tolist()}),
            400,
            [f"{MAX_BEATS + 1:,} beats", f"1 to {MAX_BEATS:,} beats per request"],
        ),
        "threshold": (
            json.dumps({"inputs": beats(2), "params": {"threshold": "alarm_0.5"}}),
            400,
            ["unknown threshold 'alarm_0.5'; known:", *THRESHOLDS],
        ),
        "misspelt param": (
            json.dumps({"inputs": beats(2), "params": {"treshold": "alarm_0.01"}}),
            400,
            ["unknown param 'treshold'", "known: threshold"],
        ),
        "misspelt key": (
            json.dumps({"inputs": beats(2), "param": {"threshold": "alarm_0.01"}}),
            400,
            ["unknown key 'param'", "inputs (or instances) and params"],
        ),
        "dataframe": (json.dumps({"dataframe_split": {"data": beats(2)}}), 400, ["unknown key"]),
        "not json": (f'{{"inputs": [[{MARK}, ', 400, ["not valid JSON", "line 1 column"]),
    }
    for name, (body, status, words) in cases.items():
        try:
            assert_short_refusal(post(url, body), status, *words)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from None
    assert_short_refusal(post(url, f"{MARK}\n" * 320, "text/csv"), 415, "application/json")
    with pytest.raises(requests.HTTPError, match="answered 400: unknown threshold 'nope'"):
        post_beats(url, np.zeros((2, 320)), threshold="nope")  # the client names the reason


def test_a_request_beyond_the_size_limit_is_refused_before_it_is_parsed(server):
    url = server
    limit = MAX_BEATS * 320 * detector_model.BYTES_PER_VALUE + detector_model.BODY_SLACK
    body = b'{"inputs": [[' + str(MARK).encode() + b"]]" + b" " * limit + b"}"
    assert_short_refusal(post(url, body), 413, f"at most {limit:,}", "split it")


def test_good_requests_are_scored_at_the_threshold_asked(server, model):
    url = server
    x = np.random.default_rng(0).uniform(-1, 1, (5, 320)).astype(np.float32)
    x[0] = 0.0
    scores, heat = model.detector.run(x)
    for payload, name in (
        ({"inputs": x.tolist()}, "val_f1"),
        ({"inputs": x.tolist(), "params": {"threshold": "alarm_0.01"}}, "alarm_0.01"),
        ({"instances": x.tolist(), "params": {}}, "val_f1"),
    ):
        response = post(url, json.dumps(payload))
        assert response.status_code == 200, response.text[:500]
        answer = response.json()["predictions"]
        np.testing.assert_allclose(answer["score"], scores, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(answer["heat"], heat, rtol=1e-5, atol=1e-7)
        assert answer["threshold"] == {"name": name, "value": THRESHOLDS[name]}
        assert answer["flag"] == [bool(s >= THRESHOLDS[name]) for s in scores]


def test_record_adaptive_requests_flag_by_robust_z_among_the_beats_sent(server, model):
    x = np.random.default_rng(1).uniform(-1, 1, (40, 320)).astype(np.float32)
    x[:5] *= 0.2  # a few beats unlike the rest
    scores, _ = model.detector.run(x)
    z = scores_z(scores)
    asked = [
        ({"record_adaptive": True}, "alarm_0.01"),  # the default when adaptive
        ({"record_adaptive": True, "threshold": "val_f1"}, "val_f1"),
    ]
    for params, name in asked:
        response = post(server, json.dumps({"inputs": x.tolist(), "params": params}))
        assert response.status_code == 200, response.text[:500]
        answer = response.json()["predictions"]
        np.testing.assert_allclose(answer["score"], scores, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(answer["z"], z, rtol=1e-4, atol=1e-4)
        assert answer["threshold"] == {"name": name, "value": ADAPTIVE[name]}
        assert answer["flag"] == [bool(v >= ADAPTIVE[name]) for v in answer["z"]]
        assert answer["record_adaptive"] is True
    plain = post(server, json.dumps({"inputs": x.tolist(), "params": {"record_adaptive": False}}))
    assert "z" not in plain.json()["predictions"]
    assert plain.json()["predictions"]["threshold"]["value"] == THRESHOLDS["val_f1"]


def scores_z(scores: np.ndarray) -> np.ndarray:
    """Robust z, computed here independently: (s - median) / (1.4826 MAD)."""
    median = np.median(scores)
    return (scores - median) / (1.4826 * np.median(np.abs(scores - median)))


@pytest.mark.parametrize(
    ("params", "n", "message"),
    [
        ({"record_adaptive": True}, 29, "has 29 beats; record-adaptive scoring needs at least 30"),
        ({"record_adaptive": "yes"}, 40, "record_adaptive must be true or false"),
        ({"record_adaptive": 1}, 40, "record_adaptive must be true or false"),
    ],
)
def test_bad_record_adaptive_requests_are_one_line(model, params, n, message):
    x = np.random.default_rng(2).uniform(-1, 1, (n, 320)).astype(np.float32)
    with pytest.raises(RequestError, match=message) as err:
        model.predict(None, x, params)
    assert "\n" not in err.value.reason and err.value.status == 400


def test_record_adaptive_needs_a_detector_with_adaptive_thresholds(tmp_path):
    folder = write_detector(tmp_path / "old", adaptive=None)
    old = BeatDetectorModel()
    old.detector = load_detector(folder / "G.pt", folder / "detector.json")
    x = np.random.default_rng(3).uniform(-1, 1, (40, 320)).astype(np.float32)
    with pytest.raises(RequestError, match="no record-adaptive thresholds") as err:
        old.predict(None, x, {"record_adaptive": True})
    assert "\n" not in err.value.reason and err.value.status == 400
    assert len(old.predict(None, x, {})["score"]) == 40, "per-beat scoring still works"


RHYTHM = {"name": "mse_rhythm", "params": {"w_mse": 1.0, "w_prematurity": -2.0, "w_pause": 1.0}}


@pytest.fixture(scope="module")
def rhythm_folder(tmp_path_factory) -> Path:
    return write_detector(tmp_path_factory.mktemp("rhythm"), score=RHYTHM)


def test_a_detector_of_beat_timing_scores_the_r_peaks_sent(rhythm_folder):
    from sibeatgan.data.rhythm import beat_rhythm

    m = BeatDetectorModel()
    m.detector = load_detector(rhythm_folder / "G.pt", rhythm_folder / "detector.json")
    x = np.random.default_rng(4).uniform(-1, 1, (12, 320)).astype(np.float32)
    peaks = np.arange(12) * 300
    peaks[6] -= 90  # beat 6 comes 30% early
    answer = m.predict(None, x, {"r_peaks": peaks.tolist()})
    mse = ((m.detector.g(torch.from_numpy(x[:, None])).detach().numpy()[:, 0] - x) ** 2).mean(1)
    t = beat_rhythm(np.zeros(12), peaks)
    want = np.log(mse) - 2 * np.log(t[:, 0]) + np.log(t[:, 1])
    np.testing.assert_allclose(answer["score"], want, rtol=1e-4)
    assert int(np.argmax(answer["score"] - np.log(mse))) == 6


@pytest.mark.parametrize(
    ("rhythm", "params", "message"),
    [
        (True, {}, 'reads each beat\'s timing: send "r_peaks" in params'),
        (True, {"r_peaks": list(range(11))}, "r_peaks is (11,) for 12 beats"),
        (True, {"r_peaks": "0 300"}, "r_peaks is not a list of numbers for 12 beats"),
        (True, {"r_peaks": [0] * 12}, "r_peaks: two beats at R-peak sample 0"),
        (True, {"r_peaks": [[0]] * 12}, "r_peaks is (12, 1) for 12 beats"),
        (False, {"r_peaks": list(range(12))}, "this detector's score is 'mse': leave r_peaks out"),
    ],
)
def test_r_peaks_that_do_not_fit_are_one_line(rhythm_folder, model, rhythm, params, message):
    m = model
    if rhythm:
        m = BeatDetectorModel()
        m.detector = load_detector(rhythm_folder / "G.pt", rhythm_folder / "detector.json")
    x = np.random.default_rng(5).uniform(-1, 1, (12, 320)).astype(np.float32)
    with pytest.raises(RequestError) as err:
        m.predict(None, x, params)
    assert message in err.value.reason and "\n" not in err.value.reason
    body = json.dumps({"inputs": x.tolist(), "params": params}).encode()
    with pytest.raises(RequestError, match=message.split(" (")[0].split("(")[0][:20]):
        check_request(body, JSON, m.detector)


def test_a_score_comparing_beats_of_a_record_needs_enough_of_them(tmp_path):
    score = {"name": "mse_z_rhythm", "params": {**RHYTHM["params"], "w_mse_z": 1.0}}
    del score["params"]["w_mse"]
    folder = write_detector(tmp_path / "z", score=score)
    m = BeatDetectorModel()
    m.detector = load_detector(folder / "G.pt", folder / "detector.json")
    x = np.random.default_rng(7).uniform(-1, 1, (40, 320)).astype(np.float32)
    with pytest.raises(RequestError, match="29 beats; the score 'mse_z_rhythm' compares each"):
        m.predict(None, x[:29], {"r_peaks": list(range(0, 29 * 300, 300))})
    answer = m.predict(None, x, {"r_peaks": list(range(0, 40 * 300, 300))})
    assert np.isfinite(answer["score"]).all() and len(answer["score"]) == 40


@pytest.mark.parametrize("score", ["mse_rhythm", "mse_z_rhythm"])
def test_a_logged_detector_of_beat_timing_takes_r_peaks_through_its_signature(
    tmp_path, monkeypatch, score
):
    from sibeatgan import tracking

    params = {"w_mse_z" if score == "mse_z_rhythm" else "w_mse": 1.0, "w_prematurity": -2.0}
    rhythm_folder = write_detector(
        tmp_path / "model", score={"name": score, "params": {**params, "w_pause": 1.0}}
    )

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    tracking.setup()
    with mlflow.start_run():
        uri = tracking.log_detector(rhythm_folder)
    loaded = mlflow.pyfunc.load_model(uri)
    x = np.random.default_rng(6).uniform(-1, 1, (40, 320)).astype(np.float32)
    answer = loaded.predict(x, params={"r_peaks": (np.arange(40) * 360).tolist()})
    assert np.isfinite(answer["score"]).all() and len(answer["score"]) == 40
    # the model from code brings its own RequestError class: an MlflowException
    with pytest.raises(mlflow.exceptions.MlflowException, match='send "r_peaks"'):
        loaded.predict(x)
    mlflow.set_tracking_uri(None)


def test_a_failing_model_is_a_500_without_its_trace(model, monkeypatch):
    """The guard in front of the scoring server: the model's own failure is logged, and
    answered without stack trace or input."""
    from mlflow.pyfunc import scoring_server

    def failing(data, content_type, pyfunc_model, input_schema):
        raise RuntimeError(f"boom at /home/someone/secret.py with {data}")

    monkeypatch.setattr(scoring_server, "invocations", failing)
    guard_scoring_server(model.detector)
    body = json.dumps({"inputs": beats(2)}).encode()
    answer = scoring_server.invocations(body, JSON, None, None)
    assert answer.status == 500 and json.loads(answer.response)["error_code"] == "INTERNAL_ERROR"
    assert "boom" not in answer.response and str(MARK)[:6] not in answer.response
    refused = scoring_server.invocations(b"[]", JSON, None, None)
    assert refused.status == 400 and "JSON object" in json.loads(refused.response)["message"]


def test_fifty_thousand_beats_are_refused_before_any_is_scored(model, monkeypatch):
    """The issue's request: 50,000 beats ran 60 s into a 504 at 1.7 GB."""
    monkeypatch.setattr(model.detector, "run", lambda *a, **k: pytest.fail("scored"))
    x = np.zeros((50_000, 320), np.float32)
    with pytest.raises(RequestError, match="50,000 beats in the request; send 1 to 4,096"):
        model.predict(None, x, {})
    body = b'{"inputs": [' + b",".join([b"[" + b"0.1," * 319 + b"0.1]"] * 50_000) + b"]}"
    with pytest.raises(RequestError, match="split it") as err:
        check_request(body, JSON, model.detector)
    assert err.value.status == 413


def test_max_beats_are_accepted_and_one_more_refused(model):
    ok = model.predict(None, np.zeros((MAX_BEATS, 320), np.float32))
    assert len(ok["score"]) == MAX_BEATS and np.isfinite(ok["score"]).all()
    with pytest.raises(RequestError, match=f"{MAX_BEATS + 1:,} beats in the request"):
        model.predict(None, np.zeros((MAX_BEATS + 1, 320), np.float32))


# --- the request space, fuzzed against the model in process ---------------------------------

KNOWN = sorted(THRESHOLDS)
ODD_VALUES = [
    float("nan"), float("inf"), -float("inf"), 1.0, -1.0, 1.0005, 1.5, -2.0, 1e39, 10**30, 0,
    True, False, None, "0.5", [0.5],
]  # fmt: skip


@st.composite
def beat_inputs(draw) -> tuple[object, bool]:
    """Beats as a request may send them, and whether they are valid: counts around the limits,
    widths around 320, other layouts, odd values in a few cells, lists or arrays."""
    n = draw(st.sampled_from([0, 1, 2, 3, 7] * 4 + [MAX_BEATS + 1]))
    width = draw(st.sampled_from([320] * 6 + [0, 1, 319, 321]))
    layout = draw(st.sampled_from(["rows"] * 5 + ["leads", "flat", "ragged"]))
    layout = "rows" if layout == "ragged" and n < 2 else layout  # one row is never ragged
    if n > MAX_BEATS:  # refused by its count; zeros keep it quick to build and parse
        rows = [[0] * width] * n
    else:
        seed = draw(st.integers(0, 2**16))
        rows = np.random.default_rng(seed).uniform(-1, 1, (n, width)).tolist()
    cells = {}  # the odd value each cell ends with (a later draw may overwrite a cell)
    if n and width and n <= 7:
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
            value = draw(st.sampled_from(ODD_VALUES) | st.floats(-1, 1) | st.floats(allow_nan=True))
            i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, width - 1))
            rows[i][j] = value
            cells[i, j] = value
    odd = list(cells.values())
    ok_cells = all(
        isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= 1.001 for v in odd
    )  # abs(nan) <= 1.001 is False
    valid = layout == "rows" and width == 320 and 1 <= n <= MAX_BEATS and ok_cells
    if layout == "leads":
        rows = [[r] for r in rows]
    elif layout == "flat":
        rows = rows[0] if rows else []
    elif layout == "ragged":
        rows[-1] = rows[-1][:-1] or [0.5, 0.5]
    numeric = all(isinstance(v, float | int) and not isinstance(v, bool) for v in odd)
    if layout != "ragged" and numeric and draw(st.booleans()):
        with np.errstate(over="ignore"):
            rows = np.asarray(rows, dtype=draw(st.sampled_from([np.float32, np.float64])))
        valid = valid and bool(np.isfinite(rows).all() and (np.abs(rows) <= 1.001).all())
    return rows, valid


@st.composite
def params(draw) -> tuple[object, str | None]:
    """Params as a request may send them, and the threshold they pick (None: refused)."""
    kind = draw(
        st.sampled_from(["none", "empty", "known", "known", "name", "value", "key", "type"])
    )
    if kind in ("none", "empty"):
        return (None if kind == "none" else {}), "val_f1"
    if kind in ("known", "name"):
        names = KNOWN if kind == "known" else ["", "VAL_F1", "alarm_0.1", "val-f1", "threshold"]
        name = draw(st.sampled_from(names))
        return {"threshold": name}, (name if name in THRESHOLDS else None)
    if kind == "value":
        return {"threshold": draw(st.sampled_from([None, 0.05, 1, ["val_f1"]]))}, None
    if kind == "key":  # a misspelt or other param, alone or beside a good one
        key = draw(
            st.sampled_from(["treshold", "Threshold", "alarm_rate", ""]) | st.text(max_size=8)
        )
        extra = draw(st.sampled_from([{}, {"threshold": "val_f1"}]))
        return ({**extra, key: "alarm_0.01"}, None) if key != "threshold" else (extra, "val_f1")
    return draw(st.sampled_from([[], "val_f1", 3])), None


FUZZ = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_one_line(err: RequestError) -> None:
    event(f"refused: {err.reason.split(';')[0].split(' (')[0][:30]}")  # what the fuzz reached
    assert "\n" not in err.reason and len(err.reason) <= 200, err.reason
    assert err.get_http_status_code() == 400 and err.status in (400, 413, 415)


@FUZZ
@given(sent=beat_inputs(), asked=params())
def test_predict_answers_finite_scores_or_refuses_in_one_line(model, sent, asked):
    x, valid_beats = sent
    given_params, name = asked
    try:
        answer = model.predict(None, x, given_params)
    except RequestError as err:
        assert not (valid_beats and name), f"refused a valid request: {err.reason}"
        assert_one_line(err)
        return
    assert valid_beats and name, "scored an invalid request"
    event("scored")
    n = len(x)
    assert answer["score"].shape == (n,) and np.isfinite(answer["score"]).all()
    assert answer["flag"].dtype == bool and answer["flag"].shape == (n,)
    assert answer["heat"].shape == (n, 320) and np.isfinite(answer["heat"]).all()
    assert answer["threshold"] == {"name": name, "value": THRESHOLDS[name]}


@FUZZ
@given(
    sent=beat_inputs(),
    asked=params(),
    key=st.sampled_from(["inputs"] * 8 + ["instances"] * 2 + ["input", "dataframe_split"]),
    content_type=st.sampled_from([JSON] * 8 + ["application/json; charset=utf-8", "text/csv"]),
    extra=st.sampled_from([{}] * 10 + [{"instances": []}, {"parms": {}}]),
    garbage=st.sampled_from(
        [None] * 20 + [b"{", b"[]", b"\xff\xfe", b'"x"', b"1" * 5000, 0]
    ).flatmap(lambda g: st.binary(max_size=40) if g == 0 else st.just(g)),
)
def test_raw_requests_are_checked_as_the_server_reads_them(
    model, sent, asked, key, content_type, extra, garbage
):
    x, valid_beats = sent
    given_params, name = asked
    payload = {key: x.tolist() if isinstance(x, np.ndarray) else x, **extra}
    if given_params is not None or name is None:
        payload["params"] = given_params
    body = json.dumps(payload).encode() if garbage is None else garbage
    valid = (
        valid_beats
        and name is not None
        and key in ("inputs", "instances")
        and not extra
        and content_type.startswith(JSON)
        and garbage is None
    )
    try:
        checked = check_request(body, content_type, model.detector)
    except RequestError as err:
        assert not valid, f"refused a valid request: {err.reason}"
        assert_one_line(err)
        return
    assert valid, "accepted an invalid request"
    event("accepted")
    assert checked.beats.dtype == np.float32 and checked.beats.shape == (len(x), 320)
    assert checked.flagging.threshold == name and not checked.flagging.adaptive
