"""The quadruped servo board's serial protocol: framed, checksummed binary messages.

Both ends speak it: the driver (robots/quadruped.py) and the virtual board
(robots/sim/virtual_board.py). robots/README.md documents it byte by byte.

Frame (all integers little-endian)::

    offset  size  field
    0       2     sync      0xA5 0x5A
    2       1     length    payload bytes N (fixed per type, PAYLOAD_SIZE)
    3       2     seq       host -> board: the command's sequence number (u16, wraps)
                            board -> host: the sequence number of the command it answers
    5       1     type      message type (MsgType)
    6       N     payload   fixed layout per type (PAYLOAD_SIZE)
    6+N     2     crc       CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over bytes 2 .. 6+N-1

The decoder (:class:`FrameDecoder`) is a streaming parser: feed it whatever bytes
arrived; it returns the complete, valid frames and drops everything else. A frame
with a wrong CRC, an unknown type or a payload length that does not match its type
is counted and dropped, never returned. Type and length are checked as soon as the
header is in, before waiting for the payload; a frame cut short is dropped as soon
as a complete valid frame turns up after its sync. After a rejected frame the
decoder searches for the next sync pair from one byte after the rejected sync, so
a corrupted or truncated frame never swallows the frame that follows it.
"""

from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import dataclass

import numpy as np

SYNC = b"\xa5\x5a"
HEADER = struct.Struct("<2sBHB")  # sync, length, seq, type
CRC = struct.Struct("<H")
N_JOINTS = 12


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor).

    ``crc16(b"123456789") == 0x29B1``. binascii.crc_hqx is this CRC with init 0xFFFF.
    """
    return binascii.crc_hqx(data, 0xFFFF)


class MsgType(enum.IntEnum):
    """Message types. 0x01-0x3F: host -> board commands; 0x80-: board -> host."""

    TARGETS = 0x01  # 12 x f32 joint targets [rad]; the sim board steps one control period
    GAINS = 0x02  # 12 x f32 kp, 12 x f32 kd
    RELAX = 0x03  # servos off (no torque)
    HOLD = 0x04  # hold the pose: keep the targets (relaxed: the measured angles); ignore TARGETS
    STAND_UP = 0x05  # run the board's stand-up routine, then hold the standing pose
    SET_TIMEOUT = 0x06  # f32 seconds (0 disarms), u8 action (0 relax, 1 hold)
    ENABLE = 0x07  # leave hold/relax/timed-out: servos on, follow TARGETS (from the held pose)
    GET_STATE = 0x08  # no effect; the board answers with TELEMETRY
    CLEAR_FAULTS = 0x09  # clear latched fault bits (a person decided it is safe)
    TELEMETRY = 0x81  # the board's answer to every command


class Status(enum.IntFlag):
    """Board status bits (TELEMETRY.status)."""

    SERVOS_ON = 1 << 0  # servos produce torque
    ACTIVE = 1 << 1  # following TARGETS
    HOLDING = 1 << 2  # holding a pose, TARGETS ignored
    RELAXED = 1 << 3  # servos off
    STANDING_UP = 1 << 4  # stand-up routine running
    TIMED_OUT = 1 << 5  # commands stopped for longer than the armed timeout
    TIMEOUT_ARMED = 1 << 6  # SET_TIMEOUT with seconds > 0 received


class Fault(enum.IntFlag):
    """Board fault bits (TELEMETRY.faults); latched until CLEAR_FAULTS."""

    OVERCURRENT = 1 << 0
    OVERTEMPERATURE = 1 << 1
    UNDERVOLTAGE = 1 << 2
    IMU = 1 << 3  # the IMU stopped answering
    SERVO_BUS = 1 << 4  # a servo stopped answering
    JOINT_LIMIT = 1 << 5  # a joint left its hardware range


class TimeoutAction(enum.IntEnum):
    """What the board does with its servos when commands stop (SET_TIMEOUT.action)."""

    RELAX = 0
    HOLD = 1


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class Targets:
    """Joint position targets for the 12 servos [rad]."""

    positions: np.ndarray


@dataclass(frozen=True)
class Gains:
    """Per-servo PD gains."""

    kp: np.ndarray
    kd: np.ndarray


@dataclass(frozen=True)
class Relax:
    """Servos off."""


@dataclass(frozen=True)
class Hold:
    """Hold the pose (the current targets; from relaxed, the measured angles); TARGETS ignored."""


@dataclass(frozen=True)
class StandUp:
    """Run the board's stand-up routine."""


@dataclass(frozen=True)
class SetTimeout:
    """Arm (seconds > 0) or disarm (0) the board's command timeout."""

    seconds: float
    action: TimeoutAction = TimeoutAction.RELAX


