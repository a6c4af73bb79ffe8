import pytest
import torch

from sibeatgan.io import atomic_path, load_state_dict, save_state_dict


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
