"""DVC stage `train_teacher`: the BeatGAN teacher, G and D of the epoch train.selection picks."""

from __future__ import annotations

from sibeatgan.config import Params
from sibeatgan.pipeline.train import train_model
from sibeatgan.stages.entry import stage_command


def run(p: Params, resume: bool = True) -> str:
    info = train_model(p, "teacher", resume=resume)
    return f"teacher: best val AUC {info['best_val_auc']:.4f} (MLflow run {info['run_id']})"


main = stage_command(run, __doc__)

if __name__ == "__main__":
    main()
