"""`sibeatgan report`: the study's results from the committed run summaries (reports/runs/).

Writes results.json (per variant and selection rule: seeds, mean +- std of the test figures,
the paired difference to the teacher on the same seeds; computed by `study.stats`), results.md,
results.png, curves.png (val and test AUC per epoch of every run: is the budget long enough?)
and, once variants have run on several folds, folds.png (their figures and differences fold by
fold).
"""

from __future__ import annotations

from pathlib import Path

from sibeatgan.config import Params
from sibeatgan.io import write_json, write_text
from sibeatgan.study.figures import folds_figure, learning_curves, results_figure
from sibeatgan.study.published import PUBLISHED
from sibeatgan.study.runs import UNSUPERVISED, VARIANTS, group_name
from sibeatgan.study.stats import (
    HEADLINE,
    MIN_PAIRS,
    NOISE_P,
    build_results,
    current_and_stale,
    load_summaries,
)

RULE_NAMES = {
    "val_auc": "best val AUC (published protocol; uses labelled val anomalies)",
    "val_recon": "lowest val-N reconstruction error (unsupervised)",
    "last": "last epoch (unsupervised)",
}
# the published 5-fold BeatGAN figure: method, AUC, std, AP, source
FIVE_FOLD = next(row for row in PUBLISHED if row[0] == "BeatGAN")


def run_cell(row: dict) -> str:
    """The MLflow run, and the earlier runs it repeated (see `study.reproduced_runs`)."""
    again = ", ".join(f"`{r[:8]}`" for r in row["reproduces"])
    return f"`{row['mlflow_run_id'][:8]}`" + (f" (same as {again})" if again else "")


def _pm(mean: float | None, std: float | None, digits: int = 4, signed: bool = False) -> str:
    if mean is None:
        return "-"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _signed(value: float | None) -> str:
    return _pm(value, None, signed=True)


