"""DVC stage `preprocess`: every record's beats, normalised, with their labels."""

from __future__ import annotations

from sibeatgan.config import Params
from sibeatgan.data.preprocess import run_preprocess
from sibeatgan.stages.entry import stage_command

METRICS = "metrics/preprocess.json"


def run(p: Params, metrics: str = METRICS) -> str:
    summary = run_preprocess(p, metrics)
    return f"beats per class: {summary['class_counts']}  -> {p.runtime.beats_dir}"


main = stage_command(run, __doc__)

if __name__ == "__main__":
    main()
