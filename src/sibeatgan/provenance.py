"""Which code made a result: the commit a run starts from, recorded beside its figures."""

from __future__ import annotations

import os
import subprocess


def git_commit() -> str | None:
    """HEAD, with "-dirty" when tracked files other than reports/ differ from it (the run used
    uncommitted code or params). reports/ (from the repository's top, whatever the working
    folder) is left out: the study's own summaries and report change there while the grid runs,
    and each summary records the full params it trained with."""
    if os.environ.get("SIBEATGAN_COMMIT"):  # a copy of the tree without .git, on another machine
        return os.environ["SIBEATGAN_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "diff", "HEAD", "--quiet", "--", ":/", ":(top,exclude)reports"],
            capture_output=True,
        )
    except OSError:
        return None
    commit = head.stdout.strip()
    return (commit + ("-dirty" if dirty.returncode == 1 else "")) or None
