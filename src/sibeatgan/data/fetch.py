"""Put a dataset's records (MIT-BIH 1.0.0 by default) into the data folder, every file checked
against the sha256 list the dataset ships (PhysioNet's SHA256SUMS.txt)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tqdm import tqdm

from sibeatgan.config import Params, read_yaml
from sibeatgan.datasets import DEFAULT_DATASET, Dataset, dataset
from sibeatgan.io import ensure_writable


class DataError(RuntimeError):
    """Missing or corrupt dataset files."""


def expected_digests(ds: Dataset) -> dict[str, str]:
    """File name -> sha256 of every file of the dataset (MIT-BIH: 145 files); a dataset
    without a checksum list cannot be fetched."""
    digests = ds.digests()
    if not digests:
        raise DataError(
            f"dataset {ds.name} ships no checksum list, so fetch-data cannot verify it; put its "
            "records in runtime.records_dir yourself"
        )
    return digests


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_folder(
    folder: Path, ds: Dataset, names: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """(missing, corrupt) file names of `folder` against the dataset's digests."""
    digests = expected_digests(ds)
    names = names if names is not None else sorted(digests)
    missing = [n for n in names if not (folder / n).is_file()]
    corrupt = [n for n in names if n not in missing and sha256(folder / n) != digests[n]]
    return missing, corrupt


def _describe(missing: list[str], corrupt: list[str], where: Path | str) -> str:
    parts = []
    if missing:
        more = " ..." if len(missing) > 12 else ""
        parts.append(f"{len(missing)} missing ({', '.join(missing[:12])}{more})")
    if corrupt:
        parts.append(f"{len(corrupt)} corrupt, sha256 differs ({', '.join(corrupt[:12])})")
    return f"{where}: " + "; ".join(parts)


def fetch(dest: Path, source: Path | None = None, ds: Dataset | None = None) -> dict[str, int]:
    """Make `dest` hold exactly-verified copies of every file of the dataset (default MIT-BIH,
    145 files). Files already there and correct are kept; the others come from `source` (a
    folder of WFDB records) or, without one, from PhysioNet. Nothing in `dest` is replaced
    until the new copy has been verified."""
    ds = ds or dataset(DEFAULT_DATASET)
    expected = expected_digests(ds)
    dest.mkdir(parents=True, exist_ok=True)
    missing, corrupt = check_folder(dest, ds)
    needed = sorted(missing + corrupt)
    if not needed:
        return {"verified": len(expected), "copied": 0}
    ensure_writable(dest)
    if source is not None:
        if not source.is_dir():
            raise DataError(f"--from / MITDB_DIR folder {source} does not exist")
        s_missing, s_corrupt = check_folder(source, ds, needed)
        if s_missing or s_corrupt:
            raise DataError(
                f"the source folder does not hold a verified {ds.title}: "
                + _describe(s_missing, s_corrupt, source)
                + ". Point --from/MITDB_DIR at an intact copy, or leave both unset to download "
                "from PhysioNet."
            )
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        staging = Path(tmp)
        if source is not None:
            for name in tqdm(needed, desc=f"copy from {source}", unit="file"):
                shutil.copyfile(source / name, staging / name)
        else:
            _download(staging, needed, ds)
        s_missing, s_corrupt = check_folder(staging, ds, needed)
        if s_missing or s_corrupt:
            raise DataError(
                "downloaded files failed verification: "
                + _describe(s_missing, s_corrupt, "PhysioNet")
                + ". Run fetch-data again; nothing in the data folder was changed."
            )
        for name in needed:
            (staging / name).replace(dest / name)
    extra = sorted(set(p.name for p in dest.iterdir()) - set(expected))
    if extra:
        print(f"note: {dest} also holds files that are not part of {ds.title}: {extra[:10]}")
    return {"verified": len(expected), "copied": len(needed)}


def in_git_work_tree(root: Path) -> bool:
    """Whether `root` is the top of a git checkout (a copy of the tree inside some other
    repository is not: DVC would look for its files there)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
        )
    except OSError:  # no git on this machine
        return False
    top = done.stdout.strip()
    return done.returncode == 0 and bool(top) and Path(top).resolve() == root.resolve()


def commit_to_dvc(dest: Path, root: Path = Path(".")) -> str | None:
    """If a .dvc file at `root` tracks `dest`, put the verified files into DVC's cache (what
    `dvc pull` would have done), so `dvc status` reports nothing changed. Returns that file."""
    for dvcfile in sorted(f for f in root.glob("*.dvc") if f.is_file()):
        outs = (read_yaml(dvcfile) or {}).get("outs", [])
        if any((root / o.get("path", "")).resolve() == dest.resolve() for o in outs):
            from dvc.repo import Repo

            # a copy of the tree without .git (an archive, a copied folder) is still a DVC
            # project: DVC then works without git (no_scm), as `make repro` sets up there
            config = None if in_git_work_tree(root) else {"core": {"no_scm": True}}
            with Repo(str(root), config=config) as repo:
                repo.commit(dvcfile.name, force=False)  # refuses if the data differ from it
            return dvcfile.name
    return None


def _download(staging: Path, names: list[str], ds: Dataset) -> None:
    import wfdb

    if ds.physionet is None:
        raise DataError(f"dataset {ds.name} is not on PhysioNet; pass --from DIR")
    try:
        wfdb.dl_files(ds.physionet, str(staging), names, keep_subdirs=False)
    except Exception as err:  # network errors come in many types
        raise DataError(
            f"could not download {ds.title} from PhysioNet ({err}). Without internet, pass "
            "--from DIR or set MITDB_DIR to a folder holding the records."
        ) from err


def ensure_records(p: Params) -> None:
    """Fetch the records from MITDB_DIR when the data folder lacks some of them."""
    folder = Path(p.runtime.records_dir)
    if all((folder / f"{r}.hea").exists() for r in p.preprocess.records):
        return
    source = os.environ.get("MITDB_DIR")
    fetch(folder, Path(source) if source else None, dataset(p.preprocess.dataset))
