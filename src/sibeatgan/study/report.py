"""`sibeatgan report`: the study's results from the committed run summaries (reports/runs/).

Writes results.json (per variant and selection rule: seeds, mean +- std of the test figures,
the paired difference to the teacher on the same seeds), results.md, results.png,
curves.png (val and test AUC per epoch of every run: is the budget long enough?) and, once
variants have run on several folds, folds.png (their figures and differences fold by fold).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from sibeatgan.config import Params
from sibeatgan.io import read_json, write_json, write_text
from sibeatgan.study.figures import folds_figure, learning_curves, results_figure
from sibeatgan.study.published import PUBLISHED
from sibeatgan.study.runs import (
    CONTROLS,
    RUNS_DIR,
    UNSUPERVISED,
    VARIANTS,
    group_name,
    summary_is_current,
)

RULES = ("val_auc", "val_recon", "last")
RULE_NAMES = {
    "val_auc": "best val AUC (published protocol; uses labelled val anomalies)",
    "val_recon": "lowest val-N reconstruction error (unsupervised)",
    "last": "last epoch (unsupervised)",
}
FIGURES = ("test_auc", "test_ap", "test_f1", "oracle_f1", "recall_S", "recall_V", "recall_F")
HEADLINE = ("intra", 0)  # split, fold of the main tables (split_seed 0)
NOISE_P = 0.05  # a paired difference "exceeds seed noise" at p < this, with >= 3 pairs
MIN_PAIRS = 3
# the published 5-fold BeatGAN figure: method, AUC, std, AP, source
FIVE_FOLD = next(row for row in PUBLISHED if row[0] == "BeatGAN")


def load_summaries(runs_dir: Path) -> list[dict]:
    files = sorted(runs_dir.glob("*/*.json"))
    return [read_json(f) for f in files]


def current_and_stale(
    summaries: list[dict], base: Params | None = None
) -> tuple[list[dict], list[dict]]:
    """The summaries that belong in the tables, and the stale ones (each with `stale_because`):
    trained with other params than `base` (the study recipe of the report, e.g. before a recipe
    change), or a student whose teacher has been trained again since, so that its pairing with
    the teacher summary of its seed would compare runs of two different teachers."""
    current, stale = [], []
    for s in summaries:
        if base is not None and not summary_is_current(s, base):
            stale.append({**s, "stale_because": "trained with other params than the study recipe"})
        else:
            current.append(s)
    teachers = {
        (group_name(s["split"], s["fold"], s["split_seed"]), s["seed"]): s
        for s in current
        if s["variant"] == "teacher"
    }
    kept = []
    for s in current:
        teacher = teachers.get((group_name(s["split"], s["fold"], s["split_seed"]), s["seed"]))
        if s["role"] == "student" and teacher and not same_teacher(s, teacher):
            stale.append({**s, "stale_because": "its teacher was trained again since"})
        else:
            kept.append(s)
    return kept, stale


def same_teacher(student: dict, teacher: dict) -> bool:
    """Whether `student` was trained against the teacher of this `teacher` summary: its MLflow
    run, a run that summary reproduced (trained again to the same figures), or the same weights
    digest. A student that names no teacher run (older summaries) counts as paired."""
    if student.get("teacher_run_id") is None:
        return True
    digest = student.get("teacher_g_sha256")
    if digest is not None and digest == teacher.get("g_sha256"):
        return True
    return student["teacher_run_id"] in {teacher["mlflow_run_id"], *teacher.get("reproduces", [])}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    arr = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(arr) == 0:
        return None, None
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else None


def difference_stats(diffs: np.ndarray, name: str = "auc") -> dict:
    """Mean, std and a one-sample t-test against 0 of paired differences (per seed, or per fold);
    beyond noise at p < NOISE_P with at least MIN_PAIRS pairs."""
    p = None
    if len(diffs) > 1 and diffs.std() > 0:
        p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    beyond = p is not None and p < NOISE_P and len(diffs) >= MIN_PAIRS
    return {
        f"diff_{name}_values": [float(d) for d in diffs],
        f"diff_{name}_mean": float(diffs.mean()) if len(diffs) else None,
        f"diff_{name}_std": float(diffs.std(ddof=1)) if len(diffs) > 1 else None,
        f"diff_{name}_p": p,
        f"diff_{name}_beyond_noise": beyond,
    }


def paired_difference(variant: dict[int, dict], reference: dict[int, dict], rule: str) -> dict:
    """Variant minus reference (the teacher, or a control) test AUC / AP on the seeds both
    have, with a paired t-test."""
    seeds = sorted(set(variant) & set(reference))
    out: dict = {"n_pairs": len(seeds), "seeds": seeds}
    for key in ("test_auc", "test_ap"):
        ours = np.array([variant[s]["selection"][rule][key] for s in seeds])
        theirs = np.array([reference[s]["selection"][rule][key] for s in seeds])
        # values per seed, in `seeds` order
        out |= difference_stats(ours - theirs, key.removeprefix("test_"))
    return out


def group_stats(runs: dict[int, dict], teacher: dict[int, dict] | None, rule: str) -> dict:
    seeds = sorted(runs)
    picked = [runs[s]["selection"][rule] for s in seeds]
    out: dict = {
        "n_seeds": len(seeds),
        "seeds": seeds,
        "epochs_chosen": [r["epoch"] for r in picked],
    }
    for key in FIGURES:
        out[f"{key}_mean"], out[f"{key}_std"] = _mean_std([r.get(key) for r in picked])
    for key in ("test_auc", "test_ap", "test_f1"):
        out[f"{key}_values"] = [r[key] for r in picked]  # per seed, in `seeds` order
    if teacher is not None:
        out["paired_vs_teacher"] = paired_difference(runs, teacher, rule)
    return out


def trained_on(summary: dict) -> str:
    """The machine a run trained on; summaries written before the field was kept came from the
    study's CPU runs."""
    return summary.get("device", "cpu (not recorded)")


