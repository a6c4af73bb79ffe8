"""The `preprocess` stage: every record's beats, normalised, with labels and split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sibeatgan.config import Params, short_hash
from sibeatgan.data.beats import CLASSES, BeatSpec, RecordBeats, extract_beats, normalise
from sibeatgan.data.split import SPLIT_NAMES, make_split
from sibeatgan.io import (
    ensure_writable,
    exclusive_folder,
    load_npy,
    read_json,
    save_npy,
    write_json,
)

ARRAYS = ("beats", "classes", "records", "samples", "split")


@dataclass
class Prepared:
    """The preprocessed data set: beats [n, 2, L] float32 and per-beat class, record, split."""

    beats: np.ndarray
    classes: np.ndarray
    records: np.ndarray
    samples: np.ndarray
    split: np.ndarray
    meta: dict

    def part(self, which: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Beats of one split (first `channels` leads) and their classes."""
        mask = self.split == which
        return self.beats[mask, :channels], self.classes[mask]


def prepared_key(p: Params) -> str:
    """Hash of every parameter that changes the prepared arrays (not paths or worker count)."""
    pp = {k: v for k, v in p.to_dict()["preprocess"].items() if k != "workers"}
    d = p.data
    fields = {"split_seed": d.split_seed, "fold": d.fold, "split": d.split, "preprocess": pp}
    return short_hash(fields)


def check_records(mitdb_dir: Path, records: list[int]) -> None:
    missing = [r for r in records if not (mitdb_dir / f"{r}.hea").exists()]
    if missing:
        raise FileNotFoundError(
            f"records {missing} are not in {mitdb_dir}; run `sibeatgan fetch-data` first "
            "(or fix preprocess.records / data.mitdb_dir in params.yaml)"
        )


def check_parts_disjoint(records: np.ndarray, samples: np.ndarray, split: np.ndarray) -> None:
    """Refuse a split in which one beat, a (record, sample) pair, lands in two parts."""
    beats = np.stack([records.astype(np.int64), samples.astype(np.int64)], axis=1)
    with_part = np.concatenate([beats, split.astype(np.int64)[:, None]], axis=1)
    n_beats, n_placed = len(np.unique(beats, axis=0)), len(np.unique(with_part, axis=0))
    if n_placed != n_beats:
        raise ValueError(
            f"{n_placed - n_beats} beats (record, sample) fall in two split parts; each record "
            "must be listed once in preprocess.records"
        )


def run_preprocess(p: Params, metrics_path: str | Path | None = None) -> dict:
    """Write the prepared data of `p` (and the beat counts to `metrics_path`), holding the
    prepared folder's lock: a training or evaluation reading it (or another preprocess) stops
    this at once, naming its pid, and nothing is written."""
    check_records(Path(p.data.mitdb_dir), p.preprocess.records)
    ensure_writable(p.data.prepared_dir, *([Path(metrics_path).parent] if metrics_path else []))
    with exclusive_folder(Path(p.data.prepared_dir), "preprocess"):
        return _preprocess_locked(p, metrics_path)


def _preprocess_locked(p: Params, metrics_path: str | Path | None) -> dict:
    mitdb_dir = Path(p.data.mitdb_dir)
    pp = p.preprocess
    job = partial(extract_beats, mitdb_dir, spec=BeatSpec.from_dict(p.to_dict()["preprocess"]))
    workers = max(1, min(pp.workers, len(pp.records)))
    bar = dict(total=len(pp.records), desc="preprocess records", unit="rec")
    if workers == 1:
        per_record: list[RecordBeats] = [job(r) for r in tqdm(pp.records, **bar)]
    else:
        with get_context("spawn").Pool(workers) as pool:
            per_record = list(tqdm(pool.imap(job, pp.records), **bar))

    beats = normalise(np.concatenate([r.x for r in per_record]))
    classes = np.concatenate([r.cls for r in per_record]).astype(np.int8)
    records = np.concatenate([np.full(len(r.cls), r.record, np.int16) for r in per_record])
    samples = np.concatenate([r.sample for r in per_record]).astype(np.int32)
    split = make_split(classes, records, p.data.split, p.data.fold, p.data.split_seed)
    check_parts_disjoint(records, samples, split)

    out = Path(p.data.prepared_dir)
    arrays = dict(zip(ARRAYS, (beats, classes, records, samples, split), strict=True))
    check_prepared(arrays, out)  # nothing non-finite is written (a record with a NaN stretch)
    for name, arr in arrays.items():
        save_npy(out / f"{name}.npy", arr)
    counts = {c: int(np.sum(classes == i)) for i, c in enumerate(CLASSES)}
    sizes = {
        name: {c: int(np.sum((split == s) & (classes == i))) for i, c in enumerate(CLASSES)}
        for s, name in enumerate(SPLIT_NAMES)
    }
    summary = {
        "n_beats": int(len(classes)),
        "class_counts": counts,
        "split_counts": sizes,
        "n_dropped_unconfirmed": int(sum(r.dropped_n for r in per_record)),
        "n_records": len(pp.records),
    }
    meta = {"classes": list(CLASSES), "split": p.data.split, "fold": p.data.fold}
    meta["split_seed"] = p.data.split_seed
    write_json(out / "meta.json", {**summary, **meta, "key": prepared_key(p)})
    if metrics_path:
        write_json(metrics_path, summary)
    return summary


