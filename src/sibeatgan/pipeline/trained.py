"""Trained models and prepared data on disk, checked before a stage uses them: a model's
fit.json, the data it was trained on, its network's shape, its generator."""

from __future__ import annotations

from pathlib import Path

import torch

from sibeatgan.config import Params, describe_changes, params_from_dict
from sibeatgan.data.preprocess import Prepared, load_data, prepared_key
from sibeatgan.io import load_state_dict, read_json
from sibeatgan.models import Generator
from sibeatgan.tracking.recipes import recipe


def load_checked(p: Params) -> Prepared:
    """The prepared data, refusing data made with other preprocessing or split params."""
    data = load_data(p)
    if data.meta.get("key") != prepared_key(p):
        raise ValueError(
            f"{p.runtime.prepared_dir} was made with other preprocess/split params "
            f"(fold {data.meta.get('fold')}, split {data.meta.get('split')}, "
            f"split_seed {data.meta.get('split_seed')}); "
            "rerun `sibeatgan preprocess` and `sibeatgan split` with these params (or `dvc repro`)"
        )
    return data


def set_threads(p: Params) -> None:
    if p.runtime.threads > 0:
        torch.set_num_threads(p.runtime.threads)


def student_width(p: Params) -> int:
    return max(1, round(p.model.width * p.student.width_mult))


TRAIN_COMMAND = {"teacher": "sibeatgan train-teacher", "student": "sibeatgan train-student"}


def trained_model_info(model_dir: Path, role: str = "teacher") -> dict:
    """The model's fit.json, after checking that its checkpoint is there too."""
    missing = [n for n in ("fit.json", "G.pt") if not (model_dir / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"no trained {role} in {model_dir} (missing {', '.join(missing)}); "
            f"run `{TRAIN_COMMAND[role]}` (or `dvc repro`) first"
        )
    return read_json(model_dir / "fit.json")


def model_data_key(info: dict) -> tuple[str, int]:
    """The prepared-data key and channel count a model was trained on (from its fit.json;
    models written before `data_key` was recorded give it through their recipe)."""
    key = info.get("data_key") or prepared_key(params_from_dict(info["recipe"]))
    return key, int(info["nc"])


def data_differences(info: dict, p: Params) -> str:
    """What differs between the data a model was trained on and the data of `p`, e.g.
    `data.fold 0 -> 1`; empty when they are the same."""
    if "recipe" not in info:
        return "data not recorded by the version that trained it"
    if model_data_key(info) == (prepared_key(p), p.data.channels):
        return ""
    trained, now = recipe(params_from_dict(info["recipe"])), recipe(p)
    sections = ("data", "preprocess")
    return (
        describe_changes({k: trained[k] for k in sections}, {k: now[k] for k in sections})
        or "the prepared data"
    )


def check_model_data(model_dir: Path, info: dict, p: Params, role: str) -> None:
    """Refuse a model trained on other data than `p` names (another fold, split or leads)."""
    changed = data_differences(info, p)
    if changed:
        raise ValueError(
            f"{model_dir} was trained on other data ({changed}); train it with these params "
            f"(`{TRAIN_COMMAND[role]}`), or run this command with the params it was trained with"
        )


def check_teacher_shape(teacher_dir: Path, info: dict, p: Params) -> None:
    """Refuse a teacher whose network is not the one `p` describes (a student's width and
    feature projections are derived from model.width and model.nz)."""
    shape = {"model": {"width": info["width"], "nz": info["nz"]}}
    changed = describe_changes(shape, {"model": {"width": p.model.width, "nz": p.model.nz}})
    if changed:
        raise ValueError(
            f"{teacher_dir} holds another network ({changed}); train the teacher with these "
            "params (`sibeatgan train-teacher`), or train the student with the teacher's"
        )


def load_generator(
    model_dir: Path, device: torch.device | str = "cpu", role: str = "teacher"
) -> Generator:
    info = trained_model_info(model_dir, role)
    g = Generator(info["nc"], info["nz"], info["width"])
    g.load_state_dict(load_state_dict(model_dir / "G.pt"))
    return g.to(device).eval()