def _variant_table(entry: dict, rule: str) -> list[str]:
    lines = [
        "| variant | seeds | test AUC | test AP | F1 (val thr.) | recall S / V / F "
        "| Δ AUC vs teacher (± std) | p | beyond noise | epochs chosen |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in entry.items():
        r = e[rule]
        pv = r.get("paired_vs_teacher")
        recall = " / ".join(
            "-" if r[f"recall_{c}_mean"] is None else f"{r[f'recall_{c}_mean']:.2f}" for c in "SVF"
        )
        diff = "-" if pv is None else _pm(pv["diff_auc_mean"], pv["diff_auc_std"], signed=True)
        p = "-" if pv is None or pv["diff_auc_p"] is None else f"{pv['diff_auc_p']:.3f}"
        beyond = "-" if pv is None else ("yes" if pv["diff_auc_beyond_noise"] else "no")
        lines.append(
            f"| {name} | {r['n_seeds']} ({', '.join(map(str, r['seeds']))}) "
            f"| {_pm(r['test_auc_mean'], r['test_auc_std'])} "
            f"| {_pm(r['test_ap_mean'], r['test_ap_std'])} "
            f"| {_pm(r['test_f1_mean'], r['test_f1_std'], 3)} | {recall} | {diff} | {p} "
            f"| {beyond} | {', '.join(map(str, r['epochs_chosen']))} |"
        )
    return lines


def _diff_cell(c: dict) -> str:
    """`+0.0062 ± 0.0037 (5 folds, p 0.020): better`."""
    p = "-" if c["p"] is None else f"{c['p']:.3f}"
    unit = c["unit"] + ("" if c["n"] == 1 else "s")
    return f"{_pm(c['mean'], c['std'], signed=True)} ({c['n']} {unit}, p {p}): {c['verdict']}"


def _verdict_lines(results: dict) -> list[str]:
    lines = []
    for v in results["verdicts"]:
        if v["best_n"] < 2:
            continue  # one seed per variant: see the tables
        better = ", ".join(v["better"]) or "none"
        lines.append(
            f"- {v['scope']}, {RULE_NAMES[v['selection']]}: better than the teacher beyond "
            f"{v['unit']} noise: {better}; largest mean Δ AUC: {v['best']} "
            f"{_signed(v['best_diff_auc_mean'])} ({v['best_verdict']})."
        )
    return lines


def _comparison_table(compared: list[dict]) -> list[str]:
    """Paired differences over two or more seeds or folds (single pairs are in results.json)."""
    shown = [c for c in compared if c["n"] >= 2]
    if not shown:
        return []
    lines = [
        "| scope | variant | against | selection | Δ AUC, pairs, p: verdict | per pair |",
        "|---|---|---|---|---|---|",
    ]
    for c in shown:
        mark = " †" if c["on_top_of_teacher"] else ""
        per_pair = ", ".join(
            f"{pair}: {_signed(d)}" for pair, d in zip(c["pairs"], c["values"], strict=True)
        )
        lines.append(
            f"| {c['scope']} | {c['variant']}{mark} | {c['against']} | {c['selection']} "
            f"| {_diff_cell(c)} | {per_pair} |"
        )
    return [
        *lines,
        "",
        "† started from the trained teacher: its budget comes on top of the teacher's.",
        "",
    ]


def _budget_table(variants: dict) -> list[str]:
    """Val-AUC-selected test AUC had the runs stopped after k epochs."""
    curves = {name: e["budget"] for name, e in variants.items() if e.get("budget")}
    if not curves:
        return []
    ks = sorted({c["budget_epochs"] for curve in curves.values() for c in curve})
    lines = [
        f"## {group_name(*HEADLINE)}: shorter budgets",
        "",
        "Test AUC (mean ± std over seeds) of the epoch val AUC picks among the first k epochs: "
        "with a constant learning rate the first k epochs of a run are the k-epoch run, so this "
        "is what each budget would have reported (a student's row keeps the teacher of the "
        "full budget; k counts epochs of plain data, so an epoch of an augmented run counts as "
        "1 + copies).",
        "",
        "| variant | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for name, curve in curves.items():
        by_k = {c["budget_epochs"]: _pm(c["test_auc_mean"], c["test_auc_std"]) for c in curve}
        lines.append(f"| {name} | " + " | ".join(by_k.get(k, "-") for k in ks) + " |")
    return [*lines, ""]


def _folds_section(across: dict[str, dict], compared: list[dict]) -> list[str]:
    """Mean +- std over folds, beside the published 5-fold BeatGAN figure, and each variant's
    comparisons over folds (from `compared`, the results' comparisons)."""
    method, auc, std, _, source = FIVE_FOLD
    over_folds = {
        (c["scope"], c["variant"], c["against"]): c for c in compared if c["unit"] == "fold"
    }
    lines = []
    for split, entry in across.items():
        lines += [
            f"## {split}: across folds (selection by {RULE_NAMES['val_auc']})",
            "",
            "Each variant on every fold it has run on, with the seeds it has on all of them "
            "(a fold's figure is the mean over those seeds); ± is the standard deviation over "
            "folds, which also holds each fold's own seed noise. Δ is the difference to the "
            "teacher (or to the variant's control) fold by fold on the same seeds, with a "
            f"paired t-test over folds (beyond noise: p < {NOISE_P} with at least {MIN_PAIRS} "
            f"folds). Published, 5 folds: {method} {_pm(auc, std)} ({source}).",
            "",
            "| variant | folds | seeds | test AUC per fold | test AUC over folds "
            "| test AP over folds | Δ AUC vs teacher over folds | Δ AUC vs control over folds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in entry.items():
            per_fold = ", ".join(
                f"{f}: {a:.4f}" for f, a in zip(row["folds"], row["test_auc_values"], strict=True)
            )
            cells = {}
            for key in ("vs_teacher", "vs_control"):
                against = row[key]["control"] if key == "vs_control" and key in row else "teacher"
                c = over_folds.get((f"{split} across folds", name, against))
                if c is not None and key in row:
                    cells[key] = ("" if against == "teacher" else f"{against}: ") + _diff_cell(c)
            lines.append(
                f"| {name} | {len(row['folds'])} | {', '.join(map(str, row['seeds']))} "
                f"| {per_fold} | {_pm(row['test_auc_mean'], row['test_auc_std'])} "
                f"| {_pm(row['test_ap_mean'], row['test_ap_std'])} "
                f"| {cells.get('vs_teacher', '-')} | {cells.get('vs_control', '-')} |"
            )
        lines += ["", "![across folds](folds.png)", ""]
    return lines


def _recipe_line(train: dict | None) -> str:
    if not train:
        return "not given (the report was built without params)"
    keys = ("epochs", "batch_size", "lr", "lr_schedule", "warmup_steps", "ema", "precision")
    return ", ".join(f"`train.{k}={train[k]}`" for k in keys if k in train)


def markdown(results: dict) -> str:
    lines = [
        "# Does distillation make the student better?",
        "",
        f"Generated by `sibeatgan report` from the {results['n_summaries']} run summaries in "
        f"`{results['runs_dir']}/` (one per variant and seed, written by `sibeatgan study run`). "
        "Do not edit by hand: rerun the generator.",
        "",
        "Every run in the tables was trained with the same recipe, params.yaml with the "
        f"overrides in `{results['runs_dir']}/recipe.yaml` (the same budget for every variant; "
        "runs of another recipe are left out, see below): "
        f"{_recipe_line(results.get('train'))}. "
        "Every seed trains and tests on the same split (`data.split_seed` 0), so the spread over "
        "seeds is training noise. A student and its teacher share the seed: the same initial "
        "weights and batch order, so each student has a paired teacher. ± is the standard "
        "deviation over seeds; Δ is the paired difference to the teacher; 'beyond noise' means "
        f"a paired t-test gives p < {NOISE_P} with at least {MIN_PAIRS} seeds. F1 and recall "
        "use the threshold that maximises F1 on val.",
        "",
        "## Verdicts",
        "",
        *_verdict_lines(results),
        "",
        *_comparison_table(results["comparisons"]),
        *_folds_section(results["across_folds"], results["comparisons"]),
    ]
    for group, entry in results["groups"].items():
        for rule in ("val_auc", UNSUPERVISED):
            lines += [f"## {group}: selection by {RULE_NAMES[rule]}", ""]
            lines += [*_variant_table(entry, rule), ""]
        lines += [f"### {group}: cost", ""]
        lines += [
            "| variant | about | G params | G MMAC / beat | scoring beats/s | train s "
            "| trained on |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, e in entry.items():
            lines.append(
                f"| {name} | {e['about']} | {e['g_params']:,} | {e['g_macs_per_beat'] / 1e6:.1f} "
                f"| {e['score_beats_per_s_mean']:,.0f} | {e['train_time_s_mean']:,.0f} "
                f"| {', '.join(e['trained_on'])} |"
            )
        lines += [
            "",
            "Scoring speed is measured on the CPU of the machine that trained the run (batches "
            "of 1024 beats) and train time on that machine: compare rows trained on the same one.",
            "",
        ]
    lines += _budget_table(results["variants"])
    if results["stale"]:
        lines += ["Left out of every table (rerun them with `sibeatgan study run`):", ""]
        lines += [
            f"- {r['variant']} {r['split']} fold {r['fold']} seed {r['seed']}: {r['stale_because']}"
            for r in results["stale"]
        ]
        lines.append("")
    missing = [v for v in VARIANTS if v not in results["variants"]]
    stood_for = [v for v in missing if VARIANTS[v].retraces in results["variants"]]
    for name in stood_for:
        other = VARIANTS[name].retraces
        lines += [
            f"{name} ({VARIANTS[name].about}) is not trained on its own: with the {other}'s "
            f"width, seed and batch order and no teacher term it repeats the {other} run of its "
            f"seed step for step (the test suite checks this), so the {other} row is its result.",
            "",
        ]
    missing = [v for v in missing if v not in stood_for]
    if missing:
        lines += [f"Not run yet on {HEADLINE[0]} fold {HEADLINE[1]}: {', '.join(missing)}.", ""]
    lines += [
        "## Every run",
        "",
    ]
    if any(r["reproduces"] for r in results["runs"]):
        lines += [
            "A run marked *same as* was trained again (a fresh work folder) and repeated the runs "
            "named: the same val and test figures at every epoch, to the last digit (and the same "
            "weights digest where both runs record one); students trained against those runs are "
            "paired with it.",
            "",
        ]
    lines += [
        "| variant | split, fold | seed | val-AUC pick: epoch, test AUC | unsupervised pick "
        "| last epoch | train s | trained on | MLflow run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['variant']} | {r['split']}, {r['fold']} | {r['seed']} "
            f"| {r['val_auc_epoch']}: {r['val_auc_test_auc']:.4f} "
            f"| {r['val_recon_epoch']}: {r['val_recon_test_auc']:.4f} "
            f"| {r['last_epoch']}: {r['last_test_auc']:.4f} | {r['train_time_s']:,.0f} "
            f"| {r['device']} | {run_cell(r)} |"
        )
    lines += [
        "",
        "## Published figures (MIT-BIH test set)",
        "",
        "| method | AUC | AP | source |",
        "|---|---|---|---|",
    ]
    for method, auc, std, ap, source in PUBLISHED:
        lines.append(f"| {method} | {_pm(auc, std)} | {ap:.4f} | {source} |")
    lines += [
        "",
        "![results](results.png)",
        "",
        f"Val and test AUC per epoch of every {HEADLINE[0]} fold {HEADLINE[1]} run (thin: one "
        "seed, thick: mean over seeds; a ring marks the epoch that val AUC picks; dotted: "
        "the teacher's mean test AUC, for comparison). A curve still rising at the last epoch "
        "says the budget is short.",
        "",
        "![learning curves](curves.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(
    runs_dir: Path, out_dir: Path, base: Params | None = None
) -> tuple[dict, list[Path]]:
    """The report from the summaries in `runs_dir` that are current with `base` (all when
    None): the results and the files written, results.md last."""
    summaries, stale = current_and_stale(load_summaries(runs_dir), base)
    if not summaries:
        raise FileNotFoundError(
            f"no run summaries in {runs_dir}; run `sibeatgan study run <variant>` first"
            if not stale
            else f"none of the {len(stale)} run summaries in {runs_dir} was trained with these "
            "params (another recipe?); run `sibeatgan study run <variant>` with them first"
        )
    results = build_results(summaries, stale, runs_dir)
    if base is not None:
        results["train"] = base.to_dict()["train"]
    table, figure, curves = (out_dir / n for n in ("results.json", "results.png", "curves.png"))
    write_json(table, results)
    results_figure(results["variants"], PUBLISHED, figure)
    headline = [
        s
        for s in summaries
        if group_name(s["split"], s["fold"], s["split_seed"]) == group_name(*HEADLINE)
    ]
    headline.sort(key=lambda s: list(VARIANTS).index(s["variant"]))
    learning_curves(headline, curves)
    written = [table, figure, curves]
    if results["across_folds"]:
        folds = out_dir / "folds.png"
        written.append(folds_figure(results["across_folds"], FIVE_FOLD[:3], folds))
    text = out_dir / "results.md"
    write_text(text, markdown(results))
    return results, [*written, text]
