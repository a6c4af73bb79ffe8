"""DVC stage `preprocess`: every record's beats, normalised, with their labels."""

from __future__ import annotations

from pathlib import Path

from sibeatgan.config import Params
from sibeatgan.data.preprocess import run_preprocess
from sibeatgan.pipeline.layout import DEFAULT_LAYOUT
from sibeatgan.stages.entry import stage_command

METRICS = DEFAULT_LAYOUT.metrics("preprocess")


def run(p: Params, metrics: str | Path = METRICS) -> str:
    summary = run_preprocess(p, metrics)
    return f"beats per class: {summary['class_counts']}  -> {p.runtime.beats_dir}"


main = stage_command(run, __doc__)

if __name__ == "__main__":
    main()
