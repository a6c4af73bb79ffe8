"""The generator (reconstructions) as an MLflow pyfunc model, logged from this file ("models
from code", as the detector: tracking/detector_model.py). The model is this code, the weights
G.pt (a state dict, loaded as plain tensors: nothing in it runs) and the network's shape in the
model's config (nc, nz, width). Loading it unpickles nothing, so a model the registry hands
out cannot run code that was planted in it.

`mlflow.pyfunc.load_model("models:/sibeatgan-generator@champion").predict(beats)` takes beats
(n x nc x 320 float32, as `preprocess` makes them) and answers their reconstructions."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from sibeatgan.io import load_state_dict
from sibeatgan.models import Generator

WEIGHTS = "generator"  # the artifact holding G.pt
SHAPE_KEYS = ("nc", "nz", "width")


class GeneratorModel(PythonModel):
    def load_context(self, context) -> None:
        self.load(Path(context.artifacts[WEIGHTS]), context.model_config or {})

    def load(self, weights: Path, config: dict) -> None:
        """The generator of `config`'s shape with the weights in `weights` (tensors only)."""
        missing = [k for k in SHAPE_KEYS if not isinstance(config.get(k), int)]
        if missing:
            raise ValueError(
                f"the generator model's config lacks {', '.join(missing)}; log it again with "
                "sibeatgan's tracking.log_generator"
            )
        g = Generator(config["nc"], config["nz"], config["width"])
        g.load_state_dict(load_state_dict(weights))
        self.generator = g.eval()

    # no type hint on model_input: MLflow would read one as an input schema; the logged
    # signature (a float32 tensor of beats) is the schema
    def predict(self, context, model_input, params: dict | None = None) -> np.ndarray:
        if hasattr(model_input, "to_numpy"):  # a DataFrame
            model_input = model_input.to_numpy()
        x = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.generator(x).numpy()


mlflow.models.set_model(GeneratorModel())
