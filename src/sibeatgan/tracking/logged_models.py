"""The trained networks as MLflow pyfunc models from code: the generator, and the detector
(generator, score, thresholds and, where its score reads D, the discriminator)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from mlflow.types.schema import ParamSchema, ParamSpec

import sibeatgan
from sibeatgan.tracking.store import store_errors


def log_generator(folder: Path, nc: int, nz: int, width: int) -> str:
    """Log the generator in `folder` (G.pt) as an MLflow pyfunc model from code
    (tracking/generator_model.py): its weights a state dict loaded as plain tensors, so loading
    the model runs nothing from a file; with signature and input example; return its URI."""
    from sibeatgan.tracking import generator_model

    config = {"nc": nc, "nz": nz, "width": width}
    weights = folder / "G.pt"
    model = generator_model.GeneratorModel()
    model.load(weights, config)
    example = np.zeros((2, nc, 320), dtype=np.float32)
    with store_errors():  # while the run is active: a full disk names its artifacts
        info = mlflow.pyfunc.log_model(
            name="generator",
            python_model=generator_model.__file__,
            artifacts={generator_model.WEIGHTS: str(weights)},
            model_config=config,
            signature=infer_signature(example, model.predict(None, example)),
            input_example=example,
            code_paths=[str(Path(sibeatgan.__file__).parent)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "mlflow"],
        )
    return info.model_uri


def log_detector(folder: Path) -> str:
    """Log the detector in `folder` (G.pt + detector.json) as an MLflow pyfunc model from code
    (tracking/detector_model.py), with a signature that says what a beat is; return its URI."""
    from sibeatgan.evaluation.detector import (
        D_WEIGHTS_FILE,
        DETECTOR_FILE,
        MIN_ADAPTIVE_BEATS,
        WEIGHTS_FILE,
        load_detector,
    )
    from sibeatgan.tracking import detector_model

    detector = load_detector(folder / WEIGHTS_FILE, folder / DETECTOR_FILE)
    # a record's worth of beats for a score that compares each beat with its record's others
    n_example = MIN_ADAPTIVE_BEATS if detector.reads_record else 2
    example = np.zeros((n_example, *detector.input_shape), dtype=np.float32)
    example[:, ..., ::2] = 0.5  # a beat-like input, not all zeros
    model = detector_model.BeatDetectorModel()
    model.detector = detector
    # r_peaks: a list param, empty unless the detector's score reads the beats' timing
    r_peaks = {"r_peaks": list(range(0, 360 * len(example), 360))} if detector.reads_context else {}
    output = model.predict(None, example, r_peaks)
    signature = infer_signature(
        example,
        {k: v for k, v in output.items() if k not in ("threshold", "record_adaptive")},
        params={"threshold": detector_model.DEFAULT_THRESHOLD, "record_adaptive": False},
    )
    signature.params = ParamSchema(
        [*signature.params.params, ParamSpec("r_peaks", "long", [], (-1,))]
    )
    with store_errors():  # while the run is active: a full disk names its artifacts
        info = mlflow.pyfunc.log_model(
            name="detector",
            python_model=detector_model.__file__,
            artifacts={
                "generator": str(folder / WEIGHTS_FILE),
                "detector": str(folder / DETECTOR_FILE),
                # D ships with a detector whose score reads D's features
                **(
                    {"discriminator": str(folder / D_WEIGHTS_FILE)}
                    if detector.d is not None
                    else {}
                ),
            },
            signature=signature,
            input_example=example,
            code_paths=[str(Path(sibeatgan.__file__).parent)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "mlflow"],
        )
    return info.model_uri
