"""Published MIT-BIH test figures to set beside ours (test N vs S/V/F/Q, intra-patient split)."""

from __future__ import annotations

# (method, AUC, AUC std or None, AP, source)
PUBLISHED: list[tuple[str, float, float | None, float, str]] = [
    ("AE", 0.8944, 0.0128, 0.8415, "BeatGAN paper, Table 3, 5-fold mean +- std"),
    ("Ganomaly", 0.9083, 0.0122, 0.8701, "BeatGAN paper, Table 3"),
    ("BeatGAN", 0.9447, 0.0053, 0.9108, "BeatGAN paper, Table 3"),
    ("BeatGAN_aug (time-warp)", 0.9475, 0.0037, 0.9143, "BeatGAN paper, Table 3"),
    ("BeatGAN rerun, fold 0", 0.9404, None, 0.9087, "third-party run of the official code"),
    ("BeatGAN teacher, fold 0", 0.9372, None, 0.9048, "SI-BeatGAN final report"),
    ("SI-BeatGAN student, KD", 0.9464, None, 0.9134, "SI-BeatGAN report (KD had no gradient)"),
    ("SI-BeatGAN student, FD", 0.9341, None, 0.9018, "SI-BeatGAN report"),
    ("SI-BeatGAN student, KD + FD", 0.9120, None, 0.8875, "SI-BeatGAN report"),
]
