"""The `preprocess` and `split` stages: every record's beats, normalised, with labels
(fold-independent), then their train / val / test assignment for one split and fold."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sibeatgan.config import Params, short_hash
from sibeatgan.data import rhythm
from sibeatgan.data.beats import BeatSpec, RecordBeats, extract_beats, normalise
from sibeatgan.data.split import SPLIT_NAMES, make_split
from sibeatgan.datasets import CLASSES, dataset
from sibeatgan.io import (
    ensure_writable,
    exclusive_folder,
    load_npy,
    read_json,
    save_npy,
    shared_folder,
    write_json,
)

BEAT_ARRAYS = ("beats", "classes", "records", "samples")  # in runtime.beats_dir
ARRAYS = (*BEAT_ARRAYS, "split")  # split.npy in runtime.prepared_dir


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

    def context(self, which: int) -> rhythm.BeatContext:
        """One split's beats in their records: each beat's record, and its timing among every
        beat of that record (all splits: the neighbours of a test beat may be train beats; no
        label is read)."""
        mask = self.split == which
        timing = rhythm.beat_rhythm(self.records, self.samples)[mask]
        return rhythm.BeatContext(self.records[mask], timing)


def beats_key(p: Params) -> str:
    """Hash of every parameter that changes the beats (the preprocess section)."""
    return short_hash({"preprocess": p.to_dict()["preprocess"]})


def prepared_key(p: Params) -> str:
    """Hash of every parameter that changes the prepared data: the beats and their split."""
    d = p.data
    fields = {"split_seed": d.split_seed, "fold": d.fold, "split": d.split}
    return short_hash({**fields, "preprocess": p.to_dict()["preprocess"]})


def check_records(records_dir: Path, records: list[int]) -> None:
    missing = [r for r in records if not (records_dir / f"{r}.hea").exists()]
    if missing:
        raise FileNotFoundError(
            f"records {missing} are not in {records_dir}; run `sibeatgan fetch-data` first "
            "(or fix preprocess.records / runtime.records_dir in params.yaml)"
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
    """Write every record's beats of `p` to runtime.beats_dir (and the beat counts to
    `metrics_path`), holding that folder's lock: a split, training or evaluation reading it
    (or another preprocess) stops this at once, naming its pid, and nothing is written."""
    beats_dir = Path(p.runtime.beats_dir)
    check_records(Path(p.runtime.records_dir), p.preprocess.records)
    ensure_writable(beats_dir, *([Path(metrics_path).parent] if metrics_path else []))
    with exclusive_folder(beats_dir, "preprocess"):
        return _preprocess_locked(p, metrics_path)


def _preprocess_locked(p: Params, metrics_path: str | Path | None) -> dict:
    pp = p.preprocess
    spec = BeatSpec.from_dict(p.to_dict()["preprocess"])
    ds = dataset(pp.dataset)
    job = partial(extract_beats, Path(p.runtime.records_dir), spec=spec, ds=ds)
    workers = max(1, min(p.runtime.workers, len(pp.records)))
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
    out = Path(p.runtime.beats_dir)
    arrays = dict(zip(BEAT_ARRAYS, (beats, classes, records, samples), strict=True))
    check_prepared(arrays, out)  # nothing non-finite is written (a record with a NaN stretch)
    for name, arr in arrays.items():
        save_npy(out / f"{name}.npy", arr)
    summary = {
        "n_beats": int(len(classes)),
        "class_counts": {c: int(np.sum(classes == i)) for i, c in enumerate(CLASSES)},
        "n_dropped_unconfirmed": int(sum(r.dropped_n for r in per_record)),
        "n_records": len(pp.records),
    }
    write_json(out / "meta.json", {**summary, "classes": list(CLASSES), "key": beats_key(p)})
    if metrics_path:
        write_json(metrics_path, summary)
    return summary


def run_split(p: Params, metrics_path: str | Path | None = None) -> dict:
    """Assign the beats of runtime.beats_dir to train / val / test for data.split, data.fold
    and data.split_seed, in runtime.prepared_dir (and the counts per part to `metrics_path`).
    The beats are locked for reading meanwhile, the split folder for writing."""
    out = Path(p.runtime.prepared_dir)
    ensure_writable(out, *([Path(metrics_path).parent] if metrics_path else []))
    with (
        shared_folder(Path(p.runtime.beats_dir), "split"),
        exclusive_folder(out, "split"),
    ):
        return _split_locked(p, metrics_path)


def _split_locked(p: Params, metrics_path: str | Path | None) -> dict:
    beats_dir, out = Path(p.runtime.beats_dir), Path(p.runtime.prepared_dir)
    meta = _beats_meta(beats_dir)
    if meta.get("key") != beats_key(p):
        raise ValueError(
            f"{beats_dir} holds beats of other preprocess params; rerun `sibeatgan preprocess` "
            "with these params (or `dvc repro preprocess`)"
        )
    classes, records, samples = (load_npy(beats_dir / f"{n}.npy") for n in BEAT_ARRAYS[1:])
    ds = dataset(p.preprocess.dataset)
    split = make_split(classes, records, p.data.split, p.data.fold, p.data.split_seed, ds)
    check_parts_disjoint(records, samples, split)
    save_npy(out / "split.npy", split)
    sizes = {
        name: {c: int(np.sum((split == s) & (classes == i))) for i, c in enumerate(CLASSES)}
        for s, name in enumerate(SPLIT_NAMES)
    }
    d = p.data
    summary = {"split": d.split, "fold": d.fold, "split_seed": d.split_seed, "split_counts": sizes}
    write_json(out / "meta.json", {**summary, "key": prepared_key(p), "beats_key": meta["key"]})
    if metrics_path:
        write_json(metrics_path, summary)
    return summary


def _beats_meta(beats_dir: Path) -> dict:
    missing = [n for n in BEAT_ARRAYS if not (beats_dir / f"{n}.npy").exists()]
    if missing or not (beats_dir / "meta.json").exists():
        raise FileNotFoundError(
            f"{beats_dir} holds no preprocessed beats (missing {missing or ['meta.json']}); "
            "run `sibeatgan preprocess` (or `dvc repro preprocess`) first"
        )
    return read_json(beats_dir / "meta.json")


class PreparedDataError(ValueError):
    """Prepared arrays that cannot be what `preprocess` and `split` wrote; the message names
    the fix."""


def check_prepared(arrays: dict[str, np.ndarray], where: Path) -> None:
    """Refuse arrays a training must not read: beats that are not [n, leads, L] floats in
    [-1, 1] (normalised, finite), per-beat arrays of another length, unknown classes or parts.
    Checks the arrays given (the beats alone, or the beats with their split)."""
    beats = arrays["beats"]
    fix = (
        f"the prepared data in {where} are damaged: run `sibeatgan preprocess` and "
        "`sibeatgan split` again"
    )
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
    for name in (n for n in ARRAYS[1:] if n in arrays):
        a = arrays[name]
        if a.shape != (len(beats),):
            raise PreparedDataError(f"{name}.npy has shape {a.shape} for {len(beats)} beats; {fix}")
    ranges = {"classes": len(CLASSES), "split": len(SPLIT_NAMES)}
    for name, n in ((k, v) for k, v in ranges.items() if k in arrays):
        a = arrays[name]
        if a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= n:
            raise PreparedDataError(f"{name}.npy holds values outside 0-{n - 1}; {fix}")


def load_prepared(beats_dir: str | Path, prepared_dir: str | Path) -> Prepared:
    """The beats of `beats_dir` with their split in `prepared_dir`, checked
    (`check_prepared`) before any use; a split made from other beats is refused."""
    beats_dir, prepared_dir = Path(beats_dir), Path(prepared_dir)
    beats_meta = _beats_meta(beats_dir)
    if not (prepared_dir / "split.npy").exists() or not (prepared_dir / "meta.json").exists():
        raise FileNotFoundError(
            f"{prepared_dir} holds no split of the beats; run `sibeatgan split` (or `dvc repro "
            "split`) first"
        )
    meta = read_json(prepared_dir / "meta.json")
    if meta.get("beats_key") != beats_meta.get("key"):
        raise ValueError(
            f"{prepared_dir} splits other beats than those in {beats_dir}; rerun `sibeatgan "
            "split` (or `dvc repro split`)"
        )
    arrays = {n: load_npy(beats_dir / f"{n}.npy") for n in BEAT_ARRAYS}
    arrays["split"] = load_npy(prepared_dir / "split.npy")
    check_prepared(arrays, prepared_dir)
    return Prepared(**arrays, meta={**beats_meta, **meta})


def load_data(p: Params) -> Prepared:
    """The prepared data at the paths of `p` (runtime.beats_dir, runtime.prepared_dir)."""
    return load_prepared(p.runtime.beats_dir, p.runtime.prepared_dir)


@contextmanager
def reading_data(p: Params, what: str) -> Iterator[None]:
    """Hold the beats and split folders of `p` for reading while `what` uses them: a
    preprocess or split cannot replace them meanwhile (nor start while it runs)."""
    with (
        shared_folder(Path(p.runtime.beats_dir), what),
        shared_folder(Path(p.runtime.prepared_dir), what),
    ):
        yield


def ensure_prepared(p: Params, root: Path) -> Params:
    """Prepared data for these params under `root`, beats made once per preprocess config and
    a split once per split config; `p` pointed at them. Runs of a grid starting at once wait
    for the one that makes them (and then use its data)."""
    beats = root / "beats" / beats_key(p)
    prepared = root / "prepared" / prepared_key(p)
    runtime = dataclasses.replace(p.runtime, beats_dir=str(beats), prepared_dir=str(prepared))
    p = dataclasses.replace(p, runtime=runtime)
    if not _made_for(beats, beats_key(p)):
        check_records(Path(p.runtime.records_dir), p.preprocess.records)
    _make_once(beats, beats_key(p), "preprocess", lambda: _preprocess_locked(p, None))
    _make_once(prepared, prepared_key(p), "split", lambda: _split_locked(p, None))
    return p


def _make_once(folder: Path, key: str, what: str, make: Callable[[], object]) -> None:
    """`make` the contents of `folder` unless they are there for `key`; a process that finds
    another making them waits for it, then uses what it made."""
    if _made_for(folder, key):
        return
    ensure_writable(folder)
    with exclusive_folder(folder, what, wait=True):
        if not _made_for(folder, key):  # made meanwhile by the run we waited for?
            make()


def _made_for(folder: Path, key: str) -> bool:
    meta = folder / "meta.json"
    return meta.exists() and read_json(meta).get("key") == key