class PreparedDataError(ValueError):
    """Prepared arrays that cannot be what `preprocess` wrote; the message names the fix."""


def check_prepared(arrays: dict[str, np.ndarray], where: Path) -> None:
    """Refuse arrays a training must not read: beats that are not [n, leads, L] floats in
    [-1, 1] (normalised, finite), per-beat arrays of another length, unknown classes or parts."""
    beats = arrays["beats"]
    fix = f"the prepared data in {where} are damaged: run `sibeatgan preprocess` again"
    if beats.ndim != 3 or beats.dtype.kind != "f" or len(beats) == 0:
        raise PreparedDataError(
            f"beats.npy has shape {beats.shape} and dtype {beats.dtype}, not n x leads x "
            f"samples floats; {fix}"
        )
    bad = int(beats.size - np.count_nonzero(np.isfinite(beats)))
    if bad:
        raise PreparedDataError(f"beats.npy holds {bad} NaN or infinite values; {fix}")
    if beats.min() < -1.0001 or beats.max() > 1.0001:
        raise PreparedDataError(
            f"beats.npy holds values in [{beats.min():.4g}, {beats.max():.4g}], outside the "
            f"[-1, 1] of normalised beats; {fix}"
        )
    for name in ARRAYS[1:]:
        a = arrays[name]
        if a.shape != (len(beats),):
            raise PreparedDataError(f"{name}.npy has shape {a.shape} for {len(beats)} beats; {fix}")
    ranges = {"classes": len(CLASSES), "split": len(SPLIT_NAMES)}
    for name, n in ranges.items():
        a = arrays[name]
        if a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= n:
            raise PreparedDataError(f"{name}.npy holds values outside 0-{n - 1}; {fix}")


def load_prepared(prepared_dir: str | Path) -> Prepared:
    """The prepared data of `prepared_dir`, checked (`check_prepared`) before any use."""
    d = Path(prepared_dir)
    missing = [n for n in ARRAYS if not (d / f"{n}.npy").exists()]
    if missing or not (d / "meta.json").exists():
        raise FileNotFoundError(
            f"{d} holds no preprocessed data (missing {missing or ['meta.json']}); "
            "run `sibeatgan preprocess` (or `dvc repro preprocess`) first"
        )
    arrays = {n: load_npy(d / f"{n}.npy") for n in ARRAYS}
    check_prepared(arrays, d)
    return Prepared(**arrays, meta=read_json(d / "meta.json"))


def ensure_prepared(p: Params, root: Path) -> Params:
    """Prepared data for these params, made once per distinct preprocess/split config. Runs of
    a grid starting at once wait for the one that makes them (and then use its data)."""
    prepared = root / "prepared" / prepared_key(p)
    p = dataclasses.replace(p, data=dataclasses.replace(p.data, prepared_dir=str(prepared)))
    if not _made_for(prepared, p):
        check_records(Path(p.data.mitdb_dir), p.preprocess.records)
        ensure_writable(prepared)
        with exclusive_folder(prepared, "preprocess", wait=True):
            if not _made_for(prepared, p):  # made meanwhile by the run we waited for?
                _preprocess_locked(p, None)
    return p


def _made_for(prepared: Path, p: Params) -> bool:
    meta = prepared / "meta.json"
    return meta.exists() and read_json(meta).get("key") == prepared_key(p)
