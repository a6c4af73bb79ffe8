"""Which N beats does each QRS detector confirm, and what does the difference cost in test AUC?

An N beat is kept only when a detected R peak lies near its annotation (protocol section 2).
The published preprocessing used biosppy's Hamilton segmenter (`preprocess.qrs_detector=
hamilton`) and kept N beats closer than 10 samples (`abs(d) < 10`: a tolerance of 9); ours
defaults to wfdb's XQRS within 10 samples. This probe runs both detectors on every record of
params.yaml and counts, per record, the N beats each confirms and those only one of them
confirms (the published set holds 86,717 N beats).

With --model, it also scores the test part of a prepared XQRS data set (--prepared) with that
generator and gives the test AUC and AP with and without the test N beats that Hamilton
rejects: how much of the test AUC those beats cost, on the same weights and the same split.

\b
    python research/scripts/qrs_detectors.py --json research/probes/qrs-detector/counts.json
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from sibeatgan.config import load_params
from sibeatgan.data.beats import bandpass, beat_classes, detect_r_peaks, near_detection, read_record
from sibeatgan.data.preprocess import load_prepared
from sibeatgan.data.split import TEST
from sibeatgan.datasets.mitdb import MITDB
from sibeatgan.evaluation.metrics import auc_ap
from sibeatgan.evaluation.scoring import score
from sibeatgan.io import read_json, write_json
from sibeatgan.models import Generator
from sibeatgan.pipeline.trained import load_generator
from sibeatgan.training import state as train_state

PUBLISHED_N = 86_717  # protocol section 2: N beats of the published preprocessed set


def confirmed_n(mitdb: Path, record: int, p, tolerances: dict[str, int]) -> dict:
    """Annotation samples of the N beats (whose window fits) and, per detector, which it keeps."""
    rec = read_record(mitdb, record, MITDB)
    sig, fs, samples, symbols = rec.sig, rec.fs, rec.annotations.samples, rec.annotations.symbols
    pp = p.preprocess
    cls = beat_classes(symbols, samples, len(sig), pp.before, pp.after, MITDB.class_of_symbol)
    n_samples = samples[cls == 0]
    lead = bandpass(sig, fs, pp.band_hz, pp.taps)[:, 0]
    kept = {
        det: near_detection(n_samples, detect_r_peaks(lead, fs, det), tol)
        for det, tol in tolerances.items()
    }
    return {"samples": n_samples, "kept": kept}


@click.command(help=__doc__)
@click.option(
    "--mitdb",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    envvar="MITDB_DIR",
    help="Folder of the MIT-BIH records. Default: $MITDB_DIR, else runtime.records_dir.",
)
@click.option("--xqrs-tolerance", default=10, show_default=True, help="XQRS: max distance.")
@click.option(
    "--hamilton-tolerance",
    default=9,
    show_default=True,
    help="Hamilton: max distance (the published `< 10`).",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="A model folder (G.pt, fit.json) or a training state (train_state.pt: the EMA of G it "
    "scores) trained on --prepared, to rescore its test part.",
)
@click.option(
    "--prepared",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="The prepared XQRS data set the --model was trained on (a study's WORK/prepared/KEY).",
)
@click.option("--json", "json_out", type=click.Path(path_type=Path), required=True)
def main(
    mitdb: Path | None,
    xqrs_tolerance: int,
    hamilton_tolerance: int,
    model: Path | None,
    prepared: Path | None,
    json_out: Path,
) -> None:
    if (model is None) != (prepared is None):
        raise click.UsageError("--model and --prepared go together")
    p = load_params()
    mitdb = mitdb or Path(p.runtime.records_dir)
    tolerances = {"xqrs": xqrs_tolerance, "hamilton": hamilton_tolerance}
    per_record, only_xqrs = {}, set()
    for record in tqdm(p.preprocess.records, desc="records", unit="rec"):
        r = confirmed_n(mitdb, record, p, tolerances)
        x, h = r["kept"]["xqrs"], r["kept"]["hamilton"]
        per_record[record] = {
            "xqrs": int(x.sum()),
            "hamilton": int(h.sum()),
            "xqrs_only": int((x & ~h).sum()),
            "hamilton_only": int((h & ~x).sum()),
        }
        only_xqrs |= {(record, int(s)) for s in r["samples"][x & ~h]}
    totals = {k: sum(row[k] for row in per_record.values()) for k in per_record[record]}
    result = {
        "tolerances": tolerances,
        "published_n": PUBLISHED_N,
        "totals": totals,
        "per_record": per_record,
    }
    click.echo(
        f"N beats confirmed: xqrs {totals['xqrs']:,}, hamilton {totals['hamilton']:,} "
        f"(published {PUBLISHED_N:,}); only xqrs {totals['xqrs_only']:,}, "
        f"only hamilton {totals['hamilton_only']:,}"
    )
    if model is not None:
        result["rescored"] = rescore(model, prepared, only_xqrs)
        click.echo(str(result["rescored"]))
    write_json(json_out, result)
    click.echo(f"written: {json_out}")


def scored_generator(model: Path) -> tuple[Generator, int]:
    """The generator a model folder holds, or the one a training state scores (its EMA of G,
    else G) as of the epoch it was written after; and its number of input channels."""
    if model.is_dir():
        return load_generator(model), read_json(model / "fit.json")["nc"]
    state = train_state.read(model)
    p = state["meta"]["params"]
    nc = p["data"]["channels"]
    g = Generator(nc, p["model"]["nz"], p["model"]["width"])
    if "ema" in state["parts"]:
        ema = AveragedModel(g, use_buffers=True)
        ema.load_state_dict(state["parts"]["ema"])
        g = ema.module
    else:
        g.load_state_dict(state["parts"]["g"])
    return g.eval(), nc


def rescore(model: Path, prepared: Path, only_xqrs: set[tuple[int, int]]) -> dict:
    """Test AUC/AP of `model` on the prepared test part, with and without the N beats that
    only XQRS confirms."""
    # a study's WORK/prepared/KEY; its beats are WORK/beats/BEATS_KEY (ensure_prepared)
    beats = prepared.parent.parent / "beats" / read_json(prepared / "meta.json")["beats_key"]
    data = load_prepared(beats, prepared)
    test = data.split == TEST
    g, nc = scored_generator(model)
    x = data.beats[test, :nc]
    labels = (data.classes[test] != 0).astype(int)
    pairs = zip(data.records[test].tolist(), data.samples[test].tolist(), strict=True)
    dropped = np.array([pair in only_xqrs for pair in pairs]) & (labels == 0)
    if not dropped.any():
        raise click.BadParameter(
            f"no test beat of {prepared} is one that only XQRS confirms: prepare it with "
            "preprocess.qrs_detector=xqrs",
            param_hint="--prepared",
        )
    scores = score(g, x)
    auc, ap = auc_ap(labels, scores)
    auc_kept, ap_kept = auc_ap(labels[~dropped], scores[~dropped])
    n_scores = scores[labels == 0]
    percentile = (n_scores.argsort().argsort() + 0.5) / len(n_scores)
    return {
        "model": str(model),
        "test_beats": int(len(labels)),
        "test_n": int((labels == 0).sum()),
        "test_n_only_xqrs": int(dropped.sum()),
        "test_auc": auc,
        "test_ap": ap,
        "test_auc_without": auc_kept,
        "test_ap_without": ap_kept,
        "their_mean_percentile_among_test_n": float(percentile[dropped[labels == 0]].mean()),
    }


if __name__ == "__main__":
    main()
