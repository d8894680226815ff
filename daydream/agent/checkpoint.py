"""Checkpoints: agent, optimisers, counters, config and spaces in one file, never a bad one.

Written to a temporary file in the same directory, flushed to disk, then renamed
over the old one, so a crash leaves either the previous or the new checkpoint,
never a torn one. Loaded with ``weights_only=True``: a checkpoint holds tensors,
numbers and strings only, and loading one never runs code.

What a learner may rely on::

    LOGDIR/checkpoint.pt        the newest checkpoint
    LOGDIR/checkpoint.prev.pt   the one it replaced (a hard link made before the rename)

- ``save`` refuses a payload whose floating tensors are not all finite (``NonFiniteError``):
  the files on disk stay as they were.
- ``load_for_resume`` loads checkpoint.pt; if it cannot be read (a truncated file: torch's
  "failed finding central directory") or holds non-finite tensors, it falls back to
  checkpoint.prev.pt with a message naming both files and moves the bad one aside
  (``checkpoint.pt.corrupt``, kept for a person); if neither loads, ``CheckpointError``
  names them (``daydream learner`` exits with ``EXIT_CHECKPOINT``; its unit does not restart).

``Snapshot`` is the in-memory counterpart: a copy of every tensor of the agent (parameters,
buffers, optimiser moments) and its counters, taken before an update and restored if the
update went non-finite, so that one bad update leaves no trace (see runtime/learner.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from daydream.core.config import from_dict, to_dict
from daydream.core.files import atomic_write, fsync_directory, temporary_name
from daydream.core.spaces import spaces_from_dict, spaces_to_dict

FILENAME = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
CORRUPT_SUFFIX = ".corrupt"


class CheckpointError(ValueError):
    """No checkpoint that can be resumed from (every candidate unreadable or non-finite)."""


class NonFiniteError(ValueError):
    """A payload whose floating tensors hold NaN or infinite values (never written)."""


def _file(path: str | Path) -> Path:
    path = Path(path)
    return path / FILENAME if path.is_dir() or not path.suffix else path


def previous_of(path: str | Path) -> Path:
    """Where ``save`` keeps the checkpoint that ``path`` replaced (checkpoint.prev.pt)."""
    path = _file(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def nonfinite(payload, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating tensors and floats in ``payload`` (nested dicts,
    lists, tuples) that hold NaN or infinite values; [] if all are finite."""
    if isinstance(payload, torch.Tensor):
        finite = not payload.is_floating_point() or bool(torch.isfinite(payload).all())
        return [] if finite else [prefix or "tensor"]
    if isinstance(payload, float):
        return [] if math.isfinite(payload) else [prefix or "value"]
    if isinstance(payload, dict):
        items = payload.items()
    elif isinstance(payload, (list, tuple)):
        items = enumerate(payload)
    else:
        return []
    bad: list[str] = []
    for key, value in items:
        bad += nonfinite(value, f"{prefix}.{key}" if prefix else str(key))
    return bad


