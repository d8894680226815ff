"""The code of another git revision, for a bench that compares it with this one in one run
(``--baseline REV`` of ``train_step.py`` and ``ingest.py``)."""

from __future__ import annotations

import atexit
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worktree(rev: str) -> Path:
    """A temporary git worktree of ``rev`` (removed at exit)."""
    where = Path(tempfile.mkdtemp(prefix="daydream-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
                   check=True, capture_output=True)  # fmt: skip
    atexit.register(lambda: subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
        capture_output=True))  # fmt: skip
    return where
