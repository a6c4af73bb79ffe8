"""Detection metrics (protocol section 6): AUC, AP, val-chosen threshold, oracle F1."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from sibeatgan.datasets import CLASSES


def auc_ap(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """ROC AUC and average precision; NaN when only one class is present."""
    if len(np.unique(labels)) < 2:
        return float("nan"), float("nan")
    return float(roc_auc_score(labels, scores)), float(average_precision_score(labels, scores))


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The score threshold (predict abnormal when score >= it) maximising F1, and that F1."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))  # the last point has no threshold
    return float(thresholds[best]), float(f1[best])


def detection_report(
    val_classes: np.ndarray,
    val_scores: np.ndarray,
    test_classes: np.ndarray,
    test_scores: np.ndarray,
) -> dict[str, float | None]:
    """Test AUC / AP, F1 and per-class recall at the threshold chosen on val, and the
    test-searched oracle F1 (for comparison with published tables only)."""
    val_y = (val_classes > 0).astype(int)
    test_y = (test_classes > 0).astype(int)
    auc, ap = auc_ap(test_y, test_scores)
    val_auc, val_ap = auc_ap(val_y, val_scores)
    threshold, val_f1 = best_f1_threshold(val_y, val_scores)
    predicted = test_scores >= threshold
    report: dict[str, float | None] = {
        "test_auc": auc,
        "test_ap": ap,
        "val_auc": val_auc,
        "val_ap": val_ap,
        "threshold": threshold,
        "val_f1": val_f1,
        "test_f1": float(f1_score(test_y, predicted, zero_division=0)),
        "oracle_f1": best_f1_threshold(test_y, test_scores)[1],
        "test_n_recall": float(np.mean(~predicted[test_classes == 0])),
    }
    for i, name in enumerate(CLASSES[1:], start=1):
        mask = test_classes == i
        report[f"recall_{name}"] = float(np.mean(predicted[mask])) if mask.any() else None
    return report


def thinned_curve(x: np.ndarray, y: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep about `points` points of a curve, always its ends, so plot files stay small."""
    if len(x) <= points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, points).round().astype(int))
    return x[keep], y[keep]


def roc_points(labels: np.ndarray, scores: np.ndarray, points: int) -> dict[str, np.ndarray]:
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = thinned_curve(fpr, tpr, points)
    return {"fpr": fpr, "tpr": tpr}


def pr_points(labels: np.ndarray, scores: np.ndarray, points: int) -> dict[str, np.ndarray]:
    precision, recall, _ = precision_recall_curve(labels, scores)
    recall, precision = thinned_curve(recall[::-1], precision[::-1], points)
    return {"recall": recall, "precision": precision}
