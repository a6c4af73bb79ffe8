"""What a run is: the recipe that decides what a training produces, its hash, and its tags.
Plain data; imports no MLflow."""

from __future__ import annotations

from sibeatgan.config import ConfigError, Params, params_from_dict, short_hash


def run_tags(p: Params, role: str, **extra: str) -> dict[str, str]:
    tags = {
        "role": role,
        "fold": str(p.data.fold),
        "split": p.data.split,
        "seed": str(p.seed),
        "selection": p.train.selection,
        "teacher_config": teacher_config_key(p),
    }
    if role == "student":
        tags.update(term_tags(p))
    tags.update(extra)
    return tags


def term_tags(p: Params) -> dict[str, str]:
    """A student's distillation terms as tags: kd, fd, rank, mimic -> "true" / "false"."""
    return {k: str(on).lower() for k, on in p.student.terms.items()}


def recipe(p: Params, role: str = "teacher") -> dict:
    """Everything that decides what a training of `role` produces: seed, data, preprocessing,
    model and training (and the student's terms for a student); not `runtime`."""
    d = p.to_dict()
    sections = ("data", "preprocess", "model", "train") + (
        ("student",) if role == "student" else ()
    )
    out = {
        "seed": d["seed"],
        **{s: dict(d[s]) for s in sections},
    }
    return out


def same_recipe(written: dict, p: Params, role: str = "teacher") -> bool:
    """Whether params written by an earlier run (a summary's or checkpoint's) give the same
    training as `p`. Knobs added since the run read as the value that trains as it did
    (config.ADDED_KNOBS), so adding a knob does not make earlier runs stale."""
    try:
        return recipe(params_from_dict(written), role) == recipe(p, role)
    except ConfigError:  # a knob that no longer exists
        return False


def teacher_config_key(p: Params) -> str:
    """Hash of the teacher's recipe, so a teacher from `dvc repro` and one from `mlflow run` of
    the same config match (an MLflow tag)."""
    return short_hash(recipe(p))
