"""The detector as an MLflow pyfunc model, logged from this file ("models from code": the model
is this code plus its artifacts G.pt and detector.json, no pickle). Serve it with
`mlflow models serve -m models:/sibeatgan-detector@champion --env-manager local` and POST beats
(n x 320 float32, windowed and normalised as `preprocess` makes them) to /invocations; the
answer holds per beat the score, the flag and the 320-tick error heat. The `threshold` param
picks the flagging threshold: val_f1 or alarm_0.01 / alarm_0.05 (the false-alarm rate on val
N beats); `default` (the default) is the detector's default (`Detector.threshold`: val_f1
per beat, alarm_0.05 for mse_z_rhythm, alarm_0.01 record-adaptively). With
`"record_adaptive": true` the beats are taken as one record's (30 or more) and each is flagged
by its robust z-score among them (answered as `z`), against the same-named threshold in those
units, which mean the same for every patient. A detector whose score reads each beat's context
in its record (`mse_rhythm`, `mse_z_rhythm`) also takes `"r_peaks"`: the R-peak sample number of
every beat sent, beats of one recording (any sampling rate: only ratios of intervals are read;
30 or more beats for `mse_z_rhythm`, which compares each with the others).

Every request is checked before it is scored (`check_params`, `check_beats`): at most
MAX_BEATS beats of the signature's shape, finite and in [-1, 1], known params and threshold
names only. A refusal is a RequestError: one line naming the problem and the fix, never the
input. MLflow's scoring server cannot answer such a line by itself (mlflow 3.x,
pyfunc/scoring_server/__init__.py): it drops params the signature does not name, with only a
log line (models/utils.py `_enforce_params_schema`), and ignores unknown top-level keys
(`_split_data_and_params`); it answers an MlflowException raised while predicting with the
input's text prefixed ("Failed to predict data '...'", also for a failed schema check) and any
other exception with its stack trace; an invalid JSON body comes back echoed. So, loaded by
that server, the model checks the raw request first (`guard_scoring_server`)."""

from __future__ import annotations

import itertools
import json
import logging
import sys
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from sibeatgan.data.rhythm import BeatContext, RhythmError, beat_rhythm, one_record
from sibeatgan.evaluation.detector import (
    ADAPTIVE_THRESHOLDS,
    MIN_ADAPTIVE_BEATS,
    Detector,
    DetectorError,
    load_detector,
)

# the threshold param's default (MLflow's scoring server fills it in from the signature): the
# scoring's own default, val_f1 per beat and alarm_0.01 record-adaptively
DEFAULT_THRESHOLD = "default"
PARAMS = ("threshold", "record_adaptive", "r_peaks")  # the params a request may name
MAX_BEATS = 4096  # beats per request: a few seconds of scoring on 2 cores, a ~30 MB answer
# bytes a request may take: a float32 in JSON with its separator takes at most ~26 characters
BYTES_PER_VALUE = 32
BODY_SLACK = 1 << 16
INPUT_KEYS = ("inputs", "instances")  # MLflow's tensor input formats
BEAT_RANGE = 1.001  # beats are normalised to [-1, 1]; this leaves room for float rounding
SERVER_APP = "mlflow.pyfunc.scoring_server.app"  # what `mlflow models serve` runs (uvicorn)
REQUEST_SHAPE = '{"inputs": [[320 values], ...], "params": {"threshold": "alarm_0.01"}}'

_logger = logging.getLogger(__name__)


class RequestError(MlflowException):
    """A request the detector refuses: INVALID_PARAMETER_VALUE, so MLflow callers get the
    usual error, and `status` for the HTTP answer. `reason` is the one line as raised (the
    scoring server rewrites `message`)."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)
        self.reason = reason
        self.status = status


def _named(value: Any) -> str:
    """A name from a request, short: never more than 40 characters of what was sent."""
    text = repr(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


class Flagging(NamedTuple):
    threshold: str  # its name
    adaptive: bool  # the beats are one record's, flagged by their robust z among them
    value: float


def check_params(params: Any, detector: Detector) -> Flagging:
    """The threshold a request's params pick, per beat or record-adaptive; RequestError for an
    unknown param or name, or for record-adaptive scoring the detector has no thresholds for."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError('params must be an object such as {"threshold": "alarm_0.01"}')
    unknown = [k for k in params if k not in PARAMS]
    if unknown:
        raise RequestError(f"unknown param {_named(unknown[0])}; known: {', '.join(PARAMS)}")
    adaptive = params.get("record_adaptive", False)
    if not isinstance(adaptive, bool):
        raise RequestError("record_adaptive must be true or false")
    if adaptive and not detector.adaptive:
        raise RequestError(
            "this detector has no record-adaptive thresholds (trained before they existed); "
            "send record_adaptive false, or train it again"
        )
    thresholds = detector.meta[ADAPTIVE_THRESHOLDS if adaptive else "thresholds"]
    name = params.get("threshold", DEFAULT_THRESHOLD)
    if name == DEFAULT_THRESHOLD:
        name = detector.threshold(adaptive=adaptive)[0]
    if not isinstance(name, str):
        raise RequestError(f"threshold must be a name, one of: {', '.join(thresholds)}")
    if name not in thresholds:
        raise RequestError(f"unknown threshold {_named(name)}; known: {', '.join(thresholds)}")
    return Flagging(name, adaptive, float(thresholds[name]))


