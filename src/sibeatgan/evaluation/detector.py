"""A trained generator as a beat detector: its weights (G.pt) beside `detector.json`, which holds
what detection needs besides them: the network's shape, the preprocessing it was trained on and
the flagging thresholds chosen on val when it was trained. `sibeatgan detect` and the served
MLflow model both load a detector from these two files, never from a pickle."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sibeatgan.config import FS
from sibeatgan.data.beats import BeatSpec
from sibeatgan.evaluation.metrics import best_f1_threshold
from sibeatgan.evaluation.scoring import score_and_heat
from sibeatgan.io import load_state_dict, read_json
from sibeatgan.models import Generator

DETECTOR_FILE = "detector.json"
WEIGHTS_FILE = "G.pt"
DETECTOR_KIND = "sibeatgan-beat-detector"
# false-alarm rates on val N beats that get a threshold of their own (`detect --alarm-rate`)
ALARM_RATES = (0.01, 0.05)


class DetectorError(ValueError):
    """A model that cannot be used as a detector; the message names the fix."""


def alarm_key(rate: float) -> str:
    return f"alarm_{rate:g}"


def thresholds_on_val(val_classes: np.ndarray, val_scores: np.ndarray) -> dict[str, float]:
    """Flagging thresholds (flag when score >= threshold): `val_f1`, the one maximising F1 on
    val (the threshold `evaluate` reports figures at), and one per ALARM_RATES entry that
    flags that fraction of val N beats."""
    labels = (val_classes > 0).astype(int)
    out = {"val_f1": best_f1_threshold(labels, val_scores)[0]}
    normal = val_scores[val_classes == 0]
    for rate in ALARM_RATES:
        out[alarm_key(rate)] = float(np.quantile(normal, 1.0 - rate))
    return out


def detector_meta(
    nc: int, nz: int, width: int, preprocess: dict, thresholds: dict, **about: Any
) -> dict:
    """The contents of detector.json; `about` adds provenance (role, run id, data key)."""
    return {
        "kind": DETECTOR_KIND,
        "nc": nc,
        "nz": nz,
        "width": width,
        "fs": FS,
        "beat_length": preprocess["before"] + preprocess["after"],
        "preprocess": dataclasses.asdict(BeatSpec.from_dict(preprocess)),  # what detect replays
        "thresholds": thresholds,
        **about,
    }


@dataclass
class Detector:
    g: Generator
    meta: dict

    @property
    def beat_length(self) -> int:
        return int(self.meta["beat_length"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One beat as the model takes it: (length,) for one lead, (leads, length) for more."""
        nc = int(self.meta["nc"])
        return (self.beat_length,) if nc == 1 else (nc, self.beat_length)

    def threshold(self, alarm_rate: float | None = None) -> tuple[str, float]:
        """The named threshold: val F1's, or the one for a false-alarm rate on val N."""
        key = "val_f1" if alarm_rate is None else alarm_key(alarm_rate)
        known = self.meta["thresholds"]
        if key not in known:
            rates = ", ".join(f"{r:g}" for r in ALARM_RATES)
            raise DetectorError(f"no threshold for alarm rate {alarm_rate:g}; use one of {rates}")
        return key, float(known[key])

    def beats(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Beats as G takes them, [n, nc, length] float32, from [n, length] or [n, nc, length]."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        nc = int(self.meta["nc"])
        if x.ndim == 2 and nc == 1:
            x = x[:, None, :]
        if x.ndim != 3 or x.shape[1] != nc or x.shape[2] != self.beat_length:
            want = " x ".join(["n", *map(str, self.input_shape)])
            raise DetectorError(
                f"beats of shape {tuple(x.shape)}; this detector takes {want} float32 (beats "
                "windowed and normalised to [-1, 1] as `preprocess` makes them)"
            )
        return x

    def run(self, x: np.ndarray | torch.Tensor, batch_size: int = 1024):
        """Score and per-tick error heat [n, length] of every beat."""
        return score_and_heat(self.g, self.beats(x), batch_size)


def load_detector(weights: Path, meta_file: Path) -> Detector:
    """A detector from its two files (weights loaded as plain tensors: nothing runs)."""
    meta = read_json(meta_file)
    if not isinstance(meta, dict) or meta.get("kind") != DETECTOR_KIND:
        raise DetectorError(f"{meta_file} does not describe a {DETECTOR_KIND}")
    g = Generator(int(meta["nc"]), int(meta["nz"]), int(meta["width"]))
    g.load_state_dict(load_state_dict(weights))
    return Detector(g.eval(), meta)


def detector_files(folder: Path) -> tuple[Path, Path] | None:
    """G.pt and detector.json of a model folder (a trained model's, or the `artifacts` of a
    logged detector model), or None."""
    for where in (folder, folder / "artifacts"):
        if (where / DETECTOR_FILE).is_file() and (where / WEIGHTS_FILE).is_file():
            return where / WEIGHTS_FILE, where / DETECTOR_FILE
    return None
