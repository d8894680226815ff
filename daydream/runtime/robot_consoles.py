"""The fleet console's end of every robot's safety console: stop, reset and status over CURVE.

A stop from the web page travels the path of ``daydream teleop``: a ``ConsoleClient``
(ZeroMQ DEALER, CURVE with the workstation's key pair, ``teleop.client_key``) to the robot's
``ConsoleServer`` in its actor process, which latches the SafetySupervisor's stop from its
own thread, without waiting for the control loop. The robot's console endpoint and key come
from its heartbeats (``daydream/wire/fleet.py``: the key is the one it connected to the
gateway with).

A background thread asks every robot's console (of those heard from lately) for its status
every ``poll_every_s``: the page learns whether the stop button would reach the robot before
anyone needs it, and the connections are warm (the CURVE handshake done) when a stop is
pressed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq

from daydream.safety.console import ConsoleClient

FLEET_PERSON = "fleet console"  # a stop from the page is by "console:gateway (fleet console)"
MAX_PARALLEL = 16  # consoles asked at once by "stop all"


class RobotConsoles:
    """Owns one ConsoleClient per robot (rebuilt when its endpoint or key changes), the newest
    answer of each robot's console, and the thread that keeps asking for it."""

    def __init__(
        self,
        client_secret_file: str | Path,
        timeout: float,
        poll_every_s: float,
        robots: Callable[[], list[dict]],
        stale_after_s: float = 5.0,
    ) -> None:
        self.client_secret_file = Path(client_secret_file)
        self.timeout = float(timeout)
        self.poll_every_s = float(poll_every_s)
        self.robots = robots
        self.stale_after_s = float(stale_after_s)  # robots silent this long are not asked
        self._ctx = zmq.Context()
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[tuple[str, str], ConsoleClient]] = {}
        self._answers: dict[str, dict] = {}  # id -> {at, reachable, status, error}
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="daydream-console-poll",
                                        daemon=True)  # fmt: skip

    def start(self) -> RobotConsoles:
        if not self.client_secret_file.is_file():
            raise FileNotFoundError(
                f"the fleet console reaches robots with {self.client_secret_file}, which does not "
                f"exist; create keys with `daydream keys --out DIR` (teleop.client_key)"
            )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout + 2.0)
        with self._lock:
            for _, client in self._clients.values():
                client.close()
            self._clients.clear()
        self._ctx.term()

    # ------------------------------------------------------------ commands
    def _client(self, robot_id: str, console: dict) -> ConsoleClient:
        ident = (console["endpoint"], console["key"])
        with self._lock:
            held = self._clients.get(robot_id)
            if held is not None and held[0] == ident:
                return held[1]
            if held is not None:
                held[1].close()
            client = ConsoleClient(ident[0], self.client_secret_file, ident[1].encode("ascii"),
                                   self.timeout, context=self._ctx)  # fmt: skip
            self._clients[robot_id] = (ident, client)
            return client

    def request(self, robot_id: str, console: dict, cmd: str, **fields: Any) -> dict | None:
        """Send ``cmd`` to the robot's console; its reply, or None when it did not answer."""
        reply = self._client(robot_id, console).request(cmd, **fields)
        self._remember(robot_id, reply)
        return reply

    def stop(self, robot_id: str, console: dict) -> dict | None:
        return self.request(robot_id, console, "stop", hard=False, person=FLEET_PERSON)

    def reset(self, robot_id: str, console: dict, person: str) -> dict | None:
        return self.request(robot_id, console, "reset", person=person)

    def stop_all(self, consoles: dict[str, dict]) -> dict[str, dict | None]:
        """Stop every robot in ``consoles`` (id -> console) at once; id -> reply or None."""
        if not consoles:
            return {}
        with ThreadPoolExecutor(min(MAX_PARALLEL, len(consoles))) as pool:
            futures = {rid: pool.submit(self.stop, rid, c) for rid, c in consoles.items()}
            return {rid: f.result() for rid, f in futures.items()}

    # ------------------------------------------------------------ answers
    def _remember(self, robot_id: str, reply: dict | None) -> None:
        answer = {"at": time.time(), "reachable": reply is not None}
        if reply is not None:
            answer["status"] = reply.get("status") or {}
        with self._lock:
            if reply is None and robot_id in self._answers:
                answer["status"] = self._answers[robot_id].get("status", {})
            self._answers[robot_id] = answer

    def answer(self, robot_id: str) -> dict | None:
        """The newest ``{at, reachable, status}`` from the robot's console, or None."""
        with self._lock:
            return self._answers.get(robot_id)

    def _poll(self) -> None:
        while not self._closing.wait(self.poll_every_s):
            try:
                robots = self.robots()
            except Exception:  # noqa: BLE001 - the hub is shutting down; the next round retries
                continue
            for robot in robots:
                console = robot.get("console") or {}
                if self._closing.is_set():
                    return
                if time.time() - robot.get("last_seen", 0.0) > self.stale_after_s:
                    continue
                if console.get("endpoint") and console.get("key") and not console.get("problem"):
                    self.request(robot["id"], console, "status")
