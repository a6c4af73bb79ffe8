import hashlib

import numpy as np
import pytest

from sibeatgan.config import with_overrides
from sibeatgan.data.preprocess import ARRAYS, load_prepared, prepared_key, run_preprocess
from sibeatgan.io import read_json


def digests(folder):
    return {n: hashlib.sha256((folder / f"{n}.npy").read_bytes()).hexdigest() for n in ARRAYS}


def test_preprocess_counts_and_same_bytes(tiny_params, tmp_path):
    summary = run_preprocess(tiny_params, tmp_path / "m.json")
    folder = tmp_path / "prepared"
    first = digests(folder)
    data = load_prepared(folder)
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
    for name, overrides in {"base": [], "seed": ["seed=1"], "split": ["data.split_seed=1"]}.items():
        folder = tmp_path / name
        p = with_overrides(tiny_params, [*overrides, f"data.prepared_dir={folder}"])
        run_preprocess(p)
        splits[name] = (prepared_key(p), load_prepared(folder).split)
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
        load_prepared(tmp_path / "nothing")