def run_rows(summaries: list[dict]) -> list[dict]:
    """One row per run: what each selection rule picked and scored on test."""
    rows = []
    for s in sorted(summaries, key=lambda s: (s["split"], s["fold"], s["variant"], s["seed"])):
        row = {k: s[k] for k in ("variant", "split", "split_seed", "fold", "seed", "mlflow_run_id")}
        for rule in RULES:
            picked = s["selection"][rule]
            row[f"{rule}_epoch"] = picked["epoch"]
            row[f"{rule}_test_auc"] = picked["test_auc"]
        row["train_time_s"] = s["train_time_s"]
        row["device"] = trained_on(s)
        row["reproduces"] = s.get("reproduces", [])
        rows.append(row)
    return rows


def run_cell(row: dict) -> str:
    """The MLflow run, and the earlier runs it repeated (see `study.reproduced_runs`)."""
    again = ", ".join(f"`{r[:8]}`" for r in row["reproduces"])
    return f"`{row['mlflow_run_id'][:8]}`" + (f" (same as {again})" if again else "")


def prefix_equals_shorter_run(params: dict) -> bool:
    """Whether the first k epochs of a run are what a k-epoch run of its recipe trains: true
    for a constant learning rate with no warm-up."""
    train = params["train"]
    return train["lr_schedule"] == "constant" and not train.get("warmup_steps")


def budget_curve(runs: dict[int, dict]) -> list[dict] | None:
    """Test AUC a k-epoch run of each seed would have reported (the val-AUC pick among its
    first k epochs), for k = 4, 8, ... and the full budget; None when the recipe's first k
    epochs are not a k-epoch run (see `prefix_equals_shorter_run`)."""
    if not all(prefix_equals_shorter_run(r["params"]) for r in runs.values()):
        return None
    seeds = sorted(runs)
    epochs = min(len(runs[s]["history"]) for s in seeds)
    # an epoch over 1 + copies times the data counts as that many epochs of the budget
    scale = 1 + next(iter(runs.values()))["params"]["train"].get("augment_copies", 0)
    curve = []
    for k in sorted({*range(4, epochs + 1, 4), epochs}):
        picks = [max(runs[s]["history"][:k], key=lambda r: r["val_auc"]) for s in seeds]
        mean, std = _mean_std([r["test_auc"] for r in picks])
        curve.append(
            {
                "epochs": k,
                "budget_epochs": k * scale,
                "seeds": seeds,
                "test_auc_values": [r["test_auc"] for r in picks],
                "test_auc_mean": mean,
                "test_auc_std": std,
            }
        )
    return curve