def check_beats(beats: Any, detector: Detector) -> np.ndarray:
    """A request's beats as float32 [n, *detector.input_shape]: 1 to MAX_BEATS of them, numbers,
    finite and in [-1, 1]; RequestError otherwise."""
    want = " x ".join(["n", *map(str, detector.input_shape)])
    if hasattr(beats, "to_numpy"):  # a DataFrame of 320 columns
        beats = beats.to_numpy()
    if not isinstance(beats, list | tuple) and not (isinstance(beats, np.ndarray) and beats.ndim):
        raise RequestError(f"beats must be a list of {want} numbers; send {REQUEST_SHAPE}")
    if not 1 <= len(beats) <= MAX_BEATS:
        raise RequestError(
            f"{len(beats):,} beats in the request; send 1 to {MAX_BEATS:,} beats per request"
        )
    try:
        x = np.asarray(beats)
    except (ValueError, TypeError, OverflowError):
        x = None
    if x is None or x.dtype.kind not in "iuf" or _holds_booleans(beats, x.ndim):
        raise RequestError(f"beats must be {want} numbers (these are ragged or not numbers)")
    if x.shape[1:] != detector.input_shape:
        raise RequestError(
            f"beats of shape {x.shape}; this detector takes {want} values (beats windowed and "
            "normalised to [-1, 1] as `preprocess` makes them)"
        )
    _refuse_beats(~np.isfinite(x), "hold NaN or infinite values; send finite beats")
    _refuse_beats(
        np.abs(x) > BEAT_RANGE,
        "have values outside [-1, 1]; normalise each beat as `preprocess` does",
    )
    return x.astype(np.float32)


def _holds_booleans(beats: Any, depth: int) -> bool:
    """Whether nested lists hold true or false, which numpy would read as 1 and 0."""
    if isinstance(beats, np.ndarray):
        return False
    values = beats
    for _ in range(depth - 1):
        values = itertools.chain.from_iterable(values)
    return any(v is True or v is False for v in values)


def _refuse_beats(bad: np.ndarray, what: str) -> None:
    rows = bad.reshape(len(bad), -1).any(1)
    if rows.any():
        first = int(np.flatnonzero(rows)[0])
        raise RequestError(
            f"{int(rows.sum()):,} of {len(rows):,} beats (first: beat {first}) {what}"
        )


def check_r_peaks(params: Any, detector: Detector, n_beats: int) -> BeatContext | None:
    """The beats' context in their record from the request's r_peaks, for a detector whose
    score reads it (None for the others); RequestError when they are missing, sent to a
    detector that does not read them, not one distinct sample number per beat, or too few."""
    peaks = (params or {}).get("r_peaks", [])
    given = not isinstance(peaks, list | tuple | np.ndarray) or len(peaks) > 0
    if not detector.reads_context:
        if given:
            raise RequestError(
                f"r_peaks is read by scores of beat timing; this detector's score is "
                f"{detector.score_name!r}: leave r_peaks out"
            )
        return None
    if not given:
        raise RequestError(
            f"this detector's score {detector.score_name!r} reads each beat's timing: send "
            '"r_peaks" in params, the R-peak sample number of every beat (one recording)'
        )
    x = np.asarray(peaks) if isinstance(peaks, list | tuple | np.ndarray) else None
    if x is None or x.ndim != 1 or x.dtype.kind not in "iuf" or len(x) != n_beats:
        shape = "not a list of numbers" if x is None or x.dtype.kind not in "iuf" else x.shape
        raise RequestError(
            f"r_peaks is {shape} for {n_beats:,} beats; send one R-peak sample number per beat"
        )
    if detector.reads_record and n_beats < MIN_ADAPTIVE_BEATS:
        raise RequestError(
            f"{n_beats} beats; the score {detector.score_name!r} compares each beat with the "
            f"other beats of its record: send at least {MIN_ADAPTIVE_BEATS} of one record"
        )
    try:
        return one_record(beat_rhythm(np.zeros(n_beats), x))
    except RhythmError as err:
        raise RequestError(f"r_peaks: {err}") from None


class Request(NamedTuple):
    payload: dict  # the request's JSON, parsed
    beats: np.ndarray
    flagging: Flagging


