"""The anomaly scores, in one table.

Each score is a function of the models (G, and D for the scores that compare D's features) and
a batch of beats. It returns per-beat parts (raw, unscaled measurements) that `combine` turns
into the beat's score with parameters `fit` chose on val (none for most scores). Every score
also hands back the per-tick reconstruction error, the heat that shows which ticks made a beat
abnormal. Adding a score is one function and one entry in SCORES. Training's epoch selection,
evaluate, the study, detect, serving and distillation (`distillable`: what KD compares between
teacher and student) all read this table.

A score can also be made *record-adaptive* (`record_adaptive`): each beat's score relative to
the other beats of its own record, which carries a threshold from one patient to another.

A score that `reads_context` (`mse_rhythm`, `mse_z_rhythm`) also takes each beat's context in
its record (`data/rhythm.py` BeatContext): its timing among its neighbours (how early it comes,
the pause after it, from the R-peak samples) and, for `mse_z_rhythm`, its mse as a robust z
among the beats of its record. Like record-adaptive scoring these read other beats of the
record, so they are reported beside the published per-beat protocol, never in it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from sibeatgan.data import rhythm
from sibeatgan.evaluation import scoring
from sibeatgan.evaluation.metrics import auc_ap
from sibeatgan.models import Discriminator, Generator

Parts = dict[str, torch.Tensor]
Params = dict[str, float]


class ScoreError(ValueError):
    """An unknown score, or a score its models cannot compute; the message names the fix."""


@dataclass
class Models:
    """What a score reads: G, and D for the scores that compare D's features."""

    g: Generator
    d: Discriminator | None = None


