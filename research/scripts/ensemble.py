"""Do several teachers scored together beat each one? (the ensemble lead of the quality issue)

Scores val and test with each generator given (model folders of finished fold-0 teachers), then
every combination of two or more: each model's scores are standardised on its val N beats
(linear, or of their logarithm) and summed. Prints val and test AUC per model and combination.

\b
    python research/scripts/ensemble.py PREPARED_DIR MODEL_DIR MODEL_DIR ...
"""

from __future__ import annotations

import itertools
from pathlib import Path

import click
import numpy as np

from sibeatgan.data.preprocess import load_prepared
from sibeatgan.data.split import TEST, VAL
from sibeatgan.evaluation.metrics import auc_ap
from sibeatgan.evaluation.scoring import score
from sibeatgan.pipeline.trained import load_generator


def standardised(val: np.ndarray, test: np.ndarray, normal: np.ndarray, log: bool):
    f = np.log if log else (lambda a: a)
    ref = f(val[normal])
    return (f(val) - ref.mean()) / ref.std(), (f(test) - ref.mean()) / ref.std()


@click.command(help=__doc__)
@click.argument("beats", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("prepared", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("models", nargs=-1, type=click.Path(exists=True, path_type=Path))
def main(beats: Path, prepared: Path, models: tuple[Path, ...]) -> None:
    data = load_prepared(beats, prepared)
    xv, cv = data.part(VAL, 1)
    xt, ct = data.part(TEST, 1)
    yv, yt = (cv > 0).astype(int), (ct > 0).astype(int)
    scores = {}
    for m in models:
        g = load_generator(m)
        scores[m] = (score(g, xv), score(g, xt))
        click.echo(
            f"{m}: val {auc_ap(yv, scores[m][0])[0]:.4f} test {auc_ap(yt, scores[m][1])[0]:.4f}"
        )
    for k in range(2, len(models) + 1):
        for combo in itertools.combinations(models, k):
            for log in (False, True):
                parts = [standardised(*scores[m], cv == 0, log) for m in combo]
                v, t = sum(p[0] for p in parts), sum(p[1] for p in parts)
                names = ", ".join(str(m) for m in combo)
                click.echo(
                    f"{'log' if log else 'lin'} [{names}]: val {auc_ap(yv, v)[0]:.4f} "
                    f"test {auc_ap(yt, t)[0]:.4f}"
                )


if __name__ == "__main__":
    main()
