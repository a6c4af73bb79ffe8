"""Knowledge distillation from a frozen BeatGAN teacher (protocol section 7, "ours").

Every batch, teacher and student see the same beats. The score term compares the teacher's and
the student's per-beat anomaly scores on live student tensors, so it has a gradient; the feature
term compares encoder maps at each of the five depths. Two more terms from the literature: a
relational one (the student ranks every pair of beats as the teacher does) and reconstruction
mimicry (the student also regresses onto the teacher's reconstructions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sibeatgan.config import StudentCfg
from sibeatgan.evaluation import scores
from sibeatgan.models import Generator, channel_widths


def scale_scores(scores: torch.Tensor, how: str) -> torch.Tensor:
    """Raw scores are ~1e-2, so a softmax over them is nearly uniform. `standardize` maps each
    batch's scores to zero mean and unit variance before the temperature is applied."""
    if how == "standardize":
        return (scores - scores.mean()) / (scores.std() + 1e-8)
    return scores


def kd_loss(s_student: torch.Tensor, s_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(s_t/T) || softmax(s_s/T)) over the beats of the batch."""
    log_p_student = F.log_softmax(s_student / temperature, dim=0)
    p_teacher = F.softmax(s_teacher / temperature, dim=0)
    return temperature**2 * F.kl_div(log_p_student, p_teacher, reduction="sum")


def rank_loss(s_student: torch.Tensor, s_teacher: torch.Tensor) -> torch.Tensor:
    """Pairwise ranking (RankNet): for every pair of beats the teacher orders, the logistic loss
    of the student's score difference in that order. Only the order matters, so it is blind to
    the scale of either model's scores."""
    order = torch.sign(s_teacher[:, None] - s_teacher[None, :])
    margin = order * (s_student[:, None] - s_student[None, :])
    pairs = order != 0
    if not pairs.any():  # the teacher ties every beat: nothing to rank
        return s_student.sum() * 0
    return F.softplus(-margin[pairs]).mean()


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Attention transfer (p=2): channel mean of squared activations, L2-normalised over time."""
    return F.normalize(feature.pow(2).mean(1), dim=1)


class Distiller(nn.Module):
    """The frozen teacher plus the (trainable) 1x1 projections that `hint` mode needs."""

    def __init__(self, teacher: Generator, cfg: StudentCfg, student_width: int, score: str = "mse"):
        super().__init__()
        self.cfg = cfg
        # the anomaly score the KD and rank terms compare (train.score), from the score table
        self.score = scores.distillable(score) if (cfg.kd or cfg.rank) else None
        self.teacher = teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        teacher_widths = channel_widths(teacher.encoder.blocks[0][0].out_channels)
        self.projections = nn.ModuleList(
            nn.Conv1d(s, t, 1, bias=False)
            for s, t in zip(channel_widths(student_width), teacher_widths, strict=True)
        )
        if not (cfg.fd and cfg.fd_mode == "hint"):
            self.projections = nn.ModuleList()

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics never move
        return self

    def losses(
        self, x: torch.Tensor, x_rec: torch.Tensor, maps: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Weighted KD and FD terms for one batch (only those switched on)."""
        with torch.no_grad():
            t_rec, t_maps = self.teacher.forward_with_features(x)
        out: dict[str, torch.Tensor] = {}
        if self.cfg.kd or self.cfg.rank:
            s_s = scale_scores(self.score(x_rec, x), self.cfg.score_scaling)
            s_t = scale_scores(self.score(t_rec, x), self.cfg.score_scaling)
        if self.cfg.kd:
            out["kd"] = self.cfg.kd_weight * kd_loss(s_s, s_t, self.cfg.temperature)
        if self.cfg.rank:
            out["rank"] = self.cfg.rank_weight * rank_loss(s_s, s_t)
        if self.cfg.mimic:
            out["mimic"] = self.cfg.mimic_weight * F.mse_loss(x_rec, t_rec.float())
        if self.cfg.fd:
            if self.cfg.fd_mode == "attention":
                terms = [
                    (attention_map(s) - attention_map(t)).pow(2).sum(1).mean()
                    for s, t in zip(maps, t_maps, strict=True)
                ]
            else:
                terms = [
                    F.mse_loss(proj(s), t)
                    for proj, s, t in zip(self.projections, maps, t_maps, strict=True)
                ]
            out["fd"] = self.cfg.fd_weight * torch.stack(terms).mean()
        return out
