"""Keyboard teleoperation in the terminal the process runs in (works over SSH, no display).

A background thread reads single keys from the terminal in cbreak mode (termios/tty;
Ctrl-C still interrupts) and turns them into commands to a sink (``teleop.Commands``):

    stop key       request_stop("keyboard")       latches the safety stop
    reset key      reset_stop("keyboard")         releases it
    override key   set_override(on/off)           see ``teleop.override_mode``
    motion keys    set_teleop_action(action)      the person's action while overriding
    quit key       sets ``quit_requested``        the program stops the robot and exits

A terminal reports key presses, never releases; a key held down repeats (after the
terminal's auto-repeat delay, about 0.25-0.5 s, then some 30 times a second). So "held"
means "pressed again within ``teleop.hold_window_s`` seconds":
- motion keys are always held keys: the action is non-rest while the key repeats and
  falls back to the rest action ``hold_window`` after its last repeat;
- the override is a toggle by default (``override_mode: toggle``: one press takes over,
  the next gives control back). ``override_mode: hold`` makes it a held key instead:
  on while the key repeats, off ``hold_window`` after the last repeat.

Motion keys: continuous actions use one pair of keys per dimension (``[increase,
decrease]``) commanding ``+-teleop.delta`` times the bound; discrete actions use one
key per action index. The limits of the SafetySupervisor apply to these actions too.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

from daydream.core.spaces import Space
from daydream.safety.commands import Commands

NAMED_KEYS = {" ": "space", "\t": "tab", "\r": "enter", "\n": "enter", "\x7f": "backspace"}
ARROWS = {"A": "up", "B": "down", "C": "right", "D": "left"}
TICK = 0.02  # seconds between checks for expired held keys (the thread's read timeout)


def parse_keys(text: str) -> list[str]:
    """Split terminal input into key names: characters, 'space', 'tab', arrows, 'esc'."""
    keys: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b":
            if text[i + 1 : i + 2] in ("[", "O") and text[i + 2 : i + 3] in ARROWS:
                keys.append(ARROWS[text[i + 2]])
                i += 3
                continue
            keys.append("esc")
        else:
            keys.append(NAMED_KEYS.get(ch, ch))
        i += 1
    return keys


class KeyboardTeleop:
    """Owns the terminal keyboard: maps keys to stop, reset, override and motion commands.

    ``feed(key)`` handles one key (the reader thread calls it; tests call it directly);
    ``tick()`` expires held keys. ``start()`` puts the terminal in cbreak mode and starts
    the reader thread; ``close()`` restores the terminal (also on exceptions, when used
    as a context manager).
    """

    def __init__(
        self,
        sink: Commands,
        act_space: Space,
        config: Mapping[str, Any],
        rest: np.ndarray | None = None,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.space = act_space
        self.clock = clock
        self.stream = stream if stream is not None else sys.stdin
        b = config["bindings"]
        self.stop_key, self.reset_key = str(b["stop"]), str(b["reset"])
        self.override_key, self.quit_key = str(b["override"]), str(b["quit"])
        self.mode = str(config["override_mode"])
        if self.mode not in ("toggle", "hold"):
            raise ValueError(f"teleop.override_mode is '{self.mode}'; use toggle or hold")
        self.hold_window = float(config["hold_window_s"])
        self.delta = float(config["delta"])
        n = act_space.shape[0]
        self.motion: dict[str, tuple[int, float]] = {}  # key -> (index, sign)
        if act_space.discrete:
            keys = [str(k) for k in b["discrete"]]
            for i, k in enumerate(keys[:n]):
                self.motion[k] = (i, 1.0)
        else:
            for i, pair in enumerate(list(b["continuous"])[:n]):
                self.motion[str(pair[0])] = (i, 1.0)
                self.motion[str(pair[1])] = (i, -1.0)
        if rest is None:
            rest = np.zeros(act_space.shape, np.float32)
            if act_space.discrete:
                rest[0] = 1
        self.rest = np.asarray(rest, np.float32)
        high = 1.0 if act_space.high is None else act_space.high
        self.scale = np.broadcast_to(np.asarray(high, np.float32), act_space.shape)

        self._lock = threading.Lock()
        self._held: dict[str, float] = {}  # motion key -> time of last press
        self._override = False
        self._override_at = 0.0
        self._sent: np.ndarray | None = None
        self.quit_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._saved_term: Any = None

    # ------------------------------------------------------------------ keys
    def feed(self, key: str) -> None:
        """Handle one key press (a name from :func:`parse_keys`)."""
        now = self.clock()
        if key == self.stop_key:
            self.sink.request_stop("keyboard")
        elif key == self.reset_key:
            self.sink.reset_stop("keyboard")
        elif key == self.quit_key:
            self.quit_requested.set()
        elif key == self.override_key:
            with self._lock:
                if self.mode == "toggle":
                    self._override = not self._override
                else:
                    self._override_at = now
                    if self._override:
                        return
                    self._override = True
                active = self._override
            self.sink.set_override(active)
            self._push_action(force=True)
        elif key in self.motion:
            with self._lock:
                self._held[key] = now
            self._push_action()

    def tick(self) -> None:
        """Expire held keys whose repeats stopped (motion keys; the override in hold mode)."""
        now = self.clock()
        release = False
        with self._lock:
            for k, t in list(self._held.items()):
                if now - t > self.hold_window:
                    del self._held[k]
            expired = now - self._override_at > self.hold_window
            if self.mode == "hold" and self._override and expired:
                self._override = False
                release = True
        if release:
            self.sink.set_override(False)
        self._push_action()

    def action(self) -> np.ndarray:
        """The person's current action: from held motion keys, else the rest action."""
        with self._lock:
            held = list(self._held)
        if not held:
            return self.rest.copy()
        if self.space.discrete:
            out = np.zeros(self.space.shape, np.float32)
            out[self.motion[held[-1]][0]] = 1  # the most recently pressed key wins
            return out
        out = self.rest.copy()
        for k in held:
            i, sign = self.motion[k]
            out[i] = sign * self.delta * self.scale[i]
        return out

    @property
    def overriding(self) -> bool:
        return self._override

    def _push_action(self, force: bool = False) -> None:
        action = self.action()
        if force or self._sent is None or not np.array_equal(action, self._sent):
            self._sent = action
            self.sink.set_teleop_action(action)

    def help_text(self) -> str:
        """One line naming the keys, for the status display."""
        motion = " ".join(self.motion)
        mode = "toggles" if self.mode == "toggle" else "hold"
        return (
            f"[{self.stop_key}] stop  [{self.reset_key}] reset stop  "
            f"[{self.override_key}] override ({mode})  [{motion}] move  [{self.quit_key}] quit"
        )

    # ------------------------------------------------------------------ terminal thread
    def start(self) -> KeyboardTeleop:
        """Put the terminal in cbreak mode and read keys in a background thread."""
        import termios
        import tty

        if not self.stream.isatty():
            raise RuntimeError(
                "keyboard teleop needs a terminal (stdin is not a TTY); run it in a terminal "
                "or over `ssh -t`, or use the remote console (`daydream teleop`)"
            )
        fd = self.stream.fileno()
        self._saved_term = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._closing.clear()
        self._thread = threading.Thread(target=self._read, args=(fd,), daemon=True,
                                        name="daydream-keyboard")
        self._thread.start()
        return self

    def _read(self, fd: int) -> None:
        while not self._closing.is_set():
            ready, _, _ = select.select([fd], [], [], TICK)
            if ready:
                data = os.read(fd, 64)
                if not data:
                    return
                for key in parse_keys(data.decode(errors="ignore")):
                    self.feed(key)
            self.tick()

    def close(self) -> None:
        """Stop the reader thread and restore the terminal."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._saved_term is not None:
            import termios

            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved_term)
            self._saved_term = None

    def __enter__(self) -> KeyboardTeleop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
