import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from disk_faults import fill_disk, needs_dev_full

from sibeatgan import io
from sibeatgan.io import atomic_path, load_state_dict, save_state_dict, state_digest


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "G.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["G.pt"]


def test_state_dict_loads_with_weights_only(tmp_path):
    state = {"w": torch.arange(4.0)}
    save_state_dict(tmp_path / "m.pt", state)
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    assert torch.equal(loaded["w"], state["w"])
    with pytest.raises(FileNotFoundError, match="train that model first"):
        load_state_dict(tmp_path / "none.pt")


def test_state_digest_follows_the_values_not_the_file(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(4)}
    save_state_dict(tmp_path / "a.pt", state)
    save_state_dict(tmp_path / "b.pt", state)
    a, b = load_state_dict(tmp_path / "a.pt"), load_state_dict(tmp_path / "b.pt")
    assert state_digest(a) == state_digest(b) == state_digest(dict(reversed(state.items())))
    assert state_digest(a | {"w": a["w"] + 1e-6}) != state_digest(a)
    assert state_digest(a | {"w": a["w"].reshape(3, 2)}) != state_digest(a)


# --- A full disk, and values JSON cannot hold --------------------------------------------


def _writers(tmp_path: Path) -> dict:
    """Every way the project writes a file, each into tmp_path/out."""
    import matplotlib.pyplot as plt

    from sibeatgan.evaluation.figures import save_figure
    from sibeatgan.training import state as train_state

    out = tmp_path / "out"

    def figure(path):
        fig = plt.figure()
        fig.gca().plot([0, 1])
        save_figure(fig, path)

    def training_state(path):  # torch's own writer: it loses the errno
        train_state.save(path, {}, train_state.Progress(), np.random.default_rng(0), {})

    return {
        out / "a.json": lambda path: io.write_json(path, {"a": list(range(5000))}),
        out / "a.txt": lambda path: io.write_text(path, "x" * 100_000),
        out / "a.csv": lambda path: io.write_csv(path, {"x": list(range(5000))}),
        out / "beats.npy": lambda path: io.save_npy(path, np.zeros((500, 320), np.float32)),
        out / "G.pt": lambda path: io.save_state_dict(path, {"w": torch.zeros(50_000)}),
        out / "train_state.pt": training_state,
        out / "roc_pr.png": figure,
    }


@needs_dev_full
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, code):
    writers = _writers(tmp_path)
    (tmp_path / "out").mkdir()
    for path in writers:
        path.write_bytes(b"the earlier version")
    fill_disk(monkeypatch, tmp_path / "out", code)
    why = {errno.ENOSPC: "no space left", errno.EDQUOT: "quota", errno.EROFS: "read-only"}
    for path, write in writers.items():
        with pytest.raises(Exception) as caught:  # noqa: B017 - which one is checked below
            write(path)
        message = str(caught.value)
        assert message.startswith(f"cannot write {path}: ") and why[code] in message
        assert "\n" not in message and caught.value.errno == code
        assert isinstance(caught.value, OSError), "an OutputError: an OSError, one line"
        assert path.read_bytes() == b"the earlier version", "nothing replaced"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in writers
    ), "no temporaries left"


def test_an_errorless_failed_write_on_a_full_disk_is_named(tmp_path, monkeypatch):
    """numpy's "problem writing element" has no errno: a full disk is recognised by its space."""
    monkeypatch.setattr(io, "out_of_space", lambda path: True, raising=False)
    full = pytest.raises(OSError, match=r"cannot write .*x.npy: no space left")
    with full, io.atomic_path(tmp_path / "x.npy"):
        raise OSError("problem writing element 16384 to file")
    monkeypatch.setattr(io, "out_of_space", lambda path: False, raising=False)
    with pytest.raises(RuntimeError, match="a bug"), io.atomic_path(tmp_path / "x.npy"):
        raise RuntimeError("a bug, not the disk")  # other errors pass as they are


@pytest.mark.parametrize(
    "data, key, value",
    [
        ({"test_auc": float("nan")}, "test_auc", "nan"),
        ({"teacher": {"recall": [0.5, float("inf")]}}, "teacher.recall[1]", "inf"),
        ({"curve": np.array([[0.1, -np.inf]])}, "curve[0, 1]", "-inf"),
        ({"x": np.float32("nan")}, "x", "nan"),
    ],
)
def test_write_json_refuses_nan_and_infinity_naming_the_key(tmp_path, data, key, value):
    path = tmp_path / "metrics.json"
    path.write_text('{"old": 1}\n')
    with pytest.raises(ValueError) as caught:
        io.write_json(path, data)
    assert str(caught.value).startswith(f"cannot write {path}: {key} is {value}, which JSON")
    assert path.read_text() == '{"old": 1}\n' and len(list(tmp_path.iterdir())) == 1
    io.write_json(path, {"fine": 1.5, "none": None, "arr": np.arange(3.0)})  # finite: written
    assert json.loads(path.read_text()) == {"arr": [0.0, 1.0, 2.0], "fine": 1.5, "none": None}
