"""The robot contract every driver implements, real or simulated.

A robot declares its observation and action spaces before it connects (and
``robots.spaces(name, config)`` gives them from the config alone, without building
the robot), so that the agent can be built and a checkpoint checked without hardware.
Observations and actions are flat dicts of numpy arrays (``daydream.core.spaces``).

The command path, in the order the safety supervisor calls it::

    limit_command(action) -> (limited, notes)   the robot's own limits: workspace box, joint
                                                limits, per-tick motion; clamps or raises
                                                LimitViolation to refuse
    step(limited)         -> observation        executes exactly what it is given (a command
                                                outside the limits is a fault, never clamped)

so the action the supervisor returns, the replay stores and the model consumes is the
one the robot really executed. What an action means (the reward, the episode) is the
task's (``robots.tasks``); the driver owns the hardware.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator

import numpy as np

from daydream.core.spaces import Space


class RobotFault(RuntimeError):
    """The robot cannot go on safely: the safety supervisor latches its stop on this."""


class ProtectiveStop(RobotFault):
    """The controller entered a protective or emergency stop."""


class ConnectionLost(RobotFault):
    """The link to the controller or board is gone, or its state stopped updating."""


class SensorFault(RobotFault):
    """A sensor reported a value that cannot be true (NaN or infinity): nothing may act on it."""


class LimitViolation(ValueError):
    """A command the robot refuses outright (for example a target outside its joint limits).

    Raised by :meth:`Robot.limit_command`; the safety supervisor does not execute the
    command, counts and logs the refusal, and holds the previous command instead.
    """


class Robot(abc.ABC):
    """A robot (or simulated robot): its spaces, its connection, its limits, and how it stops.

    Subclasses own their hardware connection. Usable as a context manager:
    ``with make(...) as robot: obs = robot.reset()``.
    """

    #: observation spaces, including the step keys (reward, is_first, ...)
    obs_space: dict[str, Space]
    #: action spaces: {"action": Space}
    act_space: dict[str, Space]
    #: seconds per control tick (the rate the driver expects to be stepped at)
    control_period: float = 0.0
    #: a simulation (nothing physical moves): only such a robot may be paused between ticks
    #: (single-process training, a simulated robot holding the training ratio)
    simulated: bool = False

    @abc.abstractmethod
    def connect(self) -> None:
        """Open connections to the hardware or simulation."""

    @abc.abstractmethod
    def reset(self) -> dict[str, np.ndarray]:
        """Start an episode and return its first observation (is_first=True)."""

    @abc.abstractmethod
    def step(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute exactly ``action`` (already passed through :meth:`limit_command`) and
        return the next observation. A command outside the robot's limits raises RobotFault."""

    @abc.abstractmethod
    def stop(self, hard: bool = False) -> None:
        """Bring the robot to a safe stop. Idempotent and callable from any thread."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Stop safely and close connections."""

    def limit_command(
        self, action: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """Apply this robot's own limits (workspace box, joint limits, tool speed) to a command.

        Called by the safety supervisor after its generic limits (action bounds, per-step
        change) and right before :meth:`step`. Returns the action to execute, expressed in
        the action space (so that it can be stored and fed to the model), and
        human-readable notes on what was changed (empty when nothing was). Raise
        :class:`LimitViolation` to refuse the command. The default passes it through.
        """
        return action, []

    def episode_info(self) -> dict[str, float]:
        """Figures of the episode since the last :meth:`reset`, beside its return (the task's:
        reach ``final_distance``, pick_place ``placements``, walk ``forward_velocity``), for
        the runtime to log with the return. The default has none."""
        return {}

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Simulated robots only: inside this block no time passes for the robot (its
        controller watchdog and board timeout are suspended), so the caller may think as
        long as it needs between two ticks. A real robot refuses: it never waits."""
        if not self.simulated:
            raise RuntimeError(
                f"{type(self).__name__} is a real robot: it cannot be paused between ticks "
                "(run the learner beside it: daydream run, or daydream learner + daydream actor)"
            )
        self._pause()
        try:
            yield
        finally:
            self._resume()

    def _pause(self) -> None:  # noqa: B027 - a hook: most simulations have nothing to pause
        """Suspend the simulation's watchdogs (simulated drivers override this)."""

    def _resume(self) -> None:  # noqa: B027
        """Let the simulation's watchdogs count again, from now."""

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()
