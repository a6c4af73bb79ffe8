"""MLflow tracking, by concern: `recipes` (what a run is, no MLflow), `runs` (the store and a
training run's life and logging), `logged_models` (the networks as MLflow models), `registry`
(versions and the champion), `store` (the store's failures as one line), `server` (a shared
tracking server). The names below are what the stages use."""

from sibeatgan.tracking.logged_models import log_detector, log_generator
from sibeatgan.tracking.recipes import (
    recipe,
    run_tags,
    same_recipe,
    teacher_config_key,
    term_tags,
)
from sibeatgan.tracking.runs import (
    DEFAULT_EXPERIMENT,
    DEFAULT_URI,
    EPOCH_PREFIX,
    EXPERIMENT_KIND_TAG,
    FAILED_TAG,
    MODEL_TRAINING,
    STEP_PREFIX,
    STOPPED_TAG,
    close_orphaned_runs,
    log_epoch,
    log_figure_files,
    log_file,
    log_step,
    setup,
    store_lock_path,
    training_run,
    wait_for_logging,
)

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_URI",
    "EPOCH_PREFIX",
    "EXPERIMENT_KIND_TAG",
    "FAILED_TAG",
    "MODEL_TRAINING",
    "STEP_PREFIX",
    "STOPPED_TAG",
    "close_orphaned_runs",
    "log_detector",
    "log_epoch",
    "log_figure_files",
    "log_file",
    "log_generator",
    "log_step",
    "recipe",
    "run_tags",
    "same_recipe",
    "setup",
    "store_lock_path",
    "teacher_config_key",
    "term_tags",
    "training_run",
    "wait_for_logging",
]