@dataclass(frozen=True)
class Enable:
    """Servos on and TARGETS accepted again (from relaxed, starting at the measured angles)."""


@dataclass(frozen=True)
class GetState:
    """Ask for a TELEMETRY frame without changing anything."""


@dataclass(frozen=True)
class ClearFaults:
    """Clear the latched fault bits."""


@dataclass(frozen=True)
class Telemetry:
    """The board's state, sent in answer to every command.

    ``imu`` is (roll, pitch, roll_rate, pitch_rate, yaw_rate) in rad and rad/s;
    ``forward_velocity`` is the board's estimate of the body's forward speed in m/s
    (NaN where the board has no estimator).
    """

    time_ms: int
    status: Status
    faults: Fault
    rx_errors: int  # frames the board rejected (CRC, length, type) since power-up
    supply_voltage: float
    positions: np.ndarray  # (12,) rad
    velocities: np.ndarray  # (12,) rad/s
    imu: np.ndarray  # (5,)
    forward_velocity: float = float("nan")


Message = (
    Targets | Gains | Relax | Hold | StandUp | SetTimeout | Enable | GetState | ClearFaults
    | Telemetry
)

_F12 = np.dtype("<f4")
_TELEMETRY_HEAD = struct.Struct("<IHHHf")  # time_ms, status, faults, rx_errors, supply_v
_SET_TIMEOUT = struct.Struct("<fB")

PAYLOAD_SIZE: dict[MsgType, int] = {
    MsgType.TARGETS: 4 * N_JOINTS,
    MsgType.GAINS: 8 * N_JOINTS,
    MsgType.RELAX: 0,
    MsgType.HOLD: 0,
    MsgType.STAND_UP: 0,
    MsgType.SET_TIMEOUT: _SET_TIMEOUT.size,
    MsgType.ENABLE: 0,
    MsgType.GET_STATE: 0,
    MsgType.CLEAR_FAULTS: 0,
    MsgType.TELEMETRY: _TELEMETRY_HEAD.size + 4 * (2 * N_JOINTS + 5 + 1),
}

_EMPTY = {
    MsgType.RELAX: Relax,
    MsgType.HOLD: Hold,
    MsgType.STAND_UP: StandUp,
    MsgType.ENABLE: Enable,
    MsgType.GET_STATE: GetState,
    MsgType.CLEAR_FAULTS: ClearFaults,
}
_EMPTY_TYPE = {cls: t for t, cls in _EMPTY.items()}
_TYPES = {int(t): t for t in MsgType}


def _f32(values: np.ndarray, n: int, what: str) -> bytes:
    arr = np.asarray(values, dtype=_F12)
    if arr.shape != (n,):
        raise ValueError(f"{what} needs shape ({n},), got {arr.shape}")
    return arr.tobytes()


def encode_payload(msg: Message) -> tuple[MsgType, bytes]:
    """The type and payload bytes of a message."""
    if isinstance(msg, Targets):
        return MsgType.TARGETS, _f32(msg.positions, N_JOINTS, "Targets.positions")
    if isinstance(msg, Gains):
        kp = _f32(msg.kp, N_JOINTS, "Gains.kp")
        return MsgType.GAINS, kp + _f32(msg.kd, N_JOINTS, "Gains.kd")
    if isinstance(msg, SetTimeout):
        return MsgType.SET_TIMEOUT, _SET_TIMEOUT.pack(float(msg.seconds), int(msg.action))
    if isinstance(msg, Telemetry):
        head = _TELEMETRY_HEAD.pack(
            int(msg.time_ms) & 0xFFFFFFFF, int(msg.status), int(msg.faults),
            min(int(msg.rx_errors), 0xFFFF), float(msg.supply_voltage),
        )
        body = np.concatenate([
            np.asarray(msg.positions, _F12).reshape(N_JOINTS),
            np.asarray(msg.velocities, _F12).reshape(N_JOINTS),
            np.asarray(msg.imu, _F12).reshape(5),
            np.asarray([msg.forward_velocity], _F12),
        ]).astype(_F12)
        return MsgType.TELEMETRY, head + body.tobytes()
    if type(msg) in _EMPTY_TYPE:
        return _EMPTY_TYPE[type(msg)], b""
    raise TypeError(f"cannot encode {type(msg).__name__} as a board message")


