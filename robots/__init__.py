"""Robot drivers, real and simulated, behind one contract (robots/base.py).

``make(name, config)`` builds a robot from the full daydream config; each driver reads
its own block (``config.gym``, ``config.ur5``, ...). ``spaces(name, config)`` gives its
observation and action spaces from the config alone, without building it (no MuJoCo
model, no pty, no connection). Drivers are imported lazily so that a robot computer
needs only the packages of its own robot.
"""

from __future__ import annotations

import importlib
from typing import Any

from daydream.core.spaces import Space
from robots.base import Robot

# name -> ("module:factory", "module:spaces"); the factory takes the full config and returns
# a Robot, the spaces function takes the full config and returns (obs_space, act_space).
REGISTRY: dict[str, tuple[str, str]] = {
    "gym": ("robots.gym:make_gym_robot", "robots.gym:gym_spaces"),
    "ur5": ("robots.ur5:make_ur5", "robots.ur5:ur5_spaces"),
    "sim_ur5": ("robots.sim.sim_ur5:make_sim_ur5", "robots.ur5:ur5_spaces"),
    "quadruped": ("robots.quadruped:make_quadruped", "robots.quadruped:quadruped_spaces"),
    "sim_quadruped": (
        "robots.sim.sim_quadruped:make_sim_quadruped",
        "robots.quadruped:quadruped_spaces",
    ),
}


def register(name: str, make: str, spaces: str) -> None:
    """Register a robot as ``"package.module:factory"`` and ``"package.module:spaces"``."""
    REGISTRY[name] = (make, spaces)


def _target(name: str, which: int):
    if name not in REGISTRY:
        raise KeyError(f"unknown robot '{name}'; known: {', '.join(sorted(REGISTRY))}")
    module, func = REGISTRY[name][which].split(":")
    return getattr(importlib.import_module(module), func)


def make(name: str, config: Any, **kwargs: Any) -> Robot:
    """Build (but do not connect) the robot ``name`` from ``config``."""
    return _target(name, 0)(config, **kwargs)


def spaces(name: str, config: Any) -> tuple[dict[str, Space], dict[str, Space]]:
    """The observation and action spaces of robot ``name`` under ``config``, without building it."""
    obs_space, act_space = _target(name, 1)(config)
    return dict(obs_space), dict(act_space)


__all__ = ["Robot", "Space", "make", "spaces", "register", "REGISTRY"]
