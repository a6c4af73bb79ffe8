"""PNG figures of training curves and detection results."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sibeatgan.datasets import CLASSES  # noqa: E402
from sibeatgan.io import atomic_path  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves(history: list[dict], title: str, path: Path) -> Path:
    """Val AUC / AP per epoch and mean losses per epoch, side by side."""
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [r["val_auc"] for r in history], "o-", label="val AUC")
    ax1.plot(epochs, [r["val_ap"] for r in history], "s--", label="val AP")
    ax1.set(xlabel="epoch", ylabel="score", title=f"{title}: validation")
    ax1.grid(alpha=0.3)
    ax1.legend()
    for key in sorted(k for k in history[0] if k.startswith("mean_loss_")):
        ax2.plot(epochs, [max(r[key], 1e-8) for r in history], "o-", label=key[10:])
    ax2.set(xlabel="epoch", ylabel="mean loss", yscale="log", title=f"{title}: losses")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    return save_figure(fig, path)


def detection_curves(curves: dict[str, dict], path: Path) -> Path:
    """ROC and PR curves of several models; `curves[name] = {"roc": ..., "pr": ..., "auc": ...}`."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, c in curves.items():
        ax1.plot(c["roc"]["fpr"], c["roc"]["tpr"], label=f"{name} (AUC {c['auc']:.4f})")
        ax2.plot(c["pr"]["recall"], c["pr"]["precision"], label=f"{name} (AP {c['ap']:.4f})")
    ax1.plot([0, 1], [0, 1], ":", color="grey")
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax2.set(xlabel="recall", ylabel="precision", title="precision-recall (test)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax1 else "lower left", fontsize=8)
    return save_figure(fig, path)


def score_histogram(
    scores: np.ndarray, classes: np.ndarray, threshold: float, title: str, path: Path
) -> Path:
    """Distribution of test anomaly scores per class, with the val-chosen threshold."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = np.logspace(np.log10(max(scores.min(), 1e-6)), np.log10(scores.max() + 1e-9), 60)
    for i, name in enumerate(CLASSES):
        mask = classes == i
        if mask.any():
            ax.hist(
                scores[mask],
                bins=bins,
                density=True,
                histtype="step",
                label=f"{name} ({mask.sum()})",
            )
    ax.axvline(threshold, color="k", ls="--", label="threshold (val)")
    ax.set(xscale="log", xlabel="anomaly score (reconstruction MSE)", ylabel="density", title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