def check_request(body: bytes, content_type: str | None, detector: Detector) -> Request:
    """A raw /invocations request checked as the scoring server would read it: JSON of at most
    MAX_BEATS beats, the keys MLflow knows and the params the detector knows; RequestError
    (with its HTTP status) otherwise."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise RequestError(f"send Content-Type: application/json, {REQUEST_SHAPE}", 415)
    limit = MAX_BEATS * int(np.prod(detector.input_shape)) * BYTES_PER_VALUE + BODY_SLACK
    if len(body) > limit:
        raise RequestError(
            f"a request of {len(body):,} bytes; at most {limit:,} ({MAX_BEATS:,} beats): split it",
            413,
        )
    payload = _json(body)
    if not isinstance(payload, dict):
        raise RequestError(f"the request must be a JSON object: {REQUEST_SHAPE}")
    unknown = [k for k in payload if k not in (*INPUT_KEYS, "params")]
    given = [k for k in INPUT_KEYS if k in payload]
    if unknown or len(given) != 1:
        what = f"unknown key {_named(unknown[0])}" if unknown else "no inputs"
        what = "both inputs and instances" if len(given) == 2 else what
        raise RequestError(f"{what} in the request; it takes inputs (or instances) and params")
    flagging = check_params(payload.get("params"), detector)
    beats = check_beats(payload[given[0]], detector)
    check_r_peaks(payload.get("params"), detector, len(beats))
    return Request(payload, beats, flagging)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        why = f"{err.msg} at line {err.lineno} column {err.colno}"
    except UnicodeDecodeError:
        why = "not UTF-8"
    except (ValueError, RecursionError):  # an integer of thousands of digits, deep nesting
        why = "a number or nesting beyond what it takes"
    raise RequestError(f"the request is not valid JSON ({why}); send {REQUEST_SHAPE}")


class BeatDetectorModel(PythonModel):
    def load_context(self, context) -> None:
        d_weights = context.artifacts.get("discriminator")
        self.detector: Detector = load_detector(
            Path(context.artifacts["generator"]),
            Path(context.artifacts["detector"]),
            Path(d_weights) if d_weights else None,
        )
        if SERVER_APP in sys.modules:  # loaded by `mlflow models serve`, while it starts
            guard_scoring_server(self.detector)

    # no type hint on model_input: MLflow would read one as an input schema; the logged
    # signature (a float32 tensor of beats) is the schema
    def predict(self, context, model_input, params: dict | None = None) -> dict:
        flagging = check_params(params, self.detector)
        beats = check_beats(model_input, self.detector)
        context = check_r_peaks(params, self.detector, len(beats))
        scores, heat = self.detector.run(beats, context=context)
        answer = {"score": scores}
        flagged_on = scores
        if flagging.adaptive:
            try:
                flagged_on = self.detector.record_adaptive(scores, "the request")
            except DetectorError as err:
                raise RequestError(str(err)) from None
            answer["z"] = flagged_on
        return {
            **answer,
            "flag": flagged_on >= flagging.value,
            "heat": heat,
            "threshold": {"name": flagging.threshold, "value": flagging.value},
            "record_adaptive": flagging.adaptive,
        }


def guard_scoring_server(detector: Detector) -> None:
    """Put `check_request` in front of the scoring server's `invocations` (which it looks up
    per request): a refusal is answered as {"error_code", "message"} JSON with its 4xx status,
    and a failure of the model as a 500 without its stack trace (which goes to the log)."""
    from mlflow.pyfunc import scoring_server

    original = getattr(scoring_server, "invocations", None)
    respond = getattr(scoring_server, "InvocationsResponse", None)
    if original is None or respond is None:
        raise RuntimeError(
            f"mlflow {mlflow.__version__}'s scoring server has no invocations() to check "
            "requests in; serve the detector with the mlflow version the project pins (3.x)"
        )
    if getattr(original, "checks_beats", False):
        return

    def answer(status: int, code: str, message: str):
        body = json.dumps({"error_code": code, "message": message})
        return respond(response=body, status=status, mimetype="application/json")

    def invocations(data, content_type, model, input_schema):
        try:
            checked = check_request(data, content_type, detector)
            # the parsed JSON, not the bytes: the server takes either (`_decode_json_input`),
            # and parsing is most of its time
            return original(checked.payload, content_type, model, input_schema)
        except RequestError as err:
            return answer(err.status, err.error_code, err.reason)
        except Exception:  # noqa: BLE001 - the model's own failure: logged, not sent
            _logger.exception("the detector failed on a request")
            return answer(500, "INTERNAL_ERROR", "the detector failed; see the server's log")

    invocations.checks_beats = True
    scoring_server.invocations = invocations


mlflow.models.set_model(BeatDetectorModel())