def save(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` atomically to ``path`` (a file, or a directory holding checkpoint.pt),
    keeping the file it replaces as checkpoint.prev.pt. Raises NonFiniteError (and writes
    nothing) when a tensor of the payload is not finite."""
    path = _file(path)
    bad = nonfinite(payload)
    if bad:
        raise NonFiniteError(
            f"not writing {path}: {len(bad)} tensors hold NaN or infinite values "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the last good "
            f"checkpoint is kept"
        )
    if path.is_file():
        _keep_previous(path)
    return atomic_write(path, lambda f: torch.save(payload, f))


def _keep_previous(path: Path) -> None:
    """checkpoint.prev.pt becomes what checkpoint.pt is now (checkpoint.pt stays in place)."""
    previous, link = previous_of(path), temporary_name(previous_of(path))
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # a filesystem without hard links: copy
        atomic_write(previous, path.read_bytes())
        return
    os.replace(link, previous)
    fsync_directory(path.parent)


def find(path: str | Path) -> Path | None:
    """The checkpoint file at ``path`` (a file or a logdir), or None when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    return path if path.is_file() else None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The payload at ``path`` (a file or a logdir); CheckpointError names the file when it
    cannot be read."""
    found = find(path)
    if found is None:
        raise FileNotFoundError(
            f"no checkpoint at {path} (expected a file or a logdir with {FILENAME})"
        )
    try:
        return torch.load(found, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, pickle errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{found} cannot be read ({first[:160]})") from None


# Config blocks that must match between a checkpoint and the run resuming it.
MODEL_BLOCKS = ("algo", "model", "behavior")


def _load_checked(path: Path) -> dict:
    payload = load(path)
    bad = nonfinite(payload.get("agent", {}))
    if bad:
        raise CheckpointError(
            f"{path} holds {len(bad)} non-finite tensors ({', '.join(bad[:2])}, ...)"
        )
    return payload


def load_for_resume(logdir: str | Path, config) -> tuple[dict, Path] | None:
    """(payload, file) of the newest checkpoint in ``logdir`` that loads and is finite, after
    checking it was trained with the same model settings as ``config`` (ValueError naming the
    block that differs); None when there is none. Falls back from checkpoint.pt to
    checkpoint.prev.pt with a printed message; CheckpointError if neither loads."""
    logdir = Path(logdir)
    newest, previous = logdir / FILENAME, logdir / PREVIOUS
    candidates = [p for p in (newest, previous) if p.is_file()]
    if not candidates:
        return None
    errors: list[str] = []
    for path in candidates:
        try:
            payload = _load_checked(path)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        saved, current = payload["config"], to_dict(config)
        for block in MODEL_BLOCKS:
            if saved[block] != current[block]:
                raise ValueError(
                    f"{path} is a checkpoint trained with a different '{block}' config; "
                    f"resume with the same settings or choose a new --logdir"
                )
        if errors:  # checkpoint.pt is bad, checkpoint.prev.pt is good
            aside = newest.with_name(newest.name + CORRUPT_SUFFIX)
            os.replace(newest, aside)
            print(
                f"checkpoint: {errors[0]}; falling back to {path} (the previous checkpoint; "
                f"the unreadable one is kept as {aside})",
                flush=True,
            )
        return payload, path
    hint = "move it aside to start afresh from the replay, or restore it from a backup"
    raise CheckpointError(f"{'; '.join(errors)}; no checkpoint to resume from ({hint})")


def agent_payload(agent, **extra) -> dict:
    """Everything needed to rebuild and resume ``agent``."""
    return {
        "agent": agent.state_dict(),
        "config": to_dict(agent.config),
        "obs_space": spaces_to_dict(agent.obs_space),
        "act_space": spaces_to_dict(agent.act_space),
        **extra,
    }


def load_agent(path: str | Path, device: str | None = None):
    """Rebuild the Agent stored at ``path`` (file or logdir). Returns (agent, config)."""
    from daydream.agent.agent import Agent

    payload = load(path)
    config = from_dict(payload["config"])
    agent = Agent(
        spaces_from_dict(payload["obs_space"]),
        spaces_from_dict(payload["act_space"]),
        config,
        device=device,
    )
    agent.load_state_dict(payload["agent"])
    return agent, config


# ---------------------------------------------------------------- in memory


def _tensors(state, out: list) -> object:
    """The skeleton of a nested state dict with each tensor replaced by its index in ``out``."""
    if isinstance(state, torch.Tensor):
        out.append(state)
        return _Slot(len(out) - 1)
    if isinstance(state, dict):
        return {k: _tensors(v, out) for k, v in state.items()}
    if isinstance(state, list):
        return [_tensors(v, out) for v in state]
    return state


class _Slot(int):
    """Marks where a tensor sat in a state skeleton."""


def _fill(skeleton, tensors: list):
    if isinstance(skeleton, _Slot):
        return tensors[skeleton]
    if isinstance(skeleton, dict):
        return {k: _fill(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_fill(v, tensors) for v in skeleton]
    return skeleton


class Snapshot:
    """Owns a copy of an agent's whole state (every tensor of ``agent.state_dict()`` on its
    device, and the counters), to undo an update.

    ``take()`` copies the live tensors into buffers allocated once (``torch._foreach_copy_``:
    one pass over parameters and optimiser moments, no allocation while their shapes stay
    the same; the optimisers create their moments at the first update); ``restore()`` loads
    the copy back with ``agent.load_state_dict`` (module and optimiser loads copy it, so the
    buffers stay the snapshot's own).
    """

    def __init__(self, agent) -> None:
        self.agent = agent
        self._skeleton: object = None
        self._saved: list[torch.Tensor] = []
        self._layout: list[tuple] = []  # (shape, dtype, device) of each saved tensor
        self.taken = 0

    def take(self) -> None:
        live: list[torch.Tensor] = []
        skeleton = _tensors(self.agent.state_dict(), live)
        layout = [(t.shape, t.dtype, t.device) for t in live]
        with torch.no_grad():
            if layout == self._layout:
                torch._foreach_copy_(self._saved, live)
            else:  # first time, or the optimisers created their moments: allocate again
                self._saved = [t.detach().clone() for t in live]
                self._layout = layout
        self._skeleton = skeleton
        self.taken += 1

    def restore(self) -> None:
        if self._skeleton is None:
            raise RuntimeError("Snapshot.restore() before take()")
        self.agent.load_state_dict(_fill(self._skeleton, self._saved))
