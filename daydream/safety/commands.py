"""Teleoperation: a person stops, releases, overrides and drives a robot.

Sources (each produces the policy's action format and calls a :class:`Commands` sink):
    keyboard.py   the terminal the process runs in (termios, works over SSH, no display)
    console.py    a remote console over ZeroMQ with CURVE keys: the server lives in the
                  robot's actor process next to the SafetySupervisor, the client is
                  ``daydream teleop --robot tcp://HOST:PORT`` on the workstation

A sink is anything with the four methods below: the ``SafetySupervisor`` itself (local
keyboard), or a ``ConsoleClient`` (the keyboard of the workstation, forwarded to a robot).
"""

from __future__ import annotations

from typing import Any, Protocol


class Commands(Protocol):
    """What a person can tell a robot's safety supervisor."""

    def request_stop(self, source: str, hard: bool = False, reason: str = "") -> Any: ...

    def reset_stop(self, person: str) -> Any: ...

    def set_override(self, active: bool, action: Any = None) -> Any: ...

    def set_teleop_action(self, action: Any) -> Any: ...


__all__ = ["Commands"]
