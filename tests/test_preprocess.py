import hashlib

import numpy as np
import pytest

from sibeatgan.config import with_overrides
from sibeatgan.data.preprocess import (
    BEAT_ARRAYS,
    PreparedDataError,
    beats_key,
    load_data,
    load_prepared,
    prepared_key,
    run_preprocess,
    run_split,
)
from sibeatgan.io import read_json, save_npy, write_json


def digests(folder, names=BEAT_ARRAYS):
    return {n: hashlib.sha256((folder / f"{n}.npy").read_bytes()).hexdigest() for n in names}


def test_preprocess_counts_and_same_bytes(tiny_params, tmp_path):
    summary = run_preprocess(tiny_params, tmp_path / "m.json")
    run_split(tiny_params)
    folder = tmp_path / "prepared_beats"
    first = digests(folder)
    data = load_data(tiny_params)
    assert data.beats.dtype == np.float32 and data.beats.shape[1:] == (2, 320)
    assert np.abs(data.beats).max() <= 1.0 + 1e-6
    counts = summary["class_counts"]
    assert counts == read_json(tmp_path / "m.json")["class_counts"]
    assert sum(counts.values()) == len(data.classes) == summary["n_beats"]
    assert counts["N"] > 0 and counts["V"] > 0
    run_preprocess(tiny_params)
    assert digests(folder) == first, "same params must give the same bytes"


def test_split_seed_not_training_seed_draws_the_split(tiny_params, tmp_path):
    """Training seeds share one split, so their spread is training noise, not data noise."""
    splits = {}
    run_preprocess(tiny_params)
    for name, overrides in {"base": [], "seed": ["seed=1"], "split": ["data.split_seed=1"]}.items():
        p = with_overrides(tiny_params, [*overrides, f"runtime.prepared_dir={tmp_path / name}"])
        run_split(p)
        splits[name] = (prepared_key(p), load_data(p).split)
    assert splits["seed"][0] == splits["base"][0]
    assert np.array_equal(splits["seed"][1], splits["base"][1])
    assert splits["split"][0] != splits["base"][0]
    assert not np.array_equal(splits["split"][1], splits["base"][1])


def test_missing_record_is_a_clear_error(tiny_params):
    p = with_overrides(tiny_params, ["preprocess.records=[100, 999]"])
    with pytest.raises(FileNotFoundError, match=r"\[999\].*fetch-data"):
        run_preprocess(p)


def test_load_prepared_without_data_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="sibeatgan preprocess"):
        load_prepared(tmp_path / "nothing", tmp_path / "nothing either")


def test_changing_the_fold_reruns_the_split_only(tiny_params, tmp_path):
    """The beats do not depend on the split or fold: the split stage reads them as they are,
    and a split of other beats is refused until it is made again."""
    run_preprocess(tiny_params)
    beats = digests(tmp_path / "prepared_beats")
    folds = {}
    for fold in (0, 1):
        p = with_overrides(tiny_params, [f"data.fold={fold}"])
        run_split(p)
        assert beats_key(p) == beats_key(tiny_params)
        folds[fold] = load_data(p).split
    assert digests(tmp_path / "prepared_beats") == beats
    assert not np.array_equal(folds[0], folds[1])
    other = with_overrides(tiny_params, ["preprocess.qrs_tolerance=20"])
    run_preprocess(other)
    with pytest.raises(ValueError, match="rerun `sibeatgan split`"):
        load_data(other)
    with pytest.raises(ValueError, match="other preprocess params.*sibeatgan preprocess"):
        run_split(with_overrides(tiny_params, ["preprocess.qrs_tolerance=30"]))


def _write_prepared(folder, **changes):
    """A small valid beats folder (folder/beats) and its split (folder/split), with `changes`
    to their arrays."""
    _write_arrays(folder, **changes)
    return folder / "beats", folder / "split"


def _write_arrays(folder, **changes):
    """A small valid prepared folder, with `changes` to its arrays."""
    rng = np.random.default_rng(0)
    n = 12
    arrays = {
        "beats": rng.uniform(-1, 1, (n, 2, 320)).astype(np.float32),
        "classes": np.zeros(n, np.int8),
        "records": np.full(n, 100, np.int16),
        "samples": np.arange(n, dtype=np.int32) * 400,
        "split": np.arange(n, dtype=np.int8) % 3,
    }
    for name, change in changes.items():
        arrays[name] = change(arrays[name])
    for name, a in arrays.items():
        part = folder / ("split" if name == "split" else "beats")
        part.mkdir(parents=True, exist_ok=True)
        save_npy(part / f"{name}.npy", a)
    write_json(folder / "beats" / "meta.json", {"key": "x"})
    write_json(folder / "split" / "meta.json", {"key": "y", "beats_key": "x"})


def _set(index, value):
    def change(a):
        a = a.copy()
        a[index] = value
        return a

    return change


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"beats": _set((3, 0, 10), np.nan)}, r"beats.npy holds 1 NaN or infinite"),
        ({"beats": _set((0, 1, 0), np.inf)}, r"beats.npy holds 1 NaN or infinite"),
        ({"beats": _set((5, 0, 7), 3.5)}, r"outside the \[-1, 1\] of normalised beats"),
        ({"beats": lambda a: a[:, 0]}, r"beats.npy has shape \(12, 320\)"),
        ({"beats": lambda a: a.astype(np.int32)}, r"dtype int32"),
        ({"classes": lambda a: a[:-1]}, r"classes.npy has shape \(11,\) for 12 beats"),
        ({"split": lambda a: np.concatenate([a, a])}, r"split.npy has shape \(24,\) for 12"),
        ({"classes": _set(2, 9)}, r"classes.npy holds values outside 0-4"),
        ({"split": _set(0, -1)}, r"split.npy holds values outside 0-2"),
    ],
)
def test_damaged_prepared_arrays_are_one_line_naming_the_fix(tmp_path, changes, message):
    folders = _write_prepared(tmp_path / "prepared", **changes)
    with pytest.raises(PreparedDataError, match=message) as err:
        load_prepared(*folders)
    assert "run `sibeatgan preprocess` and `sibeatgan split` again" in str(err.value)
    assert "\n" not in str(err.value)


def test_valid_prepared_arrays_load(tmp_path):
    folders = _write_prepared(tmp_path / "prepared")
    assert load_prepared(*folders).beats.shape == (12, 2, 320)


def test_preprocess_writes_nothing_non_finite(tiny_params, tmp_path, monkeypatch):
    """A record whose signal holds NaN must not reach the prepared arrays."""
    from sibeatgan.data import preprocess

    real = preprocess.normalise

    def with_nan(x):
        out = real(x)
        out[0, 0, 0] = np.nan
        return out

    monkeypatch.setattr(preprocess, "normalise", with_nan)
    with pytest.raises(PreparedDataError, match="NaN or infinite"):
        run_preprocess(tiny_params)
    assert not (tmp_path / "prepared_beats" / "beats.npy").exists()
