import hashlib
import os

import pytest
from conftest import mitdb_dir

from sibeatgan.data import fetch as fetch_mod
from sibeatgan.data.fetch import DataError, expected_digests, fetch
from sibeatgan.datasets import dataset


def test_digest_list_is_physionets():
    d = expected_digests(dataset("mitdb"))
    assert len(d) == 145
    assert {f"{r}.{ext}" for r in ("100", "234") for ext in ("hea", "dat", "atr")} <= set(d)
    assert "RECORDS" in d


@pytest.fixture
def fake_db(tmp_path, monkeypatch):
    """A three-file stand-in for the digest list, so the tests need no MIT-BIH."""
    src = tmp_path / "src"
    src.mkdir()
    files = {"100.hea": b"header\r\n", "100.dat": b"\x00\x01" * 50, "RECORDS": b"100\n"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    digests = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    monkeypatch.setattr(fetch_mod, "expected_digests", lambda ds: digests)
    return src


def test_copies_and_verifies(fake_db, tmp_path):
    dest = tmp_path / "data" / "mitdb"
    assert fetch(dest, fake_db) == {"verified": 3, "copied": 3}
    assert (dest / "100.dat").read_bytes() == (fake_db / "100.dat").read_bytes()
    assert fetch(dest, fake_db)["copied"] == 0, "intact files are kept"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["mitdb"], "no staging left behind"


def test_missing_file_is_named(fake_db, tmp_path):
    (fake_db / "100.dat").unlink()
    with pytest.raises(DataError, match=r"1 missing \(100\.dat\)"):
        fetch(tmp_path / "dest", fake_db)


def test_corrupt_file_is_named_and_nothing_is_replaced(fake_db, tmp_path):
    dest = tmp_path / "dest"
    fetch(dest, fake_db)
    (dest / "100.hea").write_bytes(b"damaged")  # a damaged copy in the data folder
    (fake_db / "100.hea").write_bytes(b"also bad")  # and a bad source
    with pytest.raises(DataError, match=r"corrupt.*100\.hea"):
        fetch(dest, fake_db)
    assert (dest / "100.hea").read_bytes() == b"damaged", "destroy nothing on failure"


def test_damaged_file_is_repaired_from_a_good_source(fake_db, tmp_path):
    dest = tmp_path / "dest"
    fetch(dest, fake_db)
    (dest / "RECORDS").write_bytes(b"wrong")
    assert fetch(dest, fake_db)["copied"] == 1
    assert (dest / "RECORDS").read_bytes() == b"100\n"


def test_source_folder_that_does_not_exist(fake_db, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        fetch(tmp_path / "dest", tmp_path / "nowhere")


@pytest.mark.integration
@pytest.mark.skipif(mitdb_dir() is None, reason="MITDB_DIR is not set")
def test_real_mitdb_verifies(tmp_path):
    dest = tmp_path / "mitdb"
    result = fetch(dest, mitdb_dir())
    assert result == {"verified": 145, "copied": 145}
    assert len(os.listdir(dest)) == 145
