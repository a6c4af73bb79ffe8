import pytest
import torch

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