def decode_payload(msg_type: MsgType, payload: bytes) -> Message:
    """The message of a type and payload whose length was already checked."""
    if msg_type == MsgType.TARGETS:
        return Targets(np.frombuffer(payload, _F12).astype(np.float32))
    if msg_type == MsgType.GAINS:
        arr = np.frombuffer(payload, _F12).astype(np.float32)
        return Gains(arr[:N_JOINTS], arr[N_JOINTS:])
    if msg_type == MsgType.SET_TIMEOUT:
        seconds, action = _SET_TIMEOUT.unpack(payload)
        return SetTimeout(seconds, TimeoutAction(action))
    if msg_type == MsgType.TELEMETRY:
        time_ms, status, faults, rx_errors, supply = _TELEMETRY_HEAD.unpack_from(payload)
        arr = np.frombuffer(payload, _F12, offset=_TELEMETRY_HEAD.size).astype(np.float32)
        n = N_JOINTS
        return Telemetry(
            time_ms, Status(status), Fault(faults), rx_errors, supply,
            arr[:n], arr[n:2 * n], arr[2 * n:2 * n + 5], float(arr[2 * n + 5]),
        )
    return _EMPTY[msg_type]()


def encode(msg: Message, seq: int) -> bytes:
    """One complete frame carrying ``msg`` with sequence number ``seq`` (mod 2**16)."""
    msg_type, payload = encode_payload(msg)
    body = HEADER.pack(SYNC, len(payload), seq & 0xFFFF, int(msg_type)) + payload
    return body + CRC.pack(crc16(body[2:]))


@dataclass
class DecoderStats:
    """What the decoder dropped, by reason."""

    frames: int = 0  # valid frames returned
    crc_errors: int = 0  # frames whose CRC did not match (corrupted or truncated)
    bad_length: int = 0  # length field wrong for the type
    unknown_type: int = 0
    truncated: int = 0  # frames cut short: a complete frame followed before their end
    garbage_bytes: int = 0  # bytes skipped while searching for a sync pair

    @property
    def rejected(self) -> int:
        return self.crc_errors + self.bad_length + self.unknown_type + self.truncated


class FrameDecoder:
    """Streaming frame parser: bytes in, valid ``(seq, message)`` pairs out.

    Owns a buffer of bytes not yet parsed and the counts of what it dropped (``stats``).
    Not thread-safe: one reader per decoder.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats = DecoderStats()

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget buffered bytes (for example after reopening the port)."""
        self._buf.clear()

    def feed(self, data: bytes) -> list[tuple[int, Message]]:
        """Parse ``data`` appended to what was buffered; return the valid frames in order."""
        buf = self._buf
        buf.extend(data)
        out: list[tuple[int, Message]] = []
        stats = self.stats
        pos = 0
        while True:
            start = buf.find(SYNC, pos)
            if start < 0:
                # keep a trailing 0xA5: it may be the first half of a sync pair
                keep = 1 if len(buf) > pos and buf[-1] == SYNC[0] else 0
                stats.garbage_bytes += len(buf) - pos - keep
                pos = len(buf) - keep
                break
            stats.garbage_bytes += start - pos
            pos = start
            verdict, end = self._check_at(pos, count=True)
            if verdict == "bad":
                pos += 1
                continue
            if verdict == "incomplete":
                # a frame cut short (lost bytes, board reset) must not hold back the
                # complete frames that follow it: look for one further on
                later = self._next_complete(pos + 1)
                if later < 0:
                    break
                stats.truncated += 1
                pos = later
                continue
            _, _, seq, raw_type = HEADER.unpack_from(buf, pos)
            payload = bytes(buf[pos + HEADER.size:end - CRC.size])
            out.append((seq, decode_payload(_TYPES[raw_type], payload)))
            stats.frames += 1
            pos = end
        del buf[:pos]
        return out

    def _check_at(self, pos: int, count: bool) -> tuple[str, int]:
        """("ok" | "bad" | "incomplete", end) for the frame whose sync is at ``pos``."""
        buf = self._buf
        if len(buf) - pos < HEADER.size:
            return "incomplete", 0
        _, length, _, raw_type = HEADER.unpack_from(buf, pos)
        # type and length are checked before waiting for the payload: a false sync in
        # garbage must not make the decoder wait for bytes that belong to real frames
        msg_type = _TYPES.get(raw_type)
        if msg_type is None:
            self.stats.unknown_type += count
            return "bad", 0
        if length != PAYLOAD_SIZE[msg_type]:
            self.stats.bad_length += count
            return "bad", 0
        end = pos + HEADER.size + length + CRC.size
        if len(buf) < end:
            return "incomplete", end
        (crc,) = CRC.unpack_from(buf, end - CRC.size)
        if crc != crc16(bytes(buf[pos + 2:end - CRC.size])):
            self.stats.crc_errors += count
            return "bad", end
        return "ok", end

    def _next_complete(self, pos: int) -> int:
        """Start of the next complete valid frame at or after ``pos``, or -1."""
        while True:
            pos = self._buf.find(SYNC, pos)
            if pos < 0:
                return -1
            if self._check_at(pos, count=False)[0] == "ok":
                return pos
            pos += 1
