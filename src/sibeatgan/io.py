"""Atomic file output: a reader never sees half a file, a crash never leaves one."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock, Timeout
from numpy._core.multiarray import scalar

if TYPE_CHECKING:  # torch is imported where it is used: the CLI starts without it
    import torch

TMP_SUFFIX = ".tmp"


class UnsafeFileError(ValueError):
    """A file that cannot be loaded as plain data (loading it could run code), or is damaged."""


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would set it for a moment,
    and another thread creating a file then would get mode 0666)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: the portable way
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.
    The file gets the mode a plain `open` would give it (0666 less the umask), not mkstemp's
    0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class FolderBusyError(RuntimeError):
    """Another process holds the lock of an output folder."""


@contextmanager
def exclusive_folder(folder: Path, what: str) -> Iterator[None]:
    """Hold the lock of `folder` (a file beside it, so the folder's own content, e.g. a DVC
    output, stays as it is) for the block; if another process holds it, stop at once with its
    pid. The lock is the operating system's (flock): it goes with its process, even on kill -9."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    real = folder.resolve()  # one lock whatever path (a symlink, a relative one) names it
    lock = FileLock(real.parent / f".{real.name}.lock")
    owner = real.parent / f".{real.name}.lock.pid"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderBusyError(
            f"{folder} is in use by another {what} ({_holder(owner)}); wait for it to finish "
            "or stop it, or write to another folder"
        ) from None
    try:
        write_text(owner, f"{os.getpid()}\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _holder(owner: Path) -> str:
    """`pid N` of the lock's holder, as far as its pid file tells (it is written just after
    the lock is taken, so for a moment it may be missing or name an earlier holder)."""
    try:
        pid = int(owner.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return "pid not known yet"
    return f"pid {pid}"


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries `atomic_path` left in `folder` when its process was killed
    mid-write. Call it only while holding the folder's lock (no writer can be active)."""
    stale = [f for f in folder.glob(f".*{TMP_SUFFIX}") if f.is_file()] if folder.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def ensure_writable(*folders: str | Path) -> None:
    """Create each folder and write a probe file in it, so a read-only location stops a
    command before it does any work."""
    for folder in map(Path, folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise PermissionError(
                f"cannot write to {folder} ({err.strerror or err}); run from a writable copy of "
                "the repository, or point the outputs elsewhere (data.prepared_dir, --work)"
            ) from None


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}); it was damaged: "
            "delete it and run the step that writes it again"
        ) from None


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _cell(value: Any) -> str:
    """A CSV cell: integers whole, other numbers to 6 significant digits, text as it is."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | np.integer | bool | np.bool_):
        return str(int(value))
    return f"{float(value):.6g}"


def write_csv(path: str | Path, columns: dict[str, Sequence[Any]]) -> None:
    """Columns as a CSV file with a header row (the form `dvc plots` reads)."""
    keys = list(columns)
    rows = zip(*(columns[k] for k in keys), strict=True)
    lines = [",".join(keys)] + [",".join(_cell(v) for v in row) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def save_state_dict(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """Save tensors only, so `torch.load(path, weights_only=True)` reads it back."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values: the same weights give the same
    digest wherever they were saved (a checkpoint file's bytes carry a per-save random id)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# numpy scalars (a float64 learning rate in a schedule's state) are plain values too: they are
# rebuilt from a dtype and raw bytes, which runs no code
_NUMPY_SCALARS = [
    scalar,
    np.dtype,
    *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")),
]


def load_tensors(path: str | Path) -> Any:
    """`torch.load` restricted to tensors and plain containers (`weights_only`): a file that
    needs any other object to load is refused, never run. Names the file when it fails."""
    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALARS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeFileError(
            f"{path} holds objects other than tensors (loading it could run code), so it was "
            "not loaded; delete it and train again"
        ) from None
    except Exception as err:  # truncated, not a torch file, unreadable: torch fails many ways
        why = str(err).strip().splitlines()[0][:100] if str(err).strip() else type(err).__name__
        raise UnsafeFileError(f"{path} cannot be read ({why}); delete it and train again") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found; train that model first")
    import torch

    state = load_tensors(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeFileError(f"{path} is not a state dict of tensors; delete it and train again")
    return state


def load_npy(path: str | Path) -> np.ndarray:
    """An array saved by `save_npy`; object arrays (pickles) are refused, naming the file."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise UnsafeFileError(
            f"{path} is not a plain numeric array ({err}); run `sibeatgan preprocess` again"
        ) from None
    except Exception as err:  # empty, truncated, a zip where an array should be, unreadable
        raise UnsafeFileError(
            f"{path} cannot be read ({err or 'empty'}); run `sibeatgan preprocess` again"
        ) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