def reconstruction(models: Models, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G(x) and the squared error per tick averaged over leads, [n, length]."""
    x_rec = models.g(x)
    return x_rec, (x_rec.float() - x.float()).pow(2).mean(1)


def mse_parts(models: Models, x: torch.Tensor) -> Parts:
    """The published score: mean squared reconstruction error."""
    _, heat = reconstruction(models, x)
    return {"mse": heat.mean(1), "heat": heat}


def latent_parts(models: Models, x: torch.Tensor) -> Parts:
    """GANomaly's score: squared distance between the codes of x and of G(x), per latent unit."""
    z = models.g.encoder(models.g.layers.enter(x)).flatten(1)
    x_rec, heat = reconstruction(models, x)
    z_rec = models.g.encoder(models.g.layers.enter(x_rec)).flatten(1)
    return {"latent": (z.float() - z_rec.float()).pow(2).mean(1), "heat": heat}


def dfeat_parts(models: Models, x: torch.Tensor) -> Parts:
    """Reconstruction error and the distance between D's features of x and of G(x)."""
    d = models.d
    assert d is not None  # score_parts checks first
    x_rec, heat = reconstruction(models, x)
    feat = (d.features(x).float() - d.features(x_rec).float()).pow(2).flatten(1).mean(1)
    return {"mse": heat.mean(1), "dfeat": feat, "heat": heat}


def single(name: str) -> Callable[[Parts, Params], torch.Tensor]:
    def combine(parts: Parts, params: Params) -> torch.Tensor:
        return parts[name]

    return combine


def mix_combine(parts: Parts, params: Params) -> torch.Tensor:
    """(1 - w) * mse / scale_mse + w * dfeat / scale_dfeat: both parts in units of their median
    on val N beats, so that w is a share, as skip-GANomaly's 0.9 / 0.1 mix."""
    w = params["weight"]
    mse = parts["mse"] / params["scale_mse"]
    return (1 - w) * mse + w * parts["dfeat"] / params["scale_dfeat"]


MIX_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def fit_mix(parts: dict[str, np.ndarray], labels: np.ndarray) -> Params:
    """The mix's scales (medians on val N) and its weight (the best val AUC of MIX_WEIGHTS)."""
    normal = labels == 0
    params = {
        "scale_mse": float(max(np.median(parts["mse"][normal]), 1e-12)),
        "scale_dfeat": float(max(np.median(parts["dfeat"][normal]), 1e-12)),
    }
    tensors = {k: torch.from_numpy(v) for k, v in parts.items()}

    def val_auc(w: float) -> float:
        return auc_ap(labels, mix_combine(tensors, {**params, "weight": w}).numpy())[0]

    params["weight"] = max(MIX_WEIGHTS, key=val_auc)
    return params


def no_params(parts: dict[str, np.ndarray], labels: np.ndarray) -> Params:
    return {}


def rhythm_mix(first: str) -> dict:
    """A linear mix of part `first` and the logs of the beat's prematurity and pause
    (`w_first first + w_prematurity log prematurity + w_pause log pause`; `first` is logged
    too unless it is already a z-score), weights fitted on val by a class-balanced logistic
    regression on the standardised columns, brought back to the columns' own units: the
    combine, fit and params of a Score."""
    names = (first, *rhythm.COLUMNS)

    def columns(parts: Mapping) -> torch.Tensor:
        cols = [torch.as_tensor(parts[k]).double() for k in names]
        logged = [
            c if k.endswith("_z") else c.clamp_min(1e-12).log()
            for k, c in zip(names, cols, strict=True)
        ]
        return torch.stack(logged, dim=1)

    def combine(parts: Parts, params: Params) -> torch.Tensor:
        weights = torch.tensor([params[f"w_{k}"] for k in names], dtype=torch.float64)
        return (columns(parts) @ weights).float()

    def fit(parts: dict[str, np.ndarray], labels: np.ndarray) -> Params:
        if len(np.unique(labels)) < 2:
            raise ScoreError("a rhythm mix is fitted on val beats of both classes; val has one")
        x = columns(parts).numpy()
        spread = np.maximum(x.std(axis=0), 1e-12)
        model = LogisticRegression(class_weight="balanced").fit(x / spread, labels)
        return {f"w_{k}": float(w) for k, w in zip(names, model.coef_[0] / spread, strict=True)}

    return {"combine": combine, "fit": fit, "params": tuple(f"w_{k}" for k in names)}


@dataclass(frozen=True)
class Score:
    about: str
    parts: Callable[[Models, torch.Tensor], Parts]
    combine: Callable[[Parts, Params], torch.Tensor]
    fit: Callable[[dict[str, np.ndarray], np.ndarray], Params] = no_params
    needs_d: bool = False
    params: tuple[str, ...] = field(default=())  # what `fit` chooses on val
    # reads each beat's context in its record (data/rhythm.py BeatContext) besides the beats:
    # like record-adaptive scoring it uses other beats of the record, never the per-beat protocol
    reads_context: bool = False
    # compares a beat with the other beats of its record: needs enough beats of one record
    # (detect and serving ask for detector.MIN_ADAPTIVE_BEATS)
    reads_record: bool = False
    signed: bool = False  # its scores may be negative (a mix of logs); thresholds too
    # the per-beat score of a reconstruction G(x) already made (x_rec, x), with its gradient:
    # what distillation compares between teacher and student (None: it cannot be distilled)
    of_reconstruction: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


SCORES: dict[str, Score] = {
    "mse": Score(
        "mean squared reconstruction error (BeatGAN)",
        mse_parts,
        single("mse"),
        of_reconstruction=scoring.beat_scores,
    ),
    "latent": Score("||E(x) - E(G(x))||^2 (GANomaly)", latent_parts, single("latent")),
    "dfeat": Score(
        "distance of D's features of x and G(x)", dfeat_parts, single("dfeat"), needs_d=True
    ),
    "mse_dfeat": Score(
        "reconstruction error mixed with D's feature distance (skip-GANomaly), mix chosen on val",
        dfeat_parts,
        mix_combine,
        fit_mix,
        needs_d=True,
        params=("weight", "scale_mse", "scale_dfeat"),
    ),
    "mse_rhythm": Score(
        "log reconstruction error mixed with the beat's prematurity and pause, mix fitted on val",
        mse_parts,
        **rhythm_mix("mse"),
        # the student learns the model's part of it, the reconstruction error: the timing is
        # the teacher's and the student's alike, and the z a per-record monotone map of mse
        of_reconstruction=scoring.beat_scores,
        reads_context=True,
        signed=True,
    ),
    "mse_z_rhythm": Score(
        "reconstruction error as a robust z among its record's beats, mixed with the beat's "
        "prematurity and pause, mix fitted on val (for patients the model has not seen)",
        mse_parts,
        **rhythm_mix("mse_z"),
        # the student learns the model's part of it, the reconstruction error: the timing is
        # the teacher's and the student's alike, and the z a per-record monotone map of mse
        of_reconstruction=scoring.beat_scores,
        reads_context=True,
        reads_record=True,
        signed=True,
    ),
}


def score_def(name: str, models: Models | None = None) -> Score:
    """The table's entry for `name`; one line naming the known scores if there is none, or if
    the score needs D and `models` has none."""
    if not isinstance(name, str) or name not in SCORES:
        raise ScoreError(f"unknown anomaly score {name!r}; known: {', '.join(SCORES)}")
    entry = SCORES[name]
    if models is not None and entry.needs_d and models.d is None:
        raise ScoreError(
            f"the score {name!r} needs D's weights and this model has none; train with D kept "
            f"(D.pt beside G.pt) or use a score that reads G only: {', '.join(g_only_scores())}"
        )
    return entry


def distillable(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """How the score `name` follows from a reconstruction, for distillation; one line naming
    the scores that can be distilled when it cannot (it reads more than G(x) and x)."""
    entry = score_def(name)
    if entry.of_reconstruction is None:
        known = [n for n, s in SCORES.items() if s.of_reconstruction is not None]
        raise ScoreError(
            f"the score {name!r} cannot be distilled (the student is trained on a per-beat score "
            f"of its reconstruction, and {name!r} reads more than that); set train.score to one "
            f"of {', '.join(known)} for a distilled student"
        )
    return entry.of_reconstruction


def g_only_scores() -> list[str]:
    return [n for n, s in SCORES.items() if not s.needs_d]


def check_params(name: str, params: Mapping[str, float]) -> Params:
    """The parameters `name` needs, finite and present; one line otherwise."""
    entry = score_def(name)
    missing = [k for k in entry.params if k not in params]
    if missing:
        raise ScoreError(f"score {name!r} lacks its parameters {missing}; fit them on val")
    number = lambda v: isinstance(v, int | float) and not isinstance(v, bool)  # noqa: E731
    bad = [k for k in entry.params if not number(params[k]) or not np.isfinite(params[k])]
    if bad:
        raise ScoreError(f"score {name!r}: parameters {bad} are not finite numbers")
    return {k: float(params[k]) for k in entry.params}


@torch.no_grad()
def score_parts(
    name: str,
    models: Models,
    x: torch.Tensor | np.ndarray,
    batch_size: int = 1024,
    context: rhythm.BeatContext | None = None,
) -> dict[str, np.ndarray]:
    """Every part of score `name` (and the heat) for the beats `x` [n, nc, L]; the models in
    eval mode (BatchNorm on its running statistics), restored afterwards. `context`: the
    beats' records and timing, which the scores that read context need."""
    entry = score_def(name, models)
    if entry.reads_context:
        return with_context(name, model_parts(entry, models, x, batch_size), context)
    return model_parts(entry, models, x, batch_size)


def with_context(
    name: str, parts: dict[str, np.ndarray], context: rhythm.BeatContext | None
) -> dict[str, np.ndarray]:
    """`parts` and the beats' context parts (their rhythm columns, and mse as a robust z in
    its record); one line when the context is missing or does not fit the beats."""
    n = len(parts["heat"])
    if context is None:
        per_beat = [k for k, s in SCORES.items() if not s.reads_context]
        raise ScoreError(
            f"the score {name!r} reads each beat's context in its record, and these beats come "
            "without their record and R-peak samples; score whole records (detect), or use a "
            f"per-beat score: {', '.join(per_beat)}"
        )
    if len(context) != n:
        raise ScoreError(f"the context of {len(context)} beats for {n} beats; give one per beat")
    timing = np.asarray(context.timing, dtype=np.float64)
    out = {**parts, **{k: timing[:, i] for i, k in enumerate(rhythm.COLUMNS)}}
    if "mse" in parts:
        out["mse_z"] = record_adaptive(parts["mse"], context.records).astype(np.float64)
    return out


@torch.no_grad()
def model_parts(
    entry: Score, models: Models, x: torch.Tensor | np.ndarray, batch_size: int
) -> dict[str, np.ndarray]:
    """The parts `entry` computes from the models and the beats (see `score_parts`)."""
    nets = [m for m in (models.g, models.d) if m is not None]
    modes = [m.training for m in nets]
    for m in nets:
        m.eval()
    device = next(models.g.parameters()).device
    x = torch.as_tensor(x)
    chunks: list[Parts] = []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            chunks.append({k: v.float().cpu() for k, v in entry.parts(models, xb).items()})
    finally:
        for m, mode in zip(nets, modes, strict=True):
            m.train(mode)
    if not chunks:
        keys = entry.parts(models, torch.zeros(1, *x.shape[1:], device=device)).keys()
        return {k: np.zeros((0, x.shape[-1]) if k == "heat" else 0, np.float32) for k in keys}
    return {k: torch.cat([c[k] for c in chunks]).numpy() for k in chunks[0]}


def combine(name: str, parts: dict[str, np.ndarray], params: Mapping[str, float]) -> np.ndarray:
    """The per-beat scores of `name` from its parts."""
    tensors = {k: torch.from_numpy(v) for k, v in parts.items() if k != "heat"}
    return SCORES[name].combine(tensors, check_params(name, params)).numpy()


def fit(name: str, val_parts: dict[str, np.ndarray], val_labels: np.ndarray) -> Params:
    """The parameters of `name` chosen on val (labels 1 = abnormal)."""
    return score_def(name).fit(val_parts, val_labels)


def beat_scores(
    name: str,
    models: Models,
    x: torch.Tensor | np.ndarray,
    params: Mapping[str, float] | None = None,
    batch_size: int = 1024,
    context: rhythm.BeatContext | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-beat scores of `name` and the per-tick reconstruction heat [n, L] (`context`: see
    `score_parts`)."""
    parts = score_parts(name, models, x, batch_size, context)
    return combine(name, parts, params or {}), parts["heat"]


def fitted_on_val(
    name: str,
    models: Models,
    val_x: torch.Tensor | np.ndarray,
    val_labels: np.ndarray,
    batch_size: int = 1024,
    context: rhythm.BeatContext | None = None,
) -> tuple[Params, np.ndarray, np.ndarray]:
    """Score `name` fitted on val: its parameters, the val beats' scores, and their mean squared
    reconstruction error (the `val_recon` selection reads it whatever the score; `context`: see
    `score_parts`)."""
    parts = score_parts(name, models, val_x, batch_size, context)
    params = fit(name, parts, val_labels)
    return params, combine(name, parts, params), parts["heat"].mean(1)


# ------------------------------------------------------------------ record-adaptive scoring

MAD_TO_SD = 1.4826  # the MAD of a normal distribution times this is its standard deviation


def record_adaptive(scores: np.ndarray, records: np.ndarray) -> np.ndarray:
    """Each beat's robust z-score among the beats of its own record: (s - median) / (1.4826
    MAD), no labels. A record whose scores do not vary (MAD 0) is scaled by its median's
    millionth instead, so a single different beat still stands out."""
    scores = np.asarray(scores, dtype=np.float64)
    records = np.asarray(records)
    if scores.shape != records.shape:
        raise ScoreError(f"{scores.shape[0]} scores but {records.shape[0]} record names")
    out = np.empty_like(scores)
    for rec in np.unique(records):
        mask = records == rec
        out[mask] = robust_z(scores[mask])
    return out.astype(np.float32)


def robust_z(scores: np.ndarray) -> np.ndarray:
    """The robust z-scores of one record's beats (see `record_adaptive`), in float64."""
    s = np.asarray(scores, dtype=np.float64)
    median = np.median(s)
    spread = MAD_TO_SD * np.median(np.abs(s - median))
    spread = spread if spread > 0 else max(abs(median) * 1e-6, 1e-12)
    return (s - median) / spread


@dataclass
class Scored:
    """Beats of one part (val or test) with what the score table needs of them."""

    x: torch.Tensor | np.ndarray
    labels: np.ndarray  # 1 = abnormal
    records: np.ndarray
    context: rhythm.BeatContext | None = None  # for the scores that read it


def table_parts(
    models: Models, val: Scored, test: Scored, batch_size: int = 1024
) -> dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """The val and test parts of every score of the table that `models` can compute, by score
    name; scores that share their parts compute them once. Scores that read context are left
    out when the beats come without it."""
    out, by_parts = {}, {}
    placed = val.context is not None and test.context is not None
    for name, entry in SCORES.items():
        if (entry.needs_d and models.d is None) or (entry.reads_context and not placed):
            continue
        if entry.parts not in by_parts:
            by_parts[entry.parts] = tuple(
                model_parts(entry, models, part.x, batch_size) for part in (val, test)
            )
        out[name] = by_parts[entry.parts]
        if entry.reads_context:
            out[name] = tuple(
                with_context(name, found, part.context)
                for found, part in zip(out[name], (val, test), strict=True)
            )
    return out


def score_table(
    models: Models,
    val: Scored,
    test: Scored,
    batch_size: int = 1024,
    parts: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] | None = None,
) -> list[dict]:
    """Every score of the table that `models` can compute, fitted on val: val and test AUC per
    beat and record-adaptive (each beat's robust z among its record's beats of the same part;
    it uses other beats of the record, so it is never the published per-beat protocol).
    `parts`: those `table_parts` computed already."""
    rows = []
    for name, (val_parts, test_parts) in (
        parts or table_parts(models, val, test, batch_size)
    ).items():
        params = fit(name, val_parts, val.labels)
        val_s = combine(name, val_parts, params)
        test_s = combine(name, test_parts, params)
        for adaptive in (False, True):
            v, t = val_s, test_s
            if adaptive:
                v, t = record_adaptive(v, val.records), record_adaptive(t, test.records)
            rows.append(
                {
                    "score": name,
                    "record_adaptive": adaptive,
                    "params": params,
                    "val_auc": auc_ap(val.labels, v)[0],
                    "test_auc": auc_ap(test.labels, t)[0],
                }
            )
    return rows
