"""The study's figures: test AUC per variant against the published one, per-epoch curves,
and the variants across folds."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator

from sibeatgan.evaluation.figures import save_figure


def results_figure(variants: dict[str, dict], published: list[tuple], path: Path) -> Path:
    """The study at a glance: mean +- std over seeds per variant (test AUC, AP, F1 at the val
    threshold, per-class recall), the paired AUC difference to the teacher under both
    selection rules (shaded: ± the teacher's own std over seeds), and scoring cost. Published
    AUCs are drawn as reference lines."""
    names = list(variants)
    x = np.arange(len(names))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))

    def bars(ax, key: str, title: str, also: tuple[float, ...] = ()) -> None:
        mean = [variants[n]["val_auc"][f"{key}_mean"] or 0 for n in names]
        std = [variants[n]["val_auc"][f"{key}_std"] or 0 for n in names]
        ax.bar(x, mean, yerr=std, capsize=4, color="tab:blue", alpha=0.6)
        seeds = [variants[n]["val_auc"][f"{key}_values"] for n in names]
        for i, values in enumerate(seeds):
            ax.plot([i] * len(values), values, "k.", ms=6, label="one seed" if i == 0 else None)
        every = [v for values in seeds for v in values] + list(also)
        ax.set_ylim(max(0, min(every, default=0) - 0.02), min(1, max(every, default=1) + 0.02))
        ax.set(title=title, xticks=x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    shown = ("BeatGAN", "BeatGAN rerun, fold 0", "SI-BeatGAN student, KD")
    anchors = tuple(auc for method, auc, _, _, _ in published if method in shown)
    bars(axes[0, 0], "test_auc", "test AUC (mean ± std; dots: seeds)", anchors)
    styles = iter(["--", ":", "-."])
    for method, auc, _, _, _ in published:
        if method in shown:
            axes[0, 0].axhline(auc, ls=next(styles), lw=1, color="gray", label=f"{method} {auc}")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    bars(axes[0, 1], "test_ap", "test AP")
    bars(axes[0, 2], "test_f1", "test F1 at the val-chosen threshold")

    ax = axes[1, 0]
    for i, cls in enumerate("SVF"):
        values = [variants[n]["val_auc"][f"recall_{cls}_mean"] or 0 for n in names]
        ax.bar(x + (i - 1) * 0.27, values, width=0.27, label=cls)
    ax.set(title="recall per class at the val threshold", xticks=x, ylim=(0, 1))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)

    ax = axes[1, 1]
    students = [n for n in names if variants[n]["val_auc"].get("paired_vs_teacher")]
    for offset, rule, label in (
        (-0.15, "val_auc", "val-AUC selection"),
        (0.15, "val_recon", "unsupervised"),
    ):
        mean, std, where = [], [], []
        for i, n in enumerate(students):
            pv = variants[n][rule]["paired_vs_teacher"]
            if pv["diff_auc_mean"] is None:
                continue
            mean.append(pv["diff_auc_mean"])
            std.append(pv["diff_auc_std"] or 0)
            where.append(i + offset)
            dots = pv.get("diff_auc_values", [])
            ax.plot([i + offset] * len(dots), dots, ".", color="gray", ms=5)
        ax.errorbar(where, mean, yerr=std, fmt="o", capsize=4, label=label)
    ax.axhline(0, color="k", lw=1)
    noise = variants.get("teacher", {}).get("val_auc", {}).get("test_auc_std")
    if noise:
        ax.axhspan(-noise, noise, color="gray", alpha=0.15, label=f"± teacher std {noise:.4f}")
    ax.set(
        title="paired Δ test AUC vs teacher (mean ± std; dots: seeds)",
        xticks=np.arange(len(students)),
        xlim=(-0.6, max(len(students), 1) - 0.4),
    )
    ax.set_xticklabels(students, rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)

    ax = axes[1, 2]
    ax.bar(x, [variants[n]["g_macs_per_beat"] / 1e6 for n in names], color="tab:green")
    ax.set(title="scoring cost: G multiply-adds per beat (M)", xticks=x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def learning_curves(summaries: list[dict], path: Path) -> Path:
    """Val and test AUC per epoch, one panel per variant (in the order they come in), so that
    a dozen variants stay legible: thin lines are seeds, thick lines their mean, a ring the
    epoch that val AUC picked; every other panel repeats the teacher's mean test AUC, dotted."""
    variants: dict[str, list[dict]] = {}
    for s in sorted(summaries, key=lambda s: s["seed"]):
        if s.get("history"):  # hand-made summaries (tests, older runs) may have none
            variants.setdefault(s["variant"], []).append(s)
    cols = min(4, max(len(variants), 1))
    rows = -(-max(len(variants), 1) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 2.6 * rows), sharex=True, sharey=True, squeeze=False
    )

    def mean_curve(runs: list[dict], key: str) -> np.ndarray:
        curves = [[r[key] for r in s["history"]] for s in runs]
        length = min(len(c) for c in curves)
        return np.mean([c[:length] for c in curves], axis=0)

    teacher = mean_curve(variants["teacher"], "test_auc") if "teacher" in variants else None
    values = []
    for ax, (name, runs) in zip(axes.flat, variants.items(), strict=False):  # spare axes
        if teacher is not None and name != "teacher":
            ax.plot(range(1, len(teacher) + 1), teacher, color="black", lw=1.2, ls=":")
        for key, colour in (("val_auc", "tab:orange"), ("test_auc", "tab:blue")):
            for s in runs:
                epochs = [r["epoch"] for r in s["history"]]
                curve = [r[key] for r in s["history"]]
                values += curve
                ax.plot(epochs, curve, color=colour, lw=0.7, alpha=0.5)
                pick = s["selection"]["val_auc"]["epoch"]
                ax.plot(pick, curve[epochs.index(pick)], "o", mfc="none", color=colour, ms=5)
            mean = mean_curve(runs, key)
            ax.plot(range(1, len(mean) + 1), mean, color=colour, lw=2)
        ax.set_title(f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(variants) :]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[:, 0]:
        ax.set_ylabel("AUC")
    handles = [
        plt.Line2D([], [], color="tab:orange", lw=2, label="val AUC"),
        plt.Line2D([], [], color="tab:blue", lw=2, label="test AUC"),
        plt.Line2D([], [], color="black", lw=1.2, ls=":", label="teacher test AUC (mean)"),
        plt.Line2D([], [], color="black", ls="", marker="o", mfc="none", label="val-AUC pick"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, 0))
    if values:  # the first epochs can sit far below the rest; keep the end of the runs readable
        low = max(min(values), float(np.percentile(values, 10)) - 0.02)
        axes[0, 0].set_ylim(low, max(values) + 0.005)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, path)


