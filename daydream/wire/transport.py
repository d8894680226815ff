"""ZeroMQ transport: robot DEALER <-> workstation ROUTER, one TCP port for everything.

Messages (see ``codec.MESSAGE_FIELDS``; the whole protocol, for clients in other languages,
is docs/PROTOCOL.md)::

    robot (TransportClient)                          workstation (TransportServer, in the gateway)
    hello / heartbeat {actor}               ──▶      answered by weights_info {version}
    chunk {actor, seq, data}                ──▶      ack {actor, seqs} once the replay holds it
                                            ◀──      nack {actor, seqs, reason} if refused for good
    weights_request {version: have}         ──▶      weights {version, params} if newer, else
                                                     weights_info {version}
                                            ◀──      weights_info {version} when new weights appear

Robots never block on the network: every send is NOBLOCK and returns False when ZeroMQ
would block (no connection yet: IMMEDIATE=1; peer slow: SNDHWM reached); the caller (the
outbox) keeps the chunk and sends it again later. ZMTP heartbeats notice a dead peer;
DEALER reconnects by itself with backoff; LINGER 0 so closing never waits.

CURVE is on by default: the server uses its secret key and admits only clients whose
public key is in the allow-list directory (see ``daydream.wire.curve``); every message it
receives carries the sender's public key (``Received.key``, ZeroMQ's ZAP ``User-Id``), which
the replay binds streams to. Any socket served by this module is closed by ``close()``;
both classes are context managers.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zmq

from daydream.wire.codec import CodecError, decode, encode, is_v1, upgrade_v1
from daydream.wire.curve import (
    ALLOWED_DIR,
    SERVER_NAME,
    KeyFileError,
    load_keypair,
    make_curve_client,
    make_curve_server,
    start_authenticator,
)

log = logging.getLogger(__name__)


_TCP = re.compile(r"tcp://(?P<host>\*|\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\*|\d+)")


def check_endpoint(address: str, what: str = "address") -> str:
    """``address`` if it is a ZeroMQ endpoint this system uses (``tcp://HOST:PORT``,
    ``ipc://PATH``); otherwise ValueError with one line saying what is expected."""
    example = "tcp://HOST:PORT, for example tcp://workstation:5555"
    if address.startswith("ipc://") and len(address) > len("ipc://"):
        return address
    match = _TCP.fullmatch(address)
    if match is None:
        raise ValueError(f"{what} {address!r} is not a ZeroMQ endpoint: expected {example}")
    port = match["port"]
    if port != "*" and not 0 < int(port) < 65536:
        raise ValueError(f"{what} {address!r}: port {port} is not in 1-65535")
    return address


@dataclass(frozen=True)
class TransportOptions:
    """Socket options and limits shared by both ends (``transport`` block of the config)."""

    sndhwm: int = 64
    rcvhwm: int = 1024
    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 5000
    reconnect_ivl_ms: int = 200
    reconnect_ivl_max_ms: int = 5000
    max_message_bytes: int = 64 * 1024 * 1024  # what a gateway accepts from a robot
    max_weights_bytes: int = 1024 * 1024 * 1024  # what a robot accepts from its gateway

    @classmethod
    def from_block(cls, t) -> TransportOptions:
        """From the ``transport`` config block."""
        return cls(
            sndhwm=t.sndhwm,
            rcvhwm=t.rcvhwm,
            heartbeat_ivl_ms=t.heartbeat_ivl_ms,
            heartbeat_timeout_ms=t.heartbeat_timeout_ms,
            reconnect_ivl_ms=t.reconnect_ivl_ms,
            reconnect_ivl_max_ms=t.reconnect_ivl_max_ms,
            max_message_bytes=t.max_message_mb * 1024 * 1024,
        )

    def apply(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ivl_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.heartbeat_timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, self.heartbeat_timeout_ms)
        sock.setsockopt(zmq.RECONNECT_IVL, self.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.reconnect_ivl_max_ms)


class Received(NamedTuple):
    """One decoded message and who sent it."""

    peer: bytes  # the ROUTER's routing id of the connection (answers go to it)
    msg: dict
    key: str | None  # the sender's CURVE public key as Z85 text (ZAP User-Id); None: no CURVE


def sender_key(frame: zmq.Frame) -> str | None:
    """The CURVE public key (Z85) the ZAP handler authenticated for ``frame``'s connection;
    None without CURVE (no ZAP handler: the property does not exist)."""
    try:
        key = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return key or None


class TransportServer:
    """Owns the workstation's ROUTER socket (and its CURVE authenticator).

    ``recv`` returns decoded messages with the sender's routing id and CURVE key
    (``Received``); messages that fail to decode are counted in ``rejected`` by reason and
    answered with an ``error`` message.
    """

    def __init__(
        self,
        bind: str,
        *,
        curve: bool = True,
        key_dir: str | Path | None = None,
        options: TransportOptions | None = None,
        context: zmq.Context | None = None,
    ):
        self.options = options or TransportOptions()
        self._own_context = context is None
        self.context = context or zmq.Context()
        self._auth = None
        self.rejected: Counter = Counter()
        self.dropped_sends = 0
        self.sock = self.context.socket(zmq.ROUTER)
        try:
            self.options.apply(self.sock)
            # ZeroMQ itself drops anything far beyond the codec limit (and disconnects the peer)
            self.sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.options.max_message_bytes)
            if curve:
                if key_dir is None:
                    raise KeyFileError(
                        "CURVE is on but no key directory was given (create one with "
                        "`daydream keys --out DIR` and set transport.key_dir)"
                    )
                key_dir = Path(key_dir)
                _, secret = load_keypair(key_dir / f"{SERVER_NAME}.key_secret")
                self._auth = start_authenticator(self.context, key_dir / ALLOWED_DIR)
                make_curve_server(self.sock, secret)
            self.sock.bind(bind)
        except BaseException:
            self.close()
            raise
        self.endpoint: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self, timeout_ms: int = 0, max_messages: int = 256) -> list[Received]:
        """Decoded messages ``(peer, msg, key)`` that arrive within ``timeout_ms`` (at most
        max)."""
        out: list[Received] = []
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return out
        while len(out) < max_messages:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            peer = frames[0].bytes
            if len(frames) != 2:
                self._reject(peer, CodecError("malformed", f"{len(frames) - 1} frames, expected 1"))
                continue
            try:
                msg = decode(frames[1].buffer, self.options.max_message_bytes)
                out.append(Received(peer, msg, sender_key(frames[1])))
            except CodecError as e:
                self._reject(peer, e)
        return out

    def _reject(self, peer: bytes, error: CodecError) -> None:
        self.rejected[error.reason] += 1
        self.send(peer, {"type": "error", "reason": error.reason})

    def send(self, peer: bytes, msg: dict | bytes | bytearray) -> bool:
        """Send to one peer without blocking; False (and counted) if it cannot be queued.

        Pre-encoded messages of 64 kB and more go without a copy (ZeroMQ keeps a reference
        until it has sent them), so one weights message serves every robot."""
        data = encode(msg, self.options.max_weights_bytes) if isinstance(msg, dict) else msg
        try:
            self.sock.send_multipart([peer, data], zmq.NOBLOCK, copy=len(data) < 65536)
            return True
        except zmq.Again:
            self.dropped_sends += 1
            return False
        except zmq.ZMQError as e:  # EHOSTUNREACH for a peer that has gone
            self.dropped_sends += 1
            log.debug("send to %r failed: %s", peer, e)
            return False

    def close(self) -> None:
        if self.sock is not None and not self.sock.closed:
            self.sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self.context.term()
            self._own_context = False

    def __enter__(self) -> TransportServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TransportClient:
    """Owns a robot's DEALER socket to the gateway. Every method returns without waiting.

    >>> client = TransportClient("tcp://ws:5555", "robot-0", key_file=..., server_key_file=...)
    >>> client.send_chunk(seq, chunk)      # False: not queued now, keep it and retry later
    >>> for msg in client.poll():          # ack / nack / weights_info / weights / error
    ...     ...
    >>> client.request_weights(have_version)
    """

    def __init__(
        self,
        address: str,
        actor_id: str,
        *,
        curve: bool = True,
        key_file: str | Path | None = None,
        server_key_file: str | Path | None = None,
        options: TransportOptions | None = None,
        context: zmq.Context | None = None,
    ):
        self.actor_id = str(actor_id)
        self.address = address
        self.options = options or TransportOptions()
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.rejected: Counter = Counter()
        self.sock = self.context.socket(zmq.DEALER)
        try:
            self.options.apply(self.sock)
            self.sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing into a link that is not up
            if curve:
                if key_file is None or server_key_file is None:
                    raise KeyFileError(
                        "CURVE is on: give this robot's NAME.key_secret and the gateway's "
                        "gateway.key (from `daydream keys --out DIR`)"
                    )
                public, secret = load_keypair(key_file)
                server_public, _ = load_keypair(server_key_file)
                make_curve_client(self.sock, public, secret, server_public)
            self.sock.connect(address)
        except BaseException:
            self.close()
            raise

    def send(self, msg: dict | bytes | bytearray) -> bool:
        """Queue one message (dict or pre-encoded bytes); False if ZeroMQ would block.

        Pre-encoded messages of 64 kB and more go without a copy; a schema-1 message (an
        outbox spill file from before an upgrade) is re-encoded in the current schema."""
        if isinstance(msg, dict):
            data = encode(msg, self.options.max_message_bytes)
        elif is_v1(msg):
            try:
                data = upgrade_v1(msg, self.options.max_message_bytes)
            except CodecError as e:  # sent as it is: the gateway counts and answers it
                log.warning("could not upgrade a schema-1 message (%s)", e)
                data = msg
        else:
            data = msg
        try:
            self.sock.send(data, zmq.NOBLOCK, copy=len(data) < 65536)
            return True
        except zmq.Again:
            return False

    def encode_chunk(self, seq: int, chunk: dict[str, np.ndarray]) -> bytearray:
        """The wire bytes of a chunk message (the outbox keeps these to resend); the arrays
        are copied once, into the message."""
        return encode(
            {"type": "chunk", "actor": self.actor_id, "seq": int(seq), "data": chunk},
            self.options.max_message_bytes,
        )

    def send_chunk(self, seq: int, chunk: dict[str, np.ndarray]) -> bool:
        return self.send(self.encode_chunk(seq, chunk))

    def hello(self) -> bool:
        return self.send({"type": "hello", "actor": self.actor_id})

    def heartbeat(self) -> bool:
        return self.send({"type": "heartbeat", "actor": self.actor_id})

    def request_weights(self, version: int) -> bool:
        """Ask for weights newer than ``version`` (-1: none held yet)."""
        return self.send({"type": "weights_request", "actor": self.actor_id, "version": version})

    def poll(self, timeout_ms: int = 0, max_messages: int = 256) -> list[dict]:
        """Messages from the gateway that arrive within ``timeout_ms`` (0: only those queued)."""
        out: list[dict] = []
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return out
        while len(out) < max_messages:
            try:
                frame = self.sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                out.append(decode(frame.buffer, self.options.max_weights_bytes))
            except CodecError as e:
                self.rejected[e.reason] += 1
                log.warning("dropped a bad message from the gateway (%s)", e)
        return out

    def close(self) -> None:
        if self.sock is not None and not self.sock.closed:
            self.sock.close(linger=0)
        if self._own_context:
            self.context.term()
            self._own_context = False

    def __enter__(self) -> TransportClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
