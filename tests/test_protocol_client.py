"""A robot client written from docs/PROTOCOL.md alone, against a real gateway.

The client (the first half of this file) uses only pyzmq, msgpack and numpy: no daydream,
as a client in another language would be written. The tests start a daydream gateway and
check that the client's chunks are acknowledged, a NaN reward is refused for good with its
reason, and weights arrive; and that the page still says what the code does.
"""

from __future__ import annotations

import inspect
import re
import struct
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

# ================================================================ the client (PROTOCOL.md only)

MAGIC = b"\xc1DDM"  # section 2
ALIGN = 64
ARRAY_EXT = 1
SCHEMA = 2


def read_key_file(path: str | Path, which: str = "public-key") -> bytes:
    """The Z85 text of ``public-key`` or ``secret-key`` in a certificate file (section 1)."""
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line.startswith("#") and line.startswith(which):
            return line.split("=", 1)[1].strip().strip('"').encode()
    raise ValueError(f"no {which} in {path}")


def encode_message(msg: dict) -> bytes:
    """magic | u32 LE header length | msgpack header | aligned array sections (section 2)."""
    arrays: list[np.ndarray] = []

    def describe(obj):
        if isinstance(obj, np.ndarray):
            arrays.append(np.ascontiguousarray(obj))
            dtype = obj.dtype.str.encode("ascii")
            return msgpack.ExtType(
                ARRAY_EXT,
                struct.pack("<B", len(dtype)) + dtype + struct.pack("<B", obj.ndim)
                + struct.pack(f"<{obj.ndim}Q", *obj.shape),
            )  # fmt: skip
        raise TypeError(f"cannot send {type(obj).__name__}")

    header = msgpack.packb({"v": SCHEMA, **msg}, default=describe, use_bin_type=True)
    out = bytearray(MAGIC + struct.pack("<I", len(header)) + header)
    for arr in arrays:  # in the order msgpack wrote their descriptions
        data = arr.tobytes(order="C")
        if data:
            out += bytes(-len(out) % ALIGN)
        out += data
    return bytes(out)


def decode_message(frame: bytes) -> dict:
    if frame[:4] != MAGIC:
        raise ValueError("not a schema-2 message")
    (length,) = struct.unpack_from("<I", frame, 4)
    end = [8 + length]  # where the previous array ended

    def array(code: int, data: bytes) -> np.ndarray:
        assert code == ARRAY_EXT
        n = data[0]
        dtype = np.dtype(data[1 : 1 + n].decode("ascii"))
        ndim = data[1 + n]
        shape = struct.unpack_from(f"<{ndim}Q", data, 2 + n)
        count = int(np.prod(shape))
        start = end[0] + (-end[0] % ALIGN) if count * dtype.itemsize else end[0]
        end[0] = start + count * dtype.itemsize
        return np.frombuffer(frame, dtype, count, start).reshape(shape)

    msg = msgpack.unpackb(frame[8 : 8 + length], ext_hook=array, raw=False)
    if end[0] != len(frame):
        raise ValueError("message does not end where its last array ends")
    return msg


class RobotClient:
    """A DEALER with CURVE to the gateway's ROUTER; one frame per message (section 1)."""

    def __init__(self, endpoint: str, actor: str, key_file: Path, gateway_key_file: Path):
        self.actor = actor
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.CURVE_SERVERKEY, read_key_file(gateway_key_file))
        self.sock.setsockopt(zmq.CURVE_PUBLICKEY, read_key_file(key_file))
        self.sock.setsockopt(zmq.CURVE_SECRETKEY, read_key_file(key_file, "secret-key"))
        self.sock.connect(endpoint)

    def send(self, msg: dict) -> bool:
        try:
            self.sock.send(encode_message(msg), zmq.NOBLOCK)
            return True
        except zmq.Again:  # not connected yet: keep it, try again later
            return False

    def receive(self, timeout_ms: int) -> list[dict]:
        out = []
        while self.sock.poll(timeout_ms):
            out.append(decode_message(self.sock.recv()))
            timeout_ms = 0
        return out

    def request(self, msg: dict, answer: str, timeout_s: float = 10.0) -> dict:
        """Send ``msg`` until it is queued, then wait for a message of type ``answer``."""
        deadline = time.monotonic() + timeout_s
        while not self.send(msg):
            assert time.monotonic() < deadline, "never connected"
            time.sleep(0.01)
        while time.monotonic() < deadline:
            for reply in self.receive(50):
                if reply["type"] == answer:
                    return reply
        raise AssertionError(f"no {answer} for {msg['type']}")

    def close(self) -> None:
        self.sock.close()
        self.context.term()


def pendulum_chunk(steps: int, first: bool) -> dict[str, np.ndarray]:
    """The record layout of Pendulum-v1 (section 5): state (3,), step keys, action (1,)."""
    rng = np.random.default_rng(steps)
    return {
        "state": rng.standard_normal((steps, 3)).astype("<f4"),
        "reward": rng.uniform(-16, 0, steps).astype("<f4"),
        "is_first": np.arange(steps) == 0 if first else np.zeros(steps, bool),
        "is_last": np.zeros(steps, bool),
        "is_terminal": np.zeros(steps, bool),
        "action": rng.uniform(-1, 1, (steps, 1)).astype("<f4"),
        "intervention": np.zeros(steps, "<f4"),
    }


