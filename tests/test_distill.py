import dataclasses

import numpy as np
import pytest
import torch
from test_train import cfg, toy_data

from sibeatgan.config import StudentCfg
from sibeatgan.evaluation.scoring import beat_scores
from sibeatgan.models import build_models
from sibeatgan.training.distill import Distiller, kd_loss, rank_loss, scale_scores
from sibeatgan.training.loop import FitData, Nets, fit


def teacher_and_student(width_mult=1.0, **student):
    teacher, _ = build_models(1, 8, 8, seed=1)
    s_cfg = StudentCfg(**student)
    s_width = int(8 * width_mult)
    g, d = build_models(1, 8, s_width, seed=2)
    return teacher, g, d, Distiller(teacher, s_cfg, s_width)


@pytest.mark.parametrize(
    "student,width_mult",
    [
        (dict(kd=True, fd=False), 1.0),
        (dict(kd=False, fd=True, fd_mode="attention"), 1.0),
        (dict(kd=False, fd=True, fd_mode="hint"), 0.5),
        (dict(kd=False, fd=True, fd_mode="attention"), 0.5),
        (dict(kd=False, rank=True), 1.0),
        (dict(kd=False, mimic=True), 0.5),
        (dict(kd=True, rank=True, mimic=True), 1.0),
    ],
)
def test_distillation_terms_have_gradient_on_student(student, width_mult):
    teacher, g, _, distiller = teacher_and_student(width_mult, **student)
    x = torch.rand(16, 1, 320) * 2 - 1
    x_rec, maps = g.forward_with_features(x)
    terms = distiller.losses(x, x_rec, maps)
    assert set(terms) == {k for k, on in distiller.cfg.terms.items() if on}
    loss = sum(terms.values())
    assert loss.item() > 0
    loss.backward()
    grad = sum(p.grad.abs().sum().item() for p in g.parameters() if p.grad is not None)
    assert grad > 0, "the distillation term must put a gradient on the student"
    assert all(p.grad is None for p in teacher.parameters())


def test_kd_is_zero_when_student_matches_teacher():
    s = torch.randn(32)
    assert kd_loss(s, s, 4.0).item() == pytest.approx(0, abs=1e-6)
    assert kd_loss(s, -s, 4.0).item() > 0


def test_rank_loss_rewards_the_teachers_order_at_any_scale():
    t = torch.randn(32)
    agree, disagree = rank_loss(5 * t, t), rank_loss(-5 * t, t)
    chance = rank_loss(torch.zeros(32), t).item()  # log 2
    assert agree.item() < chance / 4 and disagree.item() > 4 * chance
    assert rank_loss(50 * t, t) < agree, "a wider margin in the right order costs less"
    assert rank_loss(5 * t, 100 * t).item() == pytest.approx(agree.item())
    assert rank_loss(t, torch.zeros(32)).item() == 0, "all ties: no pair to rank, no NaN"


def test_standardized_scores_are_not_uniform():
    x = torch.rand(64, 1, 320)
    raw = beat_scores(x * 0.9, x)
    z = scale_scores(raw, "standardize")
    assert z.std().item() == pytest.approx(1, rel=1e-3)
    p_raw = torch.softmax(raw / 4, 0)
    p_z = torch.softmax(z / 4, 0)
    assert (p_z.max() - p_z.min()) > 100 * (p_raw.max() - p_raw.min())


@pytest.mark.parametrize("mode", ["attention", "hint"])
def test_teacher_never_changes_during_student_training(mode):
    teacher, g, d, distiller = teacher_and_student(kd=True, fd=True, fd_mode=mode)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    train_x, val_x, val_y = toy_data()
    fit(Nets(g, d), FitData(train_x, val_x, val_y), cfg(epochs=1), seed=0, distiller=distiller)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher {k} changed"
    assert not teacher.training, "the teacher stays in eval mode"
    assert not any(p.requires_grad for p in teacher.parameters())


def test_distillation_changes_what_the_student_learns():
    """Same seed and data, with and without KD: the student ends somewhere else."""
    train_x, val_x, val_y = toy_data()
    states = []
    for kd in (False, True):
        teacher, g, d, distiller = teacher_and_student(kd=kd, fd=False, kd_weight=10.0)
        fit(
            Nets(g, d),
            FitData(train_x, val_x, val_y),
            cfg(epochs=1),
            seed=0,
            distiller=distiller if kd else None,
        )
        states.append(g.state_dict())
    diff = sum((states[0][k].float() - states[1][k].float()).abs().sum().item() for k in states[0])
    assert diff > 0
    assert np.isfinite(diff)


def test_hint_projections_train_with_the_student():
    _, g, d, distiller = teacher_and_student(0.5, kd=False, fd=True, fd_mode="hint")
    before = [p.clone() for p in distiller.projections.parameters()]
    train_x, val_x, val_y = toy_data()
    fit(Nets(g, d), FitData(train_x, val_x, val_y), cfg(epochs=1), seed=0, distiller=distiller)
    after = list(distiller.projections.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert dataclasses.is_dataclass(distiller.cfg)


def test_a_resumed_student_restores_its_hint_projections(tmp_path):
    from test_train import fit_stopped_then_resumed

    def build(seed):
        return build_models(1, 8, 4, seed)

    def distiller_of():
        return teacher_and_student(0.5, kd=True, fd=True, fd_mode="hint")[3]

    train_x, val_x, val_y = toy_data()
    g, d = build(0)
    straight = fit(
        Nets(g, d), FitData(train_x, val_x, val_y), cfg(epochs=2), seed=0, distiller=distiller_of()
    )
    _, resumed = fit_stopped_then_resumed(cfg(epochs=2), tmp_path / "s.pt", build, distiller_of)
    assert [r["val_auc"] for r in resumed.history] == [r["val_auc"] for r in straight.history]
    assert [r["mean_loss_fd"] for r in resumed.history] == [
        r["mean_loss_fd"] for r in straight.history
    ]


def test_kd_distils_the_score_of_the_table(monkeypatch):
    """KD compares teacher and student on train.score as the score table defines it: a score
    plugged into the table (one entry) is what a student learns; one that reads more than the
    reconstruction is refused in one line naming those that can be distilled."""
    from sibeatgan.evaluation import scores

    def peak(x_rec, x):
        return (x_rec - x).abs().amax(dim=(1, 2))

    entry = scores.Score("largest error", scores.mse_parts, scores.single("mse"))
    monkeypatch.setitem(scores.SCORES, "peak", dataclasses.replace(entry, of_reconstruction=peak))
    teacher, g, _, _ = teacher_and_student()
    x = torch.rand(16, 1, 320) * 2 - 1
    x_rec, maps = g.forward_with_features(x)
    t_rec = teacher(x)
    for name, fn in (("mse", beat_scores), ("peak", peak), ("mse_z_rhythm", beat_scores)):
        distiller = Distiller(teacher, StudentCfg(kd=True), 8, score=name)
        want = kd_loss(
            scale_scores(fn(x_rec, x), "standardize"),
            scale_scores(fn(t_rec, x), "standardize"),
            4.0,
        )
        assert distiller.losses(x, x_rec, maps)["kd"].item() == pytest.approx(want.item())
    with pytest.raises(
        scores.ScoreError,
        match=r"'latent' cannot be distilled.*one of mse, mse_rhythm, mse_z_rhythm, peak",
    ):
        Distiller(teacher, StudentCfg(kd=True), 8, score="latent")
    Distiller(teacher, StudentCfg(kd=False, fd=True), 8, score="latent")  # no score term: fine
