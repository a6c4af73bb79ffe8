"""Teacher convergence against wall time for one training recipe.

Trains a teacher on the prepared data (`sibeatgan preprocess` first) with params.yaml plus
`-S key=value` overrides, and writes per epoch: wall time, val AUC, and the test AUC/AP of the
generator that would be kept at that epoch. The test figures are a monitor for choosing
recipes only; selection inside training still uses val alone.

    python research/scripts/convergence.py NAME -S train.epochs=12 -S train.batch_size=256 ...
    python research/scripts/convergence.py --plot     # all results -> research/convergence/*.png

Writes OUT/NAME.csv (rewritten after every epoch, so a run stopped early keeps its epochs) and,
at the end, OUT/NAME.json; OUT is research/convergence unless --out says otherwise.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from sibeatgan.config import load_params
from sibeatgan.data.split import TEST, TRAIN, VAL
from sibeatgan.evaluation.metrics import auc_ap
from sibeatgan.evaluation.scoring import pick_device, score
from sibeatgan.io import read_json, write_csv, write_json, write_text
from sibeatgan.models import build_models
from sibeatgan.pipeline.trained import load_checked, set_threads
from sibeatgan.provenance import git_commit
from sibeatgan.training.loop import FitData, Hooks, Nets, fit

OUT = Path("research/convergence")


def command(
    name: str,
    overrides: list[str],
    out: Path,
    d_seed: int | None = None,
    g_seed: int | None = None,
) -> str:
    words = ["python", "research/scripts/convergence.py", name]
    if out != OUT:
        words += ["--out", str(out)]
    for flag, value in (("--d-seed", d_seed), ("--g-seed", g_seed)):
        if value is not None:
            words += [flag, str(value)]
    return " ".join(words + [f"-S {o}" for o in overrides])


def train_recipe(
    name: str,
    overrides: list[str],
    out: Path = OUT,
    d_seed: int | None = None,
    g_seed: int | None = None,
) -> dict:
    """`d_seed` / `g_seed` initialise D / G from another seed than `seed` (which still draws the
    batch order): they tell whether a seed's trouble comes with G's or D's initial weights or
    with the batch order."""
    p = load_params("params.yaml", overrides)
    start = {
        "name": name,
        "overrides": overrides,
        "command": command(name, overrides, out, d_seed, g_seed),
        "commit": git_commit(),
    }
    write_json(out / f"{name}.json", {**start, "finished": False})  # a stopped run keeps this
    set_threads(p)
    data = load_checked(p)
    nc = p.data.channels
    train_x, _ = data.part(TRAIN, nc)
    val_x, val_cls = data.part(VAL, nc)
    test_x, test_cls = data.part(TEST, nc)
    test_y = (test_cls > 0).astype(int)
    device = pick_device()
    test_t = torch.from_numpy(np.ascontiguousarray(test_x)).to(device)
    g, _ = build_models(nc, p.model.nz, p.model.width, p.seed if g_seed is None else g_seed)
    _, d = build_models(nc, p.model.nz, p.model.width, p.seed if d_seed is None else d_seed)
    g, d = g.to(device), d.to(device)
    t0 = time.perf_counter()

    def monitor(models) -> dict[str, float]:
        auc, ap = auc_ap(test_y, score(models.g, test_t, p.runtime.score_batch_size))
        return {"test_auc": auc, "test_ap": ap, "wall_s": time.perf_counter() - t0}

    rows: list[dict] = []

    def on_epoch(row: dict) -> None:
        rows.append(row)
        write_csv(out / f"{name}.csv", {k: [r[k] for r in rows] for k in rows[0]})

    val_y = (val_cls > 0).astype(int)
    result = fit(
        Nets(g, d),
        FitData(train_x, val_x, val_y),
        p.train,
        p.seed,
        hooks=Hooks(on_epoch=on_epoch, monitor=monitor, desc=name),
    )
    history = result.history
    selected = history[result.best_epoch - 1]
    summary = {
        **start,
        "finished": True,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "epochs": len(history),
        "wall_s": history[-1]["wall_s"],
        "selected_epoch": result.best_epoch,
        "selected_val_auc": selected["val_auc"],
        "selected_test_auc": selected["test_auc"],
        "selected_test_ap": selected["test_ap"],
        "last_test_auc": history[-1]["test_auc"],
        "max_test_auc": max(r["test_auc"] for r in history),
    }
    write_json(out / f"{name}.json", summary)
    return summary


def table(out: Path) -> Path:
    """out/README.md: every recipe in `out` with its command and val AUC per epoch (stopped
    runs included: their CSV holds the epochs that ended)."""
    lines = [
        f"# Recipes in {out.as_posix()}",
        "",
        "Written by `python research/scripts/convergence.py --table --out "
        f"{out.as_posix()}` from the CSV/JSON files here.",
        "",
        "| recipe | command (at commit) | val AUC per epoch | val-N recon. error per epoch "
        "| finished | note |",
        "|---|---|---|---|---|---|",
    ]
    for path in sorted(out.glob("*.json")):
        info = read_json(path)
        csv = path.with_suffix(".csv")
        if not csv.exists():
            continue
        rows = np.atleast_1d(np.genfromtxt(csv, delimiter=",", names=True))
        aucs = ", ".join(f"{v:.3f}" for v in rows["val_auc"])
        recon = ", ".join(f"{v:.4f}" for v in rows["val_recon_n"])
        done = "yes" if info.get("finished") else f"stopped after epoch {len(rows)}"
        cmd = f"`{info['command']}`" + (f" ({info['commit']})" if info.get("commit") else "")
        note = info.get("note", "")
        lines.append(f"| {info['name']} | {cmd} | {aucs} | {recon} | {done} | {note} |")
    path = out / "README.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def plot_all() -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for path in sorted(OUT.glob("*.json")):
        info = read_json(path)
        rows = np.genfromtxt(path.with_suffix(".csv"), delimiter=",", names=True)
        rows = np.atleast_1d(rows)
        minutes = rows["wall_s"] / 60
        ax1.plot(minutes, rows["test_auc"], "o-", ms=3, label=info["name"])
        ax2.plot(minutes, rows["val_auc"], "o-", ms=3, label=info["name"])
    for ax, what in ((ax1, "test AUC (monitor)"), (ax2, "val AUC")):
        ax.axhline(0.93, color="grey", ls=":", lw=1)
        ax.set(xlabel="teacher training wall time (min)", ylabel=what, ylim=(0.8, 0.96))
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7, loc="lower right")
    out = OUT / "convergence.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


@click.command()
@click.argument("name", required=False)
@click.option("-S", "--set", "overrides", multiple=True, help="Parameter override key=value.")
@click.option("--plot", is_flag=True, help="Only draw research/convergence/convergence.png.")
@click.option("--table", "only_table", is_flag=True, help="Only write OUT/README.md.")
@click.option("--d-seed", type=int, default=None, help="Seed of D's first weights.")
@click.option("--g-seed", type=int, default=None, help="Seed of G's first weights.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=OUT, show_default=True, help="Folder."
)
def main(
    name: str | None,
    overrides: tuple[str, ...],
    plot: bool,
    only_table: bool,
    out: Path,
    d_seed: int | None,
    g_seed: int | None,
) -> None:
    """Train one teacher recipe and record its AUC against wall time."""
    if only_table:
        click.echo(table(out))
        return
    if not plot:
        if not name:
            sys.exit("give a NAME for the recipe (or --plot)")
        click.echo(train_recipe(name, list(overrides), out, d_seed, g_seed))
    if out == OUT:
        click.echo(plot_all())


if __name__ == "__main__":
    main()
