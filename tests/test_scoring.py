import numpy as np
import torch

from sibeatgan.evaluation.scoring import score
from sibeatgan.models import build_models


def test_compiled_scoring_gives_the_same_scores_and_leaves_g_alone():
    g, _ = build_models(1, 50, 8, seed=0)
    g.train()
    for _ in range(3):  # move the BatchNorm statistics off their initial values
        g(torch.randn(16, 1, 320))
    before = {k: v.clone() for k, v in g.state_dict().items()}
    x = np.random.default_rng(0).uniform(-1, 1, (70, 1, 320)).astype(np.float32)
    eager = score(g, x, batch_size=32)
    compiled = score(g, x, batch_size=32, compile=True)
    assert eager.shape == (70,) and np.all(eager > 0)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)
    assert g.training
    for k, v in g.state_dict().items():
        assert torch.equal(v, before[k]), k
