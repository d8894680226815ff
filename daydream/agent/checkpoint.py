"""Atomic checkpoints: agent, optimisers, counters, config and spaces in one file.

Written to a temporary file in the same directory, flushed to disk, then renamed
over the old one, so a crash leaves either the previous or the new checkpoint,
never a torn one. Loaded with ``weights_only=True``: a checkpoint holds tensors,
numbers and strings only, and loading one never runs code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from daydream.core.config import from_dict, to_dict
from daydream.core.files import atomic_write
from daydream.core.spaces import spaces_from_dict, spaces_to_dict

FILENAME = "checkpoint.pt"


def save(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` atomically to ``path`` (a file, or a directory holding checkpoint.pt)."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / FILENAME
    return atomic_write(path, lambda f: torch.save(payload, f))


def find(path: str | Path) -> Path | None:
    """The checkpoint file at ``path`` (a file or a logdir), or None when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    return path if path.is_file() else None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    found = find(path)
    if found is None:
        raise FileNotFoundError(
            f"no checkpoint at {path} (expected a file or a logdir with {FILENAME})"
        )
    return torch.load(found, map_location=map_location, weights_only=True)


# Config blocks that must match between a checkpoint and the run resuming it.
MODEL_BLOCKS = ("algo", "model", "behavior")


def load_for_resume(logdir: str | Path, config) -> dict | None:
    """The checkpoint in ``logdir`` if there is one, after checking it was trained with the
    same model settings as ``config``; raises ValueError naming the block that differs."""
    if find(logdir) is None:
        return None
    payload = load(logdir)
    saved, current = payload["config"], to_dict(config)
    for block in MODEL_BLOCKS:
        if saved[block] != current[block]:
            raise ValueError(
                f"{logdir} holds a checkpoint trained with a different '{block}' config; "
                f"resume with the same settings or choose a new --logdir"
            )
    return payload


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
