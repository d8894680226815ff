"""The code of another git revision, for a bench that compares it with this one in one run
(``--baseline REV`` of ``train_step.py`` and ``ingest.py``)."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worktree(rev: str) -> Path:
    """A temporary git worktree of ``rev`` (removed at exit)."""
    where = Path(tempfile.mkdtemp(prefix="daydream-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
                   check=True, capture_output=True)  # fmt: skip

    def remove() -> None:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(where.parent, ignore_errors=True)

    atexit.register(remove)
    return where
