"""DVC stage `train_student`: the student, guided by the frozen teacher in models/teacher."""

from __future__ import annotations

from pathlib import Path

from sibeatgan.config import Params
from sibeatgan.pipeline.train import train_model
from sibeatgan.stages.entry import stage_command


def run(p: Params, teacher_dir: Path | None = None, resume: bool = True) -> str:
    info = train_model(p, "student", teacher_dir=teacher_dir, resume=resume)
    return f"student: best val AUC {info['best_val_auc']:.4f} (MLflow run {info['run_id']})"


main = stage_command(run, __doc__)

if __name__ == "__main__":
    main()