def folds_figure(across: dict[str, dict], published: tuple[str, float, float], path: Path) -> Path:
    """Per split, left: each variant's test AUC fold by fold (the mean over its seeds) beside
    the published 5-fold mean +- std; right: the paired differences fold by fold (dots, labelled
    with the fold), their mean +- std over folds and the t-test's p (shaded: ± the teacher's
    std over folds)."""
    method, auc, std = published
    fig, axes = plt.subplots(len(across), 2, figsize=(14, 4.5 * len(across)), squeeze=False)
    for (split, entry), (left, right) in zip(across.items(), axes, strict=True):
        every_fold = sorted({f for row in entry.values() for f in row["folds"]})
        for name, row in entry.items():
            by_fold = dict(zip(row["folds"], row["test_auc_values"], strict=True))
            # NaN where a variant has not run, so no line bridges the folds it skipped
            left.plot(every_fold, [by_fold.get(f, np.nan) for f in every_fold], "o-", label=name)
        left.axhspan(auc - std, auc + std, color="gray", alpha=0.2)
        left.axhline(auc, color="gray", ls="--", lw=1, label=f"{method}, published {auc} ± {std}")
        left.set(
            title=f"{split}: test AUC per fold (val-AUC pick)",
            xlabel="test fold",
            xticks=every_fold,
        )
        left.legend(fontsize=8)
        left.grid(alpha=0.3)

        pairs = []
        for name, row in entry.items():
            if row.get("vs_teacher") and row["vs_teacher"]["folds"]:
                pairs.append((f"{name}\n− teacher", row["vs_teacher"]))
            control = row.get("vs_control")
            if control and control["folds"]:
                pairs.append((f"{name}\n− {control['control']}", control))
        labels = []
        for i, (label, vs) in enumerate(pairs):
            right.plot([i] * len(vs["folds"]), vs["diff_auc_values"], ".", color="gray", ms=7)
            for fold, d in zip(vs["folds"], vs["diff_auc_values"], strict=True):
                right.annotate(str(fold), (i, d), xytext=(5, -3), textcoords="offset points")
            right.errorbar(
                i,
                vs["diff_auc_mean"],
                yerr=vs["diff_auc_std"] or 0,
                fmt="o",
                capsize=5,
                color="tab:red" if vs["diff_auc_beyond_noise"] else "tab:blue",
            )
            p = vs["diff_auc_p"]
            labels.append(f"{label}\n{f'p {p:.3f}' if p is not None else 'p -'}")
        right.axhline(0, color="k", lw=1)
        title = f"{split}: paired Δ test AUC per fold"
        noise = entry.get("teacher", {}).get("test_auc_std")
        if noise:
            right.axhspan(-noise, noise, color="gray", alpha=0.15)
            # linear within ±2 teacher stds, logarithmic beyond: a collapsed control's -0.05
            # does not flatten the differences of a few thousandths that the study is about
            right.set_yscale("symlog", linthresh=2 * noise, linscale=2)
            low, high = right.get_ylim()
            steps = [noise * k for k in (1, 2, 10, 20)]
            right.set_yticks([t for t in [0, *steps, *(-t for t in steps)] if low <= t <= high])
            right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+.3f}" if v else "0"))
            title += f" (symlog beyond ±{2 * noise:.4f}; shaded: ± teacher std over folds)"
        right.set(
            title=f"{title}\n(dots: folds; red: beyond fold-to-fold noise)",
            xticks=range(len(pairs)),
            xlim=(-0.7, max(len(pairs), 1) - 0.3),
        )
        right.set_xticklabels(labels, fontsize=8)
        right.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