# ================================================================ the tests (daydream here)

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "PROTOCOL.md"
CLIENT = (read_key_file, encode_message, decode_message, RobotClient, pendulum_chunk)


@pytest.fixture
def gateway(tmp_path):
    import robots
    from daydream.core.config import load_config
    from daydream.core.spaces import record_spaces
    from daydream.replay.service import ReplayService
    from daydream.wire.curve import create_keys
    from daydream.wire.gateway import Gateway

    create_keys(tmp_path / "keys", ["my-robot"])
    config = load_config(str(REPO / "configs" / "pendulum.yaml"), None, [])
    spaces = record_spaces(*robots.spaces(config.robot.name, config))
    replay = ReplayService(capacity=10_000, directory=tmp_path / "replay")
    gw = Gateway(replay, "tcp://127.0.0.1:*", key_dir=tmp_path / "keys", spaces=spaces)
    gw.start()
    yield gw, tmp_path / "keys"
    gw.stop()


def test_a_client_written_from_the_page_streams_chunks_and_receives_weights(gateway):
    gw, keys = gateway
    client = RobotClient(gw.endpoint, "my-robot-0", keys / "my-robot.key_secret",
                         keys / "gateway.key")  # fmt: skip
    try:
        info = client.request({"type": "hello", "actor": "my-robot-0"}, "weights_info")
        assert info["version"] == -1 and info["behind"] == 0
        chunk = {"type": "chunk", "actor": "my-robot-0", "seq": 0, "data": pendulum_chunk(16, True)}
        ack = client.request(chunk, "ack")
        assert ack["seqs"] == [0] and ack["actor"] == "my-robot-0"
        assert gw.replay.keys() == [("my-robot-0", 0)] and gw.replay.num_steps() == 16

        poisoned = pendulum_chunk(16, False)
        poisoned["reward"][5] = np.nan
        nack = client.request({**chunk, "seq": 1, "data": poisoned}, "nack")
        assert nack["seqs"] == [1] and nack["reason"].split(":")[0] == "non_finite"
        assert gw.replay.keys() == [("my-robot-0", 0)]

        params = {"actor.w": np.arange(6, dtype=np.float32).reshape(2, 3), "actor.b": np.ones(2)}
        gw.publish_weights(params, version=5)
        assert client.request({"type": "heartbeat", "actor": "my-robot-0", "episodes": [[-3.5, 16]],
                               "policy_version": -1}, "weights_info")["version"] == 5  # fmt: skip
        weights = client.request({"type": "weights_request", "actor": "my-robot-0",
                                  "version": -1}, "weights")  # fmt: skip
        assert weights["version"] == 5 and set(weights["params"]) == set(params)
        for name, value in params.items():
            np.testing.assert_array_equal(weights["params"][name], value)
        assert gw.pop_reports()[-1]["episodes"] == [(-3.5, 16, {})]
    finally:
        client.close()


def test_the_client_uses_nothing_of_daydream():
    for part in CLIENT:
        assert "daydream" not in inspect.getsource(part), part.__name__
    module = Path(__file__).read_text()
    imports = re.findall(r"^(?:import|from) (\S+)", module, re.MULTILINE)  # module level only
    assert not [name for name in imports if name.split(".")[0] in ("daydream", "robots")]


def test_the_page_says_what_the_code_does():
    from daydream.replay.store import MAX_SEQ_AHEAD, REFUSALS
    from daydream.wire import codec
    from daydream.wire.outbox import SEQ_BLOCK

    page = PAGE.read_text()
    assert (MAGIC, ALIGN, ARRAY_EXT, SCHEMA) == (codec.MAGIC, codec.ALIGN, codec.ARRAY_EXT,
                                               codec.SCHEMA_VERSION)  # fmt: skip
    assert f"ALIGN = {codec.ALIGN}" in page and f"{MAX_SEQ_AHEAD:,}" in page
    assert "`SEQ_BLOCK`" in page and f"last + {SEQ_BLOCK}" in page
    for reason in (*codec.REASONS, *codec.VALUE_REASONS, *REFUSALS, "unexpected_type"):
        assert f"`{reason}`" in page, reason
    for kind, fields in codec.MESSAGE_FIELDS.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{kind}` |"))
        assert all(f"`{field}`" in row for field in fields), row
    for dtype in codec.ALLOWED_DTYPES:
        assert f"`{dtype.replace('|', chr(92) + '|')}`" in page, dtype
    examples = re.findall(r"^[0-9a-f]{4}  ((?:[0-9a-f]{2} ?)+)", page, re.MULTILINE)
    chunk = {"type": "chunk", "actor": "r", "seq": 7,
             "data": {"reward": np.array([0.5, 1.0], np.float32)}}  # fmt: skip
    assert bytes.fromhex("".join(examples)) == bytes(codec.encode(chunk)) == encode_message(chunk)
    hello = bytes(codec.encode({"type": "hello", "actor": "r"}))
    assert hello.hex(" ") in page and decode_message(hello)["actor"] == "r"
