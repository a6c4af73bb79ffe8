"""MLflow model registry: teacher and student versions of one registered model, and the
`champion` alias, which goes to the best student only when it beats the teacher. Each trained
model is registered twice: its generator (reconstructions) and its detector (scores, flags and
error heat, `tracking/detector_model.py`), whose `champion` alias follows the generator's."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from sibeatgan import tracking
from sibeatgan.config import Params, params_from_dict

CHAMPION = "champion"
FIGURES = ("val_auc", "val_ap", "test_auc", "test_ap")


DESCRIPTIONS = {
    "model_uri": "BeatGAN generators (teachers) and distilled students",
    "detector_uri": "Beat detectors: beats (n x 320, normalised) in; score, flag and error heat"
    " per beat out",
}


def _ensure_model(client: MlflowClient, name: str, uri_key: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description=DESCRIPTIONS[uri_key])
        except MlflowException:  # another process registered it meanwhile
            client.get_registered_model(name)


def register(
    client: MlflowClient,
    name: str,
    info: dict,
    report: dict,
    p: Params,
    uri_key: str = "model_uri",
) -> ModelVersion:
    """Register the model a training run logged under `uri_key` of its fit.json (once per
    run), tagged with role and figures."""
    _ensure_model(client, name, uri_key)
    existing = [
        v
        for v in client.search_model_versions(f"name='{name}'")
        if v.tags.get("run_id") == info["run_id"]
    ]
    version = existing[0] if existing else mlflow.register_model(info[uri_key], name)
    tags = {
        "role": info["role"],
        "run_id": info["run_id"],
        "teacher_config": info["teacher_config"],
        # what the model was trained with, not what the evaluating params say
        "fold": str(info["recipe"]["data"]["fold"]),
        "seed": str(info["recipe"]["seed"]),
        "width": str(info["width"]),
    }
    if info["role"] == "student":
        tags.update(tracking.term_tags(params_from_dict(info["recipe"])))
    tags.update({k: f"{report[k]:.6f}" for k in FIGURES if report.get(k) is not None})
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    return client.get_model_version(name, version.version)


def promote(client: MlflowClient, name: str, metric: str, teacher_config: str) -> dict:
    """Give `champion` to the best version trained for this teacher config: the best student
    if its `metric` is higher than the teacher's, else the teacher. Record why."""
    versions = [
        v
        for v in client.search_model_versions(f"name='{name}'")
        if v.tags.get("teacher_config") == teacher_config and metric in v.tags
    ]
    teachers = [v for v in versions if v.tags.get("role") == "teacher"]
    students = [v for v in versions if v.tags.get("role") == "student"]
    if not teachers:
        raise ValueError(
            f"no registered teacher of model {name!r} for these params (config "
            f"{teacher_config}; registered: {_registered_configs(client, name)}); run "
            "`sibeatgan evaluate` after training with these params, or promote with the params "
            "the models were trained with"
        )
    teacher = max(teachers, key=lambda v: int(v.version))  # the newest teacher
    best_student = max(students, key=lambda v: float(v.tags[metric]), default=None)
    t_value = float(teacher.tags[metric])
    s_value = float(best_student.tags[metric]) if best_student else None
    student_wins = s_value is not None and s_value > t_value
    champion = best_student if student_wins else teacher
    if best_student is None:
        reason = f"no student yet; teacher v{teacher.version} {metric}={t_value:.4f}"
    else:
        verb = "beats" if student_wins else "does not beat"
        reason = (
            f"student v{best_student.version} {metric}={s_value:.4f} {verb} "
            f"teacher v{teacher.version} {metric}={t_value:.4f}"
        )
    client.set_registered_model_alias(name, CHAMPION, champion.version)
    decision = {
        "model": name,
        "alias": CHAMPION,
        "champion_version": int(champion.version),
        "champion_role": champion.tags.get("role"),
        "metric": metric,
        "teacher_version": int(teacher.version),
        f"teacher_{metric}": t_value,
        "student_version": int(best_student.version) if best_student else None,
        f"student_{metric}": s_value,
        "reason": reason,
    }
    client.set_registered_model_tag(name, "champion_decision", reason)
    client.set_model_version_tag(name, champion.version, "champion_reason", reason)
    print(f"champion -> v{champion.version} ({champion.tags.get('role')}): {reason}")
    return decision


def follow_champion(client: MlflowClient, name: str, decision: dict) -> int | None:
    """Point model `name`'s `champion` at the version logged by the same training run as the
    champion of `decision` (the generators' decision); the version, or None without one."""
    champion = client.get_model_version(decision["model"], str(decision["champion_version"]))
    run_id = champion.tags.get("run_id")
    same_run = [
        v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("run_id") == run_id
    ]
    if not same_run:
        return None
    version = max(same_run, key=lambda v: int(v.version))
    client.set_registered_model_alias(name, CHAMPION, version.version)
    client.set_model_version_tag(name, version.version, "champion_reason", decision["reason"])
    return int(version.version)


def _registered_configs(client: MlflowClient, name: str) -> str:
    """The teacher configs the registry holds, e.g. `3f2a... (fold 0, seed 0)`."""
    seen = {
        v.tags.get("teacher_config"): f"fold {v.tags.get('fold')}, seed {v.tags.get('seed')}"
        for v in client.search_model_versions(f"name='{name}'")
        if v.tags.get("role") == "teacher"
    }
    return "; ".join(f"{k} ({v})" for k, v in seen.items()) or "none"
