"""Atomic file output: a reader never sees half a file, a crash never leaves one."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import pickle
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy._core.multiarray import scalar

if TYPE_CHECKING:  # torch is imported where it is used: the CLI starts without it
    import torch

TMP_SUFFIX = ".tmp"


class UnsafeFileError(ValueError):
    """A file that cannot be loaded as plain data (loading it could run code), or is damaged."""


class OutputError(OSError):
    """An output that could not be written (a full disk, a quota, a read-only file system).
    Its message is one line naming the file and the fix; `errno` says which failure it was."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code


class StoreError(RuntimeError):
    """The MLflow tracking store failed (unreachable, damaged, full): one line naming its URI.
    Defined here, not in `tracking`, so the CLI names it without importing MLflow."""


# a full disk as the operating system says it, with the fix for each
NO_SPACE = {
    errno.ENOSPC: ("no space left on the device", "free space there"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota"),
    errno.EROFS: ("read-only file system", "run from a writable copy of the repository"),
}
LOW_SPACE_BYTES = 1 << 20  # less than this left: a write that failed without an errno ran out


def _existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def out_of_space(path: str | Path) -> bool:
    """Whether the file system holding `path` has (almost) no space left for this user."""
    try:
        st = os.statvfs(_existing(Path(path).absolute()))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE_BYTES


def output_error(where: str | Path, err: BaseException) -> OutputError | None:
    """`err`, raised while writing `where`, as one line naming it; None when `err` is not a
    write that failed. Some writers lose the errno (numpy: "problem writing element", torch:
    "unexpected pos"): those count as a full disk when the disk is out of space."""
    code = getattr(err, "errno", None)
    if code not in NO_SPACE and isinstance(err, OSError | RuntimeError) and out_of_space(where):
        code = errno.ENOSPC
    if code in NO_SPACE:
        why, fix = NO_SPACE[code]
        return OutputError(
            f"cannot write {where}: {why}; {fix} (or point the outputs elsewhere) and run again",
            code,
        )
    if isinstance(err, OSError) and code is None:  # a writer's own message, e.g. numpy's
        return OutputError(f"cannot write {where} ({first_line(err)}); check that disk")
    return None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
    0600. A full disk (or quota, or read-only file system) is an OutputError naming `path`;
    the file that was there stays as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        failure = None if isinstance(err, OutputError) else output_error(path, err)
        if failure is None:
            raise
        raise failure from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


class FolderBusyError(RuntimeError):
    """Another process holds the lock of a folder."""


@contextmanager
def exclusive_folder(folder: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold the lock of `folder` (a file beside it, so the folder's own content, e.g. a DVC
    output, stays as it is) for the block, alone: for a process that writes the folder. If
    another process holds it (to write, or to read: `shared_folder`), stop at once naming its
    pid, or with `wait` wait for it. The lock is the operating system's (flock): it goes with
    its process, even on kill -9."""
    with _folder_lock(folder, what, fcntl.LOCK_EX, wait):
        yield


@contextmanager
def shared_folder(folder: Path, what: str) -> Iterator[None]:
    """Hold the lock of `folder` for the block together with other readers: for a process that
    reads the folder (a training reading the prepared data), so that no writer
    (`exclusive_folder`) replaces it meanwhile. A writer holding it stops this at once, naming
    its pid."""
    with _folder_lock(folder, what, fcntl.LOCK_SH, wait=False):
        yield


@contextmanager
def _folder_lock(folder: Path, what: str, mode: int, wait: bool) -> Iterator[None]:
    folder.parent.mkdir(parents=True, exist_ok=True)
    real = folder.resolve()  # one lock whatever path (a symlink, a relative one) names it
    lock = real.parent / f".{real.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, mode | (0 if wait else fcntl.LOCK_NB))
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise FolderBusyError(
                f"{folder} is in use by {_holders(lock, what)}; wait for it to finish or stop "
                "it, or use another folder"
            ) from None
        _remove_dead_holders(lock)
        shared = mode == fcntl.LOCK_SH
        owner = lock.with_name(f"{lock.name}.{os.getpid()}.pid" if shared else f"{lock.name}.pid")
        write_text(owner, f"{os.getpid()} {what}\n")
        try:
            yield
        finally:
            owner.unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the lock


def _holder_files(lock: Path) -> list[Path]:
    """The pid files of a lock: the writer's (`.x.lock.pid`), and one per reader."""
    return sorted(lock.parent.glob(f"{lock.name}*.pid"))


def _read_holder(owner: Path) -> tuple[int, str] | None:
    """(pid, what) from a holder's pid file, when that process is alive."""
    try:
        pid_text, _, what = owner.read_text().strip().partition(" ")
        pid = int(pid_text)
        os.kill(pid, 0)
    except PermissionError:  # another user's process: alive
        return int(pid_text), what
    except (OSError, ValueError):
        return None
    return pid, what


def _holders(lock: Path, what: str) -> str:
    """`another teacher training (pid N)` (the same kind of process as `what`), `preprocess
    (pid N)` (another kind), as far as the pid files tell: they are written just after the lock
    is taken, so for a moment they may be missing."""
    found = [h for h in map(_read_holder, _holder_files(lock)) if h is not None]
    if not found:
        return f"another process ({what}?, pid not known yet)"
    pid, kind = found[0]
    kind = kind or what  # a pid file without its kind (written by an earlier version)
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    return f"{'another ' if kind == what else ''}{kind} (pid {pid}){more}"


def _remove_dead_holders(lock: Path) -> None:
    """Remove the pid files of readers killed while holding the lock (kill -9)."""
    for owner in _holder_files(lock):
        if owner.name != f"{lock.name}.pid" and _read_holder(owner) is None:
            owner.unlink(missing_ok=True)


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
                "the repository, or point the outputs elsewhere (runtime.*_dir, --work)"
            ) from None


def write_json(path: str | Path, data: Any) -> None:
    """`data` as JSON. NaN and infinity are refused, naming the key: JSON has no such values
    (Python would write `NaN`, which other readers reject)."""
    bad = _non_finite(data)
    if bad is not None:
        key, value = bad
        raise ValueError(
            f"cannot write {path}: {key} is {value}, which JSON cannot hold; nothing was "
            "written (a NaN comes from a diverged training or a figure without data: find why)"
        )
    try:
        text = json.dumps(data, indent=2, sort_keys=True, default=_jsonable, allow_nan=False)
    except ValueError as err:  # a non-finite value the walk could not see
        raise ValueError(f"cannot write {path}: {first_line(err)}; nothing was written") from None
    write_text(path, text + "\n")


def _non_finite(data: Any, key: str = "") -> tuple[str, float] | None:
    """The first (key, value) in `data` whose value is NaN or infinite, keys as `a.b[2]`."""
    if isinstance(data, dict):
        for k in sorted(data, key=str):
            found = _non_finite(data[k], f"{key}.{k}" if key else str(k))
            if found:
                return found
    elif isinstance(data, np.ndarray) and data.dtype.kind in "fc":
        bad = np.argwhere(~np.isfinite(data))
        if len(bad):
            index = tuple(int(i) for i in bad[0])
            return f"{key}{list(index)}", data[index].item()
    elif isinstance(data, list | tuple | np.ndarray):
        for i, item in enumerate(data):
            found = _non_finite(item, f"{key}[{i}]")
            if found:
                return found
    elif isinstance(data, float | np.floating) and not math.isfinite(data):
        return key or "the value", float(data)
    return None


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

    # through a Python file, so that a full disk is an OSError with its errno (torch's own
    # writer turns it into a RuntimeError without one)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, f)


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