def _fold_mean(runs: dict[int, dict], seeds: list[int], key: str) -> float:
    """One fold's figure under the val-AUC pick: the mean over `seeds`."""
    return float(np.mean([runs[s]["selection"]["val_auc"][key] for s in seeds]))


def fold_difference(
    ours: dict[int, dict[int, dict]], reference: dict[int, dict[int, dict]], seeds: list[int]
) -> dict:
    """Test AUC of `ours` minus `reference` fold by fold (each fold's mean over `seeds`), on the
    folds where both have those seeds, with a paired t-test over the folds: a difference that
    keeps its size from one fold's patients to the next is beyond noise."""
    folds = [f for f in sorted(ours) if f in reference and set(seeds) <= set(reference[f])]
    diffs = [
        _fold_mean(ours[f], seeds, "test_auc") - _fold_mean(reference[f], seeds, "test_auc")
        for f in folds
    ]
    # values per fold, in `folds` order
    return {"folds": folds, **difference_stats(np.array(diffs))}


def across_folds(summaries: list[dict]) -> dict[str, dict]:
    """Per split with runs on two or more folds (of split seed 0): each such variant's test
    figures under the val-AUC pick, per fold on the seeds it has in every one of its folds,
    then mean +- std over folds (how the published tables report their 5 folds), and its
    difference to the teacher (and to its control, when that ran on the same folds) fold by
    fold on the same seeds."""
    by_split: dict[str, dict[str, dict[int, dict[int, dict]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict))
    )
    for s in summaries:
        if s["split_seed"] == 0:
            by_split[s["split"]][s["variant"]][s["fold"]][s["seed"]] = s
    out: dict[str, dict] = {}
    for split, variants in sorted(by_split.items()):
        entry = {}
        for name in [v for v in VARIANTS if len(variants.get(v, {})) >= 2]:
            folds = variants[name]
            seeds = sorted(set.intersection(*(set(runs) for runs in folds.values())))
            if not seeds:
                continue
            row: dict = {"folds": sorted(folds), "seeds": seeds}
            for key in ("test_auc", "test_ap"):
                values = [_fold_mean(folds[f], seeds, key) for f in row["folds"]]
                row[f"{key}_values"] = values  # per fold, in `folds` order
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
            if name != "teacher":
                row["vs_teacher"] = fold_difference(folds, variants.get("teacher", {}), seeds)
            if name in CONTROLS:
                control = CONTROLS[name]
                row["vs_control"] = {
                    "control": control,
                    **fold_difference(folds, variants.get(control, {}), seeds),
                }
            entry[name] = row
        if entry:
            out[split] = entry
    return out


