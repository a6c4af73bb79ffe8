"""The train-mode scoring probe (research/scripts/scoring_mode.py): batch statistics, in order."""

import copy
import importlib.util
from pathlib import Path

import numpy as np
import torch

from sibeatgan.evaluation.scoring import beat_scores
from sibeatgan.models import build_models

_path = Path(__file__).parents[1] / "scripts" / "scoring_mode.py"
_spec = importlib.util.spec_from_file_location("scoring_mode", _path)
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def test_train_mode_scores_follow_the_order_and_leave_g_alone():
    g, _ = build_models(1, 50, 8, seed=0)
    g.eval()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (100, 1, 320)).astype(np.float32))
    order = np.random.default_rng(1).permutation(100)
    scores = probe.train_mode_scores(g, x, order)
    # each beat's score is the one it gets inside its batch of the order, batch statistics on
    first = torch.from_numpy(order[: probe.BATCH])
    with torch.no_grad():
        expected = beat_scores(copy.deepcopy(g).train()(x[first]), x[first]).numpy()
    np.testing.assert_allclose(scores[first.numpy()], expected, rtol=1e-5)
    # another order batches the beats differently, and batch statistics change the scores
    other = probe.train_mode_scores(g, x, np.arange(100))
    assert not np.allclose(other, scores)
    assert not g.training
    for k, v in g.state_dict().items():
        assert torch.equal(v, before[k]), k
