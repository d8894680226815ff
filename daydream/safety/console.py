"""Remote safety console over ZeroMQ: stop, reset, override and drive a robot from afar.

Server: :class:`ConsoleServer`, in the robot's actor process beside its SafetySupervisor,
a ROUTER socket on ``teleop.console`` (e.g. ``tcp://*:5557``). Client:
:class:`ConsoleClient`, a DEALER socket, used by ``daydream teleop --robot tcp://HOST:PORT``.

Wire format: one msgpack-encoded dict per message, never pickle. Requests::

    {"id": n, "cmd": "status"}
    {"id": n, "cmd": "stop", "hard": false, "person": "..."}     (person: optional)
    {"id": n, "cmd": "reset", "person": "..."}
    {"id": n, "cmd": "override", "active": true, "action": [..] | None}
    {"id": n, "cmd": "action", "action": [..] | None}

Every reply is ``{"id": n, "ok": bool, "error": str, "status": SafetySupervisor.status,
"action_space": {"shape", "discrete", "low", "high"}}``: the client polls ``status``
every ``teleop.status_period_s`` seconds to show the robot's state (request/reply on one
port rather than a separate PUB socket: one port to open, and a reply proves the
command arrived).

Security: CURVE encryption and authentication (daydream/wire/curve.py). The server uses this
robot's key pair (``<transport.key_dir>/<teleop.server_key>.key_secret``) and accepts
only clients whose public key file is in ``<transport.key_dir>/<teleop.allowed_dir>/``.
A client with another key never completes the handshake: it gets no reply and its
commands have no effect. The stop/reset is recorded with the name of the allowed key
file that sent it, and the ``person`` the request names, if any (the fleet console sends the
name a person typed to reset): ``console:gateway (Ada)``. Messages over 64 KiB are dropped by
ZeroMQ before they are decoded.

Setup (the workstation already has ``gateway.key_secret`` and ``actor.key`` from
``daydream keys --out keys``)::

    robot$  mkdir -p keys/console_allowed && cp gateway.key keys/console_allowed/
    robot$  daydream drive ... --console tcp://*:5557     (or the actor with teleop.console)
    ws$     daydream teleop --robot tcp://ROBOT:5557
"""

from __future__ import annotations

import itertools
import logging
import threading
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from daydream.safety.supervisor import SafetySupervisor
from daydream.wire import curve

log = logging.getLogger("daydream.safety.console")

MAX_MESSAGE = 64 * 1024  # bytes; a console message is a few hundred
MAX_ACTION = 4096  # numbers in one action
MAX_PERSON = 64  # characters of the person a stop or reset names
COMMANDS = ("status", "stop", "reset", "override", "action")
POLL_MS = 50


def _space_info(sup: SafetySupervisor) -> dict[str, Any]:
    space = sup.space
    low, high = sup._bounds()
    return {
        "shape": list(space.shape),
        "discrete": bool(space.discrete),
        "low": [float(x) if np.isfinite(x) else None for x in low.ravel()],
        "high": [float(x) if np.isfinite(x) else None for x in high.ravel()],
    }


