"""Which detector `detect` uses: a local model folder or any MLflow model URI, read as plain
weights and JSON (an MLflow model is downloaded, never unpickled)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sibeatgan.evaluation.detector import (
    DETECTOR_FILE,
    WEIGHTS_FILE,
    Detector,
    DetectorError,
    detector_files,
    load_detector,
)


def champion_uri(detector_name: str) -> str:
    return f"models:/{detector_name}@champion"


def resolve_detector(spec: str) -> Detector:
    """The detector at `spec`: a folder holding G.pt and detector.json (models/student), or an
    MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/detector)."""
    folder = Path(spec)
    if folder.is_dir():
        return _from_folder(folder, spec)
    if ":/" not in spec:
        raise DetectorError(
            f"model {spec!r} is neither a folder nor an MLflow model URI; give a trained model "
            "folder (models/student) or a URI such as models:/sibeatgan-detector@champion"
        )
    return _from_mlflow(spec)


def _from_folder(folder: Path, spec: str) -> Detector:
    files = detector_files(folder)
    if files is None:
        raise DetectorError(_wrong_kind(folder, spec))
    return load_detector(*files)


def _from_mlflow(uri: str) -> Detector:
    import mlflow
    from mlflow.exceptions import MlflowException

    from sibeatgan import tracking

    store = tracking.DEFAULT_URI.removeprefix("sqlite:///")
    if not os.environ.get("MLFLOW_TRACKING_URI") and not Path(store).is_file():
        raise DetectorError(
            f"no MLflow store here ({store}) to resolve {uri}; run from the project folder, set "
            "MLFLOW_TRACKING_URI, or give --model a trained model folder"
        )  # rather than create an empty store in this folder
    tracking.setup()
    with tempfile.TemporaryDirectory(prefix="sibeatgan-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except (MlflowException, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DetectorError(
                f"model URI {uri} does not resolve in the tracking store "
                f"{mlflow.get_tracking_uri()} ({first}); train and evaluate a model "
                "(`dvc repro`) or give a model folder"
            ) from None
        return _from_folder(local, uri)


def _wrong_kind(folder: Path, spec: str) -> str:
    mlmodel = folder / "MLmodel"
    what = "an MLflow model of another kind" if mlmodel.is_file() else "a folder"
    return (
        f"{spec} is {what}, not a sibeatgan detector (no {WEIGHTS_FILE} and {DETECTOR_FILE}); "
        "use a model folder trained by this version (models/student) or the detector model "
        "(models:/sibeatgan-detector@champion), not the generator"
    )
