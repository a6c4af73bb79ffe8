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

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    def metrics(self, name: str) -> Path:
        return self.metrics_dir / f"{name}.json"

    def plot(self, name: str) -> Path:
        return self.plots_dir / name


DEFAULT_LAYOUT = Layout()