def build_results(summaries: list[dict], stale: list[dict] = (), runs_dir: Path = RUNS_DIR) -> dict:
    groups: dict[str, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for s in summaries:
        groups[group_name(s["split"], s["fold"], s["split_seed"])][s["variant"]][s["seed"]] = s
    results: dict = {
        "runs_dir": runs_dir.as_posix(),
        "n_summaries": len(summaries),
        "groups": {},
        "runs": run_rows(summaries),
        "across_folds": across_folds(summaries),
        "stale": [
            {k: s[k] for k in ("variant", "split", "fold", "seed", "stale_because")} for s in stale
        ],
    }
    for group, variants in sorted(groups.items()):
        teacher = variants.get("teacher")
        entry = {}
        for name in [v for v in VARIANTS if v in variants]:
            runs = variants[name]
            first = next(iter(runs.values()))
            entry[name] = {
                "about": VARIANTS[name].about,
                "role": first["role"],
                "g_params": first["g_params"],
                "g_macs_per_beat": first["g_macs_per_beat"],
                "score_beats_per_s_mean": _mean_std(
                    [r["score_beats_per_s"] for r in runs.values()]
                )[0],
                "train_time_s_mean": _mean_std([r["train_time_s"] for r in runs.values()])[0],
                "trained_on": sorted({trained_on(r) for r in runs.values()}),
                **{
                    rule: group_stats(runs, None if name == "teacher" else teacher, rule)
                    for rule in RULES
                },
            }
            # the headline figures, under the published selection rule, at the top level
            head = entry[name]["val_auc"]
            entry[name].update(
                n_seeds=head["n_seeds"],
                test_auc_mean=head["test_auc_mean"],
                test_auc_std=head["test_auc_std"],
                test_ap_mean=head["test_ap_mean"],
                paired_vs_teacher=head.get("paired_vs_teacher"),
                budget=budget_curve(runs),
            )
        for name, control in CONTROLS.items():
            if name in variants and control in variants:
                for rule in RULES:
                    entry[name][rule]["paired_vs_control"] = {
                        "control": control,
                        **paired_difference(variants[name], variants[control], rule),
                    }
                entry[name]["paired_vs_control"] = entry[name]["val_auc"]["paired_vs_control"]
        results["groups"][group] = entry
    results["variants"] = results["groups"].get(group_name(*HEADLINE), {})
    results["comparisons"] = comparisons(results["groups"], results["across_folds"])
    results["verdicts"] = verdicts(results["comparisons"])
    return results


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


def verdict(diff: dict, n: int) -> str:
    """A paired difference in a word or three: better / worse beyond noise, within noise, the
    same on every pair (no spread for a t-test), or too few pairs to tell (< MIN_PAIRS)."""
    if n < MIN_PAIRS:
        return "too few"
    if diff["diff_auc_beyond_noise"]:
        return "better" if diff["diff_auc_mean"] > 0 else "worse"
    if diff["diff_auc_p"] is None:  # no spread: a t-test says nothing
        return "same on every pair"
    return "within noise"


def _comparison(
    scope: str, variant: str, against: str, selection: str, unit: str, diff: dict
) -> dict:
    pairs = diff[f"{unit}s"]
    return {
        "scope": scope,
        "variant": variant,
        "against": against,
        "selection": selection,
        "unit": unit,
        "pairs": pairs,
        "n": len(pairs),
        **{k: diff[f"diff_auc_{k}"] for k in ("values", "mean", "std", "p", "beyond_noise")},
        "verdict": verdict(diff, len(pairs)),
        # its budget comes on top of the teacher's: a caveat on any comparison to the teacher
        "on_top_of_teacher": against == "teacher" and VARIANTS[variant].on_top_of_teacher,
    }


def comparisons(groups: dict[str, dict], across: dict[str, dict]) -> list[dict]:
    """Every paired difference of the study, flat: each student against the teacher and its
    control, per group (pairs are seeds) under val-AUC and unsupervised selection, then across
    folds (pairs are folds, val-AUC selection)."""
    out = []
    for group, entry in groups.items():
        for name, e in entry.items():
            if e["role"] != "student":
                continue
            for rule in ("val_auc", UNSUPERVISED):
                for key in ("paired_vs_teacher", "paired_vs_control"):
                    diff = e[rule].get(key)
                    if diff and diff["n_pairs"]:
                        against = diff.get("control", "teacher")
                        out.append(_comparison(group, name, against, rule, "seed", diff))
    for split, entry in across.items():
        for name, row in entry.items():
            for diff in (row.get("vs_teacher"), row.get("vs_control")):
                if diff and diff["folds"]:
                    against = diff.get("control", "teacher")
                    scope = f"{split} across folds"
                    out.append(_comparison(scope, name, against, "val_auc", "fold", diff))
    return out


def verdicts(compared: list[dict]) -> list[dict]:
    """Per scope and selection rule: the students better than the teacher beyond noise, and
    the student with the largest mean difference to it."""
    scopes: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in compared:
        if c["against"] == "teacher":
            scopes[c["scope"], c["selection"]].append(c)
    out = []
    headline = group_name(*HEADLINE)
    # the headline group first, then the splits across folds, then the other groups
    order = sorted(scopes, key=lambda k: (k[0] != headline, "across" not in k[0], k[0]))
    for scope, selection in order:
        rows = scopes[scope, selection]
        # the best of those with two or more pairs where there are any: one pair is no verdict
        best = max([c for c in rows if c["n"] >= 2] or rows, key=lambda c: c["mean"])
        out.append(
            {
                "scope": scope,
                "selection": selection,
                "unit": best["unit"],
                "better": [c["variant"] for c in rows if c["verdict"] == "better"],
                "best": best["variant"],
                "best_diff_auc_mean": best["mean"],
                "best_n": best["n"],
                "best_verdict": best["verdict"],
            }
        )
    return out


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
