"""Robot drivers, real and simulated, behind one interface (robots/base.py).

``make(name, config)`` builds a robot from the full daydream config; each driver
reads its own block (``config.gym``, ``config.ur5``, ...). Drivers are imported
lazily so that a robot computer needs only the packages of its own robot.
"""

from __future__ import annotations

import importlib
from typing import Any

from robots.base import Robot, Space

# name -> "module:factory"; the factory takes the full config and returns a Robot.
REGISTRY: dict[str, str] = {
    "gym": "robots.gym:make_gym_robot",
    "ur5": "robots.ur5:make_ur5",
    "sim_ur5": "robots.sim.sim_ur5:make_sim_ur5",
    "quadruped": "robots.quadruped:make_quadruped",
    "sim_quadruped": "robots.sim.sim_quadruped:make_sim_quadruped",
}


def register(name: str, target: str) -> None:
    """Register a robot factory as ``"package.module:function"``."""
    REGISTRY[name] = target


def make(name: str, config: Any, **kwargs: Any) -> Robot:
    """Build (but do not connect) the robot ``name`` from ``config``."""
    if name not in REGISTRY:
        raise KeyError(f"unknown robot '{name}'; known: {', '.join(sorted(REGISTRY))}")
    module, func = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), func)(config, **kwargs)


__all__ = ["Robot", "Space", "make", "register", "REGISTRY"]
