"""DVC stage `evaluate`: test figures of teacher and student, curves, and the champion."""

from __future__ import annotations

from sibeatgan.config import Params
from sibeatgan.pipeline.evaluate import evaluate
from sibeatgan.stages.entry import stage_command


def run(p: Params) -> str:
    reports = evaluate(p)
    return "\n".join(
        f"{role:8s} test AUC {r['test_auc']:.4f}  AP {r['test_ap']:.4f}  "
        f"F1@val-threshold {r['test_f1']:.4f}"
        for role, r in reports.items()
    )


main = stage_command(run, __doc__)

if __name__ == "__main__":
    main()
