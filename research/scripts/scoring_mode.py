"""How much does the original code's train-mode scoring change the test AUC?

The original BeatGAN code scored val and test with G in train mode (protocol section 5):
BatchNorm normalised each batch of 64 with that batch's own statistics, so a beat's score
depends on the beats batched with it, and the order of the test beats matters. We score in
eval mode (running statistics). This probe rescores the selected generators of finished study
runs (checkpoints in WORK, run summaries in RUNS) on their test set four ways:

\b
- eval: ours, running statistics (must reproduce the summary's test AUC: a check);
- train, class-sorted: batch statistics over batches of 64 of a test set concatenated class by
  class (N, S, V, F, Q) and not shuffled, so most batches hold one class;
- train, data order: batch statistics, beats in the prepared order (record by record);
- train, shuffled: batch statistics over random batches of 64.

Only scoring changes: the weights are those chosen by val AUC under eval-mode scoring (and
are the EMA of G's weights), so this measures the scoring effect on these weights, not which
epoch train-mode scoring would have kept.

\b
    python research/scripts/scoring_mode.py --variant teacher
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch

from sibeatgan.config import params_from_dict
from sibeatgan.data.preprocess import load_prepared
from sibeatgan.data.split import TEST
from sibeatgan.evaluation.metrics import auc_ap
from sibeatgan.evaluation.scoring import beat_scores, score
from sibeatgan.io import write_json, write_text
from sibeatgan.models import Generator
from sibeatgan.pipeline.layout import Layout
from sibeatgan.pipeline.trained import load_generator
from sibeatgan.study.runs import VARIANTS, run_name
from sibeatgan.study.stats import load_summaries

BATCH = 64  # the original's batch size, for train and test alike
# batch orders for train-mode scoring, from the test classes and the run's seed
ORDERS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "train, class-sorted": lambda cls, seed: np.argsort(cls, kind="stable"),
    "train, data order": lambda cls, seed: np.arange(len(cls)),
    "train, shuffled": lambda cls, seed: np.random.default_rng(seed).permutation(len(cls)),
}
MODES = ("eval", *ORDERS)


@torch.no_grad()
def train_mode_scores(g: Generator, x: torch.Tensor, order: np.ndarray) -> np.ndarray:
    """Scores with BatchNorm on batch statistics, batches of BATCH taken in `order`; on a copy
    of G, so its running statistics stay as they were."""
    g = copy.deepcopy(g).train()
    out = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), BATCH):
        idx = torch.from_numpy(order[start : start + BATCH])
        xb = x[idx]
        out[idx.numpy()] = beat_scores(g(xb), xb).numpy()
    return out


@functools.cache
def test_set(beats_dir: str, prepared_dir: str, channels: int) -> tuple[torch.Tensor, np.ndarray]:
    """Test beats and classes, read once per prepared folder (runs of a fold share one)."""
    x, cls = load_prepared(beats_dir, prepared_dir).part(TEST, channels)
    return torch.from_numpy(np.ascontiguousarray(x)), cls


def rescore(summary: dict, work: Path) -> dict:
    """Test AUC of a run's selected generator under each scoring mode; eval mode first, as a
    check that the checkpoint in `work` is the run the summary describes."""
    p = params_from_dict(summary["params"])
    role = VARIANTS[summary["variant"]].role
    label = f"{summary['variant']} seed {summary['seed']}"
    name = run_name(summary["split"], summary["fold"], summary["seed"], summary["split_seed"])
    model_dir = Layout(work / name / summary["variant"]).model_dir(role)
    if not (model_dir / "G.pt").exists():
        raise click.ClickException(
            f"{label}: no checkpoint in {model_dir}; pass the study's --work folder, or train"
            f" the run again with `sibeatgan study run {summary['variant']} --seeds"
            f" {summary['seed']} --force`"
        )
    g = load_generator(model_dir)
    x, cls = test_set(p.runtime.beats_dir, p.runtime.prepared_dir, p.data.channels)
    y = (cls > 0).astype(int)
    picked = summary["selection"]["val_auc"]
    aucs = {"eval": auc_ap(y, score(g, x))[0]}
    if abs(aucs["eval"] - picked["test_auc"]) > 1e-4:
        raise click.ClickException(
            f"{label}: eval-mode test AUC {aucs['eval']:.4f} differs from its summary's"
            f" {picked['test_auc']:.4f}: the checkpoint in {model_dir} is not that run's"
        )
    for mode, order in ORDERS.items():
        aucs[mode] = auc_ap(y, train_mode_scores(g, x, order(cls, summary["seed"])))[0]
    return {
        "variant": summary["variant"],
        "seed": summary["seed"],
        "epoch": picked["epoch"],
        "test_auc": aucs,
    }


def markdown(rows: list[dict], command: str) -> str:
    head = "| variant | seed | epoch | " + " | ".join(MODES) + " |"
    lines = [
        "# Train-mode scoring probe",
        "",
        "Does scoring with BatchNorm on batch statistics (the original code, protocol section 5)",
        "instead of running statistics (ours) change the test AUC of the same weights? The",
        "modes, and why the weights are fixed, are in the docstring of the command below.",
        "",
        f"Command: `{command}`",
        "",
        "Test AUC of the val-AUC-selected generator of each run:",
        "",
        head,
        "|" + "---|" * (3 + len(MODES)),
    ]
    for r in rows:
        cells = " | ".join(f"{r['test_auc'][m]:.4f}" for m in MODES)
        lines.append(f"| {r['variant']} | {r['seed']} | {r['epoch']} | {cells} |")
    lines.append("")
    for mode in MODES[1:]:
        diffs = [r["test_auc"][mode] - r["test_auc"]["eval"] for r in rows]
        lines.append(
            f"- {mode} minus eval: mean {np.mean(diffs):+.4f}, "
            f"range {min(diffs):+.4f} to {max(diffs):+.4f} over {len(diffs)} runs"
        )
    return "\n".join(lines) + "\n"


@click.command(help=__doc__)
@click.option(
    "--runs",
    type=click.Path(path_type=Path, file_okay=False),
    default="reports/runs",
    show_default=True,
    help="Run summaries (from `sibeatgan study run`).",
)
@click.option(
    "--work",
    type=click.Path(path_type=Path, file_okay=False),
    default="outputs/study",
    show_default=True,
    help="The study's checkpoints and prepared data.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default="research/probes/scoring-mode",
    show_default=True,
    help="Folder for README.md and results.json.",
)
@click.option("--variant", "variants", multiple=True, help="Only these variants (repeatable).")
def main(runs: Path, work: Path, out: Path, variants: tuple[str, ...]) -> None:
    summaries = [s for s in load_summaries(runs) if not variants or s["variant"] in variants]
    if not summaries:
        raise click.ClickException(f"no run summaries in {runs}: run `sibeatgan study run` first")
    rows = []
    for s in sorted(summaries, key=lambda s: (s["variant"], s["seed"])):
        row = rescore(s, work)
        click.echo(
            f"{row['variant']} seed {row['seed']}: "
            + ", ".join(f"{m} {v:.4f}" for m, v in row["test_auc"].items())
        )
        rows.append(row)
    words = ["python", "research/scripts/scoring_mode.py", "--runs", str(runs), "--work", str(work)]
    words += [f"--variant {v}" for v in variants]
    write_json(out / "results.json", {"batch": BATCH, "runs": rows})
    write_text(out / "README.md", markdown(rows, " ".join(words)))
    click.echo(f"written: {out}/README.md, results.json")


if __name__ == "__main__":
    main()
