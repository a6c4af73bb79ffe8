"""A full disk, a read-only one and a full MLflow store, simulated without filling the real disk.

`fill_disk` makes the files created under one folder fail as on a full disk: every atomic
write of the project and every artifact MLflow's local store copies starts with
`tempfile.mkstemp` in the target's folder, so that temporary becomes a link to /dev/full (where
each write fails with ENOSPC), and the real writers (numpy, torch, matplotlib, MLflow) meet
the error their own way. EDQUOT and EROFS fail at the file's creation. `full_store` makes an
SQLite store answer its writes with SQLite's own "database or disk is full"."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from sibeatgan import io

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full here")
MESSAGES = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}
MESSAGES[errno.EROFS] = "Read-only file system"


def _under(path: str | Path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(folder)


def fill_disk(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int = errno.ENOSPC) -> None:
    """From now on the disk under `folder` is full (ENOSPC), over quota (EDQUOT) or read-only
    (EROFS), and reads as having no free space."""
    folder = Path(os.path.abspath(folder))
    real_mkstemp, real_chmod, real_utime = tempfile.mkstemp, os.chmod, os.utime
    real_free = getattr(io, "out_of_space", lambda path: False)

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        if dir is None or not _under(dir, folder):
            return real_mkstemp(suffix, prefix, dir, text)
        if code != errno.ENOSPC:
            raise OSError(code, MESSAGES[code], str(Path(dir) / f"{prefix or 'tmp'}"))
        fd, name = real_mkstemp(suffix, prefix, dir, text)
        os.close(fd)
        os.unlink(name)
        os.symlink(DEV_FULL, name)
        return os.open(DEV_FULL, os.O_RDWR), name

    def guarded(real):
        def call(path, *args, **kwargs):  # never change /dev/full itself (a write that passed)
            if isinstance(path, str | os.PathLike) and os.path.realpath(path) == str(DEV_FULL):
                raise OSError(errno.ENOSPC, MESSAGES[errno.ENOSPC], str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "chmod", guarded(real_chmod))
    monkeypatch.setattr(os, "utime", guarded(real_utime))
    monkeypatch.setattr(
        io, "out_of_space", lambda p: _under(p, folder) or real_free(p), raising=False
    )


@contextmanager
def full_store() -> Iterator[dict]:
    """Inside the block, once `state["on"]` is set, every write to an SQLite database fails
    with SQLite's SQLITE_FULL error, raised where SQLAlchemy executes it (so SQLAlchemy and
    MLflow wrap it as they do a real one)."""
    state = {"on": False}

    def refuse(conn, cursor, statement, parameters, context, executemany):
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
        if state["on"] and verb in {"INSERT", "UPDATE", "DELETE", "REPLACE"}:
            raise sqlite3.OperationalError("database or disk is full")

    event.listen(Engine, "before_cursor_execute", refuse)
    try:
        yield state
    finally:
        event.remove(Engine, "before_cursor_execute", refuse)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
