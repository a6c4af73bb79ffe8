"""The training state written after every epoch, so a stopped run resumes where it stopped.

It holds what the next epoch depends on: G, D, G's average, both optimisers and schedules, the
distiller's projections, both random generators, and the loop's progress (history, best epoch
and its weights). A resumed run therefore trains exactly as one that never stopped. The file
is written atomically: a run stopped mid-write keeps the previous epoch's state.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sibeatgan.io import UnsafeFileError, atomic_path, load_tensors

FILENAME = "train_state.pt"


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclasses.dataclass
class Progress:
    """The loop's own state: epochs done, steps, D resets, history and the selected epoch."""

    epoch: int = 0
    step: int = 0
    d_resets: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best_value: float = -float("inf")
    best_epoch: int = 0
    best_g: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    best_d: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    elapsed_s: float = 0.0  # training wall time over every session of the run


def save(
    path: Path,
    parts: dict[str, Stateful],
    progress: Progress,
    rng: np.random.Generator,
    meta: dict[str, Any],
) -> None:
    state = {
        "parts": {name: part.state_dict() for name, part in parts.items()},
        "progress": dataclasses.asdict(progress),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "meta": meta,
    }
    # through a Python file, so that a full disk is an OSError with its errno
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def read(path: Path) -> dict[str, Any]:
    """The whole state, loaded as tensors and plain containers only (numpy's generator state
    is a dict of ints), so a planted file cannot run code."""
    state = load_tensors(path)
    if not isinstance(state, dict) or not {"parts", "progress", "meta"} <= set(state):
        raise UnsafeFileError(f"{path} is not a training state")
    return state


def set_aside(path: Path, why: str) -> Path:
    """Move an unusable state out of the way (kept for inspection, never resumed)."""
    kept = path.with_name(f"{path.name}.unreadable")
    path.replace(kept)
    print(f"warning: {why}; moved it to {kept} and starting afresh")
    return kept


def restore(
    state: dict[str, Any], parts: dict[str, Stateful], rng: np.random.Generator
) -> Progress:
    """Load `state` into `parts` and `rng` (and torch's generator); return the progress."""
    missing = set(parts) - set(state["parts"])
    if missing:
        raise ValueError(f"training state lacks {sorted(missing)}; it is from another setup")
    for name, part in parts.items():
        part.load_state_dict(state["parts"][name])
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    return Progress(**state["progress"])
