"""DVC stage `split`: the beats assigned to train / val / test for data.split and data.fold."""

from __future__ import annotations

from pathlib import Path

from sibeatgan.config import Params
from sibeatgan.data.preprocess import run_split
from sibeatgan.pipeline.layout import DEFAULT_LAYOUT
from sibeatgan.stages.entry import stage_command

METRICS = DEFAULT_LAYOUT.metrics("split")


def run(p: Params, metrics: str | Path = METRICS) -> str:
    summary = run_split(p, metrics)
    counts = {part: sum(c.values()) for part, c in summary["split_counts"].items()}
    return f"beats per part: {counts}  -> {p.runtime.prepared_dir}"


main = stage_command(run, __doc__)

if __name__ == "__main__":
    main()
