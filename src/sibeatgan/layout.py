"""Where the pipeline's outputs live, relative to one root (the repository for DVC)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROLES = ("teacher", "student")


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    def model_dir(self, role: str) -> Path:
        return self.root / "models" / role

    def metrics(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}.json"

    def plot(self, name: str) -> Path:
        return self.root / "plots" / name


DEFAULT_LAYOUT = Layout()
