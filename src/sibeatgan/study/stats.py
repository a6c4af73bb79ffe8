"""The study's statistics, as data: from the run summaries (reports/runs/) to the results
that `report` writes and renders. Per group (split, fold, split seed) and variant, the mean +-
std of the test figures under each selection rule over seeds, the paired difference to the
teacher and to a control on the same seeds (a one-sample t-test of the differences), the same
over folds, the shorter budgets a run's first epochs stand for, and the verdicts.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from sibeatgan.config import Params
from sibeatgan.io import read_json
from sibeatgan.study.runs import (
    CONTROLS,
    RUNS_DIR,
    UNSUPERVISED,
    VARIANTS,
    group_name,
    summary_is_current,
)

RULES = ("val_auc", "val_recon", "last")
FIGURES = ("test_auc", "test_ap", "test_f1", "oracle_f1", "recall_S", "recall_V", "recall_F")
HEADLINE = ("intra", 0)  # split, fold of the main tables (split_seed 0)
NOISE_P = 0.05  # a paired difference "exceeds seed noise" at p < this, with >= 3 pairs
MIN_PAIRS = 3


def load_summaries(runs_dir: Path) -> list[dict]:
    """Every run summary in `runs_dir` (one folder per variant), in file order."""
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
    """One variant's runs of a group under `rule`: the picks, mean +- std of each figure over
    seeds, and the paired difference to `teacher` when given."""
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
    """The results of the study (what results.json holds): per group and variant, the figures
    under each selection rule and the paired differences, every run, the figures across folds,
    the stale summaries left out, every comparison and the verdicts."""
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