class ConsoleServer:
    """Owns the console socket in the actor process and applies its commands to a supervisor.

    A background thread serves requests; a stop request calls ``robot.stop()`` from that
    thread, without waiting for the control loop.
    """

    def __init__(
        self,
        supervisor: SafetySupervisor,
        bind: str,
        server_secret_file: str | Path,
        allowed_dir: str | Path,
        context: zmq.Context | None = None,
    ) -> None:
        self.sup = supervisor
        self.bind = bind
        _, self._secret = curve.load_keypair(server_secret_file)
        self.allowed_dir = Path(allowed_dir)
        self._names = self._allowed_names(self.allowed_dir)
        # Its own context by default: a context holds one ZAP authenticator, and the
        # actor's transport may have its own.
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._auth: Any = None
        self._sock: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self.endpoint = ""

    @staticmethod
    def _allowed_names(allowed_dir: Path) -> dict[str, str]:
        import zmq.auth

        names = {}
        for path in sorted(allowed_dir.glob("*.key")):
            public, _ = zmq.auth.load_certificate(path)
            if public:
                names[public.decode()] = path.stem
        return names

    def start(self) -> ConsoleServer:
        """Bind (CURVE server, allow-list authenticator) and serve in a background thread."""
        self._auth = curve.start_authenticator(self._ctx, self.allowed_dir)
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        curve.make_curve_server(sock, self._secret)
        try:
            sock.bind(self.bind)
        except zmq.ZMQError as e:
            sock.close()
            self._auth.stop()
            raise RuntimeError(
                f"console cannot bind {self.bind}: {e} (is another actor using the port? "
                "pick another with --console tcp://*:PORT)"
            ) from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._closing.clear()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="daydream-console")
        self._thread.start()
        log.info("safety console listening on %s", self.endpoint)
        return self

    def close(self) -> None:
        """Stop serving, close the socket and the authenticator (the server cannot restart)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not self._closing.is_set():
            if not poller.poll(POLL_MS):
                continue
            try:
                frames = sock.recv_multipart(copy=False)
            except zmq.ZMQError:
                continue
            if len(frames) != 2:
                continue
            identity, payload = frames
            try:
                user = payload.get("User-Id")
            except zmq.ZMQError:
                user = ""
            who = "console:" + self._names.get(user, user[:8] or "unknown")
            reply = self.handle(payload.bytes, who)
            try:
                sock.send_multipart([identity.bytes, msgpack.packb(reply)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the client went away; its next request gets a fresh reply

    def handle(self, data: bytes, who: str) -> dict[str, Any]:
        """Decode one request, apply it to the supervisor, and build the reply."""
        msg_id = None
        error = ""
        try:
            msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
            if not isinstance(msg, dict):
                raise ValueError("a console message must be a map")
            msg_id = msg.get("id")
            self._apply(msg, who)
        except Exception as e:  # noqa: BLE001 - a bad message must not kill the console
            error = f"{type(e).__name__}: {e}"
            log.warning("console request from %s refused: %s", who, error)
        return {
            "id": msg_id,
            "ok": not error,
            "error": error,
            "status": self.sup.status,
            "action_space": _space_info(self.sup),
        }

    def _apply(self, msg: dict, who: str) -> None:
        cmd = msg.get("cmd")
        if cmd not in COMMANDS:
            raise ValueError(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
        person = msg.get("person")
        if cmd == "stop":  # a stop always latches; a name that does not fit is left out
            who = f"{who} ({person})" if _fits_person(person) else who
            self.sup.request_stop(who, hard=bool(msg.get("hard", False)))
        elif cmd == "reset":
            if person is not None and not _fits_person(person):
                raise ValueError(f"a person's name is 1 to {MAX_PERSON} printable characters")
            self.sup.reset_stop(who if person is None else f"{who} ({person})")
        elif cmd == "override":
            self.sup.set_override(bool(msg.get("active")), _action(msg.get("action")))
        elif cmd == "action":
            self.sup.set_teleop_action(_action(msg.get("action")))


def _fits_person(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_PERSON and value.isprintable()


def _action(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_ACTION:
        raise ValueError(f"an action must be a list of at most {MAX_ACTION} numbers")
    return np.asarray(value, np.float64)


class ConsoleClient:
    """Owns the workstation end of a robot's console; the same command methods as the supervisor.

    Every method returns the reply dict, or None when the robot did not answer within
    ``timeout`` seconds (unreachable, or this machine's key is not on its allow-list).
    ``server_public`` is the robot's public key file, or the key itself (Z85 bytes).
    On a timeout the socket is rebuilt, so an unanswered command is never delivered late.
    Thread-safe (the keyboard thread and the display loop share one client).
    """

    def __init__(
        self,
        endpoint: str,
        client_secret_file: str | Path,
        server_public: str | Path | bytes,
        timeout: float,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._public, self._secret = curve.load_keypair(client_secret_file)
        if isinstance(server_public, bytes):
            self._server_public = server_public
        else:
            self._server_public, _ = curve.load_keypair(server_public)
        self.timeout = float(timeout)
        self._ctx = context or zmq.Context.instance()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sock: zmq.Socket | None = None
        self.last_reply: dict[str, Any] | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing on an unfinished connection
            sock.setsockopt(zmq.MAXMSGSIZE, 4 * MAX_MESSAGE)
            curve.make_curve_client(sock, self._public, self._secret, self._server_public)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def request(self, cmd: str, **fields: Any) -> dict[str, Any] | None:
        """Send one command and wait for its reply (None on timeout)."""
        with self._lock:
            msg_id = next(self._ids)
            sock = self._socket()
            data = msgpack.packb({"id": msg_id, "cmd": cmd, **fields})
            deadline_ms = int(self.timeout * 1000)
            if not sock.poll(deadline_ms, zmq.POLLOUT):
                self._drop_socket()
                return None
            sock.send(data, zmq.NOBLOCK)
            while sock.poll(deadline_ms, zmq.POLLIN):
                reply = msgpack.unpackb(sock.recv(), raw=False)
                if isinstance(reply, dict) and reply.get("id") == msg_id:
                    self.last_reply = reply
                    return reply
            self._drop_socket()
            return None

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self._drop_socket()

    # the Commands interface (daydream.safety.commands.Commands)
    def status(self) -> dict[str, Any] | None:
        return self.request("status")

    def request_stop(self, source: str = "console", hard: bool = False, reason: str = "") -> Any:
        return self.request("stop", hard=bool(hard))

    def reset_stop(self, person: str = "console") -> Any:
        return self.request("reset")

    def set_override(self, active: bool, action: Any = None) -> Any:
        return self.request("override", active=bool(active), action=_as_list(action))

    def set_teleop_action(self, action: Any) -> Any:
        return self.request("action", action=_as_list(action))


def _as_list(action: Any) -> list[float] | None:
    if action is None:
        return None
    if isinstance(action, dict):
        action = action["action"]
    return [float(x) for x in np.asarray(action).ravel()]
