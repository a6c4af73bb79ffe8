import numpy as np
import pytest

from sibeatgan.evaluation.metrics import (
    best_f1_threshold,
    detection_report,
    roc_points,
    thinned_curve,
)


def test_threshold_is_chosen_on_val_not_test():
    val_cls = np.array([0, 0, 0, 0, 2, 2])
    val_s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    test_cls = np.array([0, 0, 0, 1, 2, 3, 4])
    test_s = np.array([0.1, 0.2, 0.45, 0.35, 0.55, 0.7, 0.2])
    r = detection_report(val_cls, val_s, test_cls, test_s)
    assert r["threshold"] == pytest.approx(0.5)
    # at 0.5: V and F caught, S (0.35) and Q (0.2) missed, all N below
    assert (r["recall_S"], r["recall_V"], r["recall_F"], r["recall_Q"]) == (0.0, 1.0, 1.0, 0.0)
    assert r["test_n_recall"] == 1.0
    assert r["test_f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert r["oracle_f1"] >= r["test_f1"]
    assert 0 < r["test_auc"] < 1


def test_missing_class_gives_none_not_nan():
    r = detection_report(
        np.array([0, 2]), np.array([0.1, 0.9]), np.array([0, 2]), np.array([0.1, 0.9])
    )
    assert r["recall_S"] is None and r["recall_V"] == 1.0


def test_best_f1_threshold():
    thr, f1 = best_f1_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert thr == pytest.approx(0.8) and f1 == pytest.approx(1.0)


def test_thinned_curve_keeps_ends():
    x, y = thinned_curve(np.arange(1000.0), np.arange(1000.0), 50)
    assert len(x) <= 50 and x[0] == 0 and x[-1] == 999
    pts = roc_points(np.r_[np.zeros(500), np.ones(500)], np.random.default_rng(0).random(1000), 30)
    assert len(pts["fpr"]) <= 30 and pts["fpr"][0] == 0 and pts["tpr"][-1] == 1
