"""The detector as an MLflow pyfunc model, logged from this file ("models from code": the model
is this code plus its artifacts G.pt and detector.json, no pickle). Serve it with
`mlflow models serve -m models:/sibeatgan-detector@champion --env-manager local` and POST beats
(n x 320 float32, windowed and normalised as `preprocess` makes them) to /invocations; the
answer holds per beat the score, the flag and the 320-tick error heat. The `threshold` param
picks the flagging threshold: val_f1 (default) or alarm_0.01 / alarm_0.05 (the false-alarm
rate on val N beats)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from sibeatgan.evaluation.detector import Detector, DetectorError, load_detector

DEFAULT_THRESHOLD = "val_f1"


class BeatDetectorModel(PythonModel):
    def load_context(self, context) -> None:
        self.detector: Detector = load_detector(
            Path(context.artifacts["generator"]), Path(context.artifacts["detector"])
        )

    # no type hint on model_input: MLflow would read one as an input schema; the logged
    # signature (a float32 tensor of beats) is the schema
    def predict(self, context, model_input, params: dict | None = None) -> dict:
        name = (params or {}).get("threshold") or DEFAULT_THRESHOLD
        known = self.detector.meta["thresholds"]
        if name not in known:
            raise DetectorError(f"unknown threshold {name!r}; known: {', '.join(known)}")
        if hasattr(model_input, "to_numpy"):  # a DataFrame of 320 columns
            model_input = model_input.to_numpy()
        scores, heat = self.detector.run(np.asarray(model_input, dtype=np.float32))
        return {
            "score": scores,
            "flag": scores >= known[name],
            "heat": heat,
            "threshold": {"name": name, "value": float(known[name])},
        }


mlflow.models.set_model(BeatDetectorModel())
