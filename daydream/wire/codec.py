"""Wire format between robots and the workstation: a msgpack header and raw array sections.

Schema 2. One message is one ZeroMQ frame laid out as::

    "\\xc1DDM" | u32 H | header: H bytes of msgpack | pad | array 0 | pad | array 1 | ...

``0xc1`` is never valid msgpack, so no schema-1 peer mistakes a schema-2 message for one of
its own. The header is a msgpack map with the schema version ``v``, a ``type`` and that
type's fields (``MESSAGE_FIELDS``). A numpy array in the header is msgpack ext type 1
holding only its description::

    u8 len(dtype) | dtype str ("<f4", "|u1", ...) | u8 ndim | ndim x u64 shape

and its raw bytes follow the header, in the order the arrays appear in the header, each
starting at the next multiple of ``ALIGN`` bytes from the message start (zero padding
between). The message ends exactly where the last array ends: a missing or extra byte is
refused. ``encode`` copies each array once, straight into the message; ``decode`` parses
only the header and returns arrays that are read-only ``np.frombuffer`` views of the
received buffer (no copy: a 36 MB weights message decodes in microseconds).

Only plain little-endian numeric and bool dtypes are accepted (``ALLOWED_DTYPES``); object
dtypes are refused at both ends. Nothing is ever pickled. ``decode`` raises
:class:`CodecError` with a short ``reason`` code the receiver counts before it goes on:

    malformed     no magic, truncated, bad array header/length, extra bytes, invalid
                  UTF-8, too deep, two ``type`` fields
    oversized     the message (or an array) is larger than the limit, or the header, or one
                  string, list, map or array description in it, is larger than its type's
                  limit (``MESSAGE_LIMITS``)
    wrong_schema  not a map, no/other schema version (a schema-1 message: plain msgpack)
    unknown_type  ``type`` is not one this version knows
    bad_field     a required field is missing or of the wrong kind
    bad_dtype     an array dtype outside ALLOWED_DTYPES

The header is bounded BEFORE it is unpacked, so a hostile peer cannot make ``decode`` build
millions of objects (one 60 MiB heartbeat holding a list of 60 million empty maps once took
a learner from 0.5 to 4.7 GB for 55 s). The header length field is checked first against
``MAX_HEADER_BYTES``; a cheap peek (msgpack's ``skip``, which builds no objects) reads the
``type``; then the header must fit that type's budget and the whole message its type's
total (``MESSAGE_LIMITS``), and it is unpacked with msgpack's per-container limits
(``MAX_CONTAINER_LEN``, ``MAX_STR_BYTES``, ``MAX_EXT_BYTES``). A chunk's or weights'
arrays are raw sections after the header, so their headers are small too; only their
total size is the caller's ``max_bytes``. A header of unknown or missing type gets the
smallest budget. ``encode`` applies the same limits, so a sender learns of them first.

``check_chunk_values`` checks the values of a decoded chunk against the step spaces (the
gateway refuses the chunk with its answer). It returns ``''`` or ``"<reason>: <detail>"``,
the reason one of ``VALUE_REASONS``:

    non_finite     NaN or infinity in a float array
    not_boolean    ``is_first``, ``is_last``, ``is_terminal`` or ``intervention`` not 0/1
    out_of_bounds  an action outside its space's [low, high] (beyond ``BOUND_TOLERANCE``)
    bad_one_hot    a discrete action that is not exactly one-hot

``upgrade_v1`` re-encodes a schema-1 message (an actor's outbox may hold some from before
an upgrade) in this schema, with the same checks as ``decode``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping

import msgpack
import numpy as np

SCHEMA_VERSION = 2
MAGIC = b"\xc1DDM"
PREFIX = struct.Struct("<4sI")  # magic, header length
ARRAY_EXT = 1
ALIGN = 64  # array sections start at multiples of this (from the start of the message)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_NDIM = 8
MAX_DEPTH = 8

# Header budgets (bytes of msgpack between the prefix and the first array), checked before
# the header is unpacked. Every header object costs at least one byte, so a budget bounds
# what unpacking may build: at most ~90 bytes of Python objects per header byte.
# Measured headers: a 32-step UR5 chunk (10 keys) 351 B, the policy weights of the largest
# config (50 tensors, 35 MB of arrays) 2,249 B, a heartbeat with 64 episodes ~1 kB.
SMALL_HEADER_BYTES = 16 * 1024  # hello, heartbeat, ack, ...: kilobytes (an ack of ~1,500 seqs)
CHUNK_HEADER_BYTES = 16 * 1024  # ~400 keys
WEIGHTS_HEADER_BYTES = 64 * 1024  # ~1,400 tensors
MAX_HEADER_BYTES = max(SMALL_HEADER_BYTES, CHUNK_HEADER_BYTES, WEIGHTS_HEADER_BYTES)
SMALL_MESSAGE_BYTES = 64 * 1024  # whole message of a type that carries no array payload
# Inside a header: longest list or map (an ack's seqs, weights' tensors), str or bin (an
# actor id or a reason: 256 characters), array description (type byte, dtype, shape).
MAX_CONTAINER_LEN = 4096
MAX_STR_BYTES = 4096
MAX_EXT_BYTES = 1 + 1 + 16 + 1 + 8 * MAX_NDIM

ALLOWED_DTYPES = frozenset(
    np.dtype(t).str
    for t in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "<f2",
        "<f4",
        "<f8",
    )  # fmt: skip
)

REASONS = ("malformed", "oversized", "wrong_schema", "unknown_type", "bad_field", "bad_dtype")
VALUE_REASONS = ("non_finite", "not_boolean", "out_of_bounds", "bad_one_hot")

BOOLEAN_KEYS = ("is_first", "is_last", "is_terminal", "intervention")  # 0/1 in any dtype
ACTION_KEYS = ("action",)  # checked against their space's bounds (or one-hot if discrete)
# Slack on an action's bounds, relative to the bound (absolute near 0): a limit clamped in
# float64 and stored as float32 may land a rounding step (~6e-8 relative) outside it.
BOUND_TOLERANCE = 1e-5

_MSGPACK_MAP_FIRST = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


def _is_arrays(x) -> bool:
    return isinstance(x, dict) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in x.items()
    )


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_int_list(x) -> bool:
    return isinstance(x, list) and all(_is_int(i) for i in x)


def _is_str(x) -> bool:
    return isinstance(x, str) and 0 < len(x) <= 256


# Required fields per message type and a check for each (extra fields are allowed).
MESSAGE_FIELDS: dict[str, dict[str, Callable]] = {
    "hello": {"actor": _is_str},  # client -> gateway on connect; answered by "weights_info"
    "heartbeat": {"actor": _is_str},  # client -> gateway; answered by "weights_info"
    "chunk": {"actor": _is_str, "seq": _is_int, "data": _is_arrays},  # client -> gateway
    "ack": {"actor": _is_str, "seqs": _is_int_list},  # gateway -> client: held by the replay
    "nack": {"seqs": _is_int_list, "reason": _is_str},  # gateway -> client: refused for good
    "weights_info": {"version": _is_int},  # gateway -> client: newest version (-1: none yet)
    "weights_request": {"version": _is_int},  # client -> gateway: send if newer than this
    "weights": {"version": _is_int, "params": _is_arrays},  # gateway -> client
    "error": {"reason": _is_str},  # gateway -> client: your message was rejected
}

# Per message type: (largest header, largest whole message; None: the caller's max_bytes).
MESSAGE_LIMITS: dict[str, tuple[int, int | None]] = {
    kind: (SMALL_HEADER_BYTES, SMALL_MESSAGE_BYTES) for kind in MESSAGE_FIELDS
} | {"chunk": (CHUNK_HEADER_BYTES, None), "weights": (WEIGHTS_HEADER_BYTES, None)}
_UNKNOWN_TYPE_LIMITS = (SMALL_HEADER_BYTES, SMALL_MESSAGE_BYTES)


def _limits(kind: object, max_bytes: int) -> tuple[int, int]:
    """(header budget, message budget) of a message of type ``kind``."""
    known = isinstance(kind, str) and kind in MESSAGE_LIMITS
    header, total = MESSAGE_LIMITS[kind] if known else _UNKNOWN_TYPE_LIMITS
    return header, max_bytes if total is None else min(total, max_bytes)


class CodecError(ValueError):
    """A message that cannot be encoded or decoded; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _align(pos: int) -> int:
    return -(-pos // ALIGN) * ALIGN


# ---------------------------------------------------------------- encode


def _array_header(arr: np.ndarray) -> bytes:
    dtype = arr.dtype.str
    if dtype not in ALLOWED_DTYPES:
        raise CodecError(
            "bad_dtype", f"arrays of dtype {arr.dtype} cannot be sent; use numeric/bool"
        )
    if arr.ndim > MAX_NDIM:
        raise CodecError("bad_field", f"array with {arr.ndim} dims (at most {MAX_NDIM})")
    return struct.pack(
        f"<B{len(dtype)}sB{arr.ndim}Q", len(dtype), dtype.encode(), arr.ndim, *arr.shape
    )


def encode(msg: dict, max_bytes: int = DEFAULT_MAX_BYTES) -> bytearray:
    """The wire bytes of ``msg`` (a dict with ``type``); adds the schema version ``v``.

    Returns a bytearray filled in one pass: every array is copied once, into its section.
    """
    if not isinstance(msg, dict) or msg.get("type") not in MESSAGE_FIELDS:
        raise CodecError("unknown_type", f"message type {msg.get('type')!r} is not one of "
                         f"{sorted(MESSAGE_FIELDS)}")  # fmt: skip
    arrays: list[np.ndarray] = []

    def default(obj):
        if isinstance(obj, np.ndarray):
            ext = msgpack.ExtType(ARRAY_EXT, _array_header(obj))
            arrays.append(obj)
            return ext
        if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
            return obj.item()
        raise CodecError("bad_field", f"cannot encode {type(obj).__name__} (only numbers, "
                         f"str, bytes, lists, dicts and numeric numpy arrays travel)")  # fmt: skip

    header = msgpack.packb(
        {"v": SCHEMA_VERSION, "type": msg["type"], **msg}, default=default, use_bin_type=True
    )
    header_limit, max_bytes = _limits(msg["type"], max_bytes)
    if len(header) > header_limit:
        raise CodecError("oversized", f"{msg['type']} header of {len(header)} bytes exceeds "
                         f"{header_limit} (codec.MESSAGE_LIMITS); send fewer or shorter "
                         f"fields, keys or tensors")  # fmt: skip
    pos = PREFIX.size + len(header)
    offsets = []
    for arr in arrays:
        pos = _align(pos) if arr.nbytes else pos
        offsets.append(pos)
        pos += arr.nbytes
    if pos > max_bytes:
        raise CodecError("oversized", f"{msg['type']} message of {pos} bytes exceeds "
                         f"{max_bytes}; send smaller chunks (replay.chunk_length)")  # fmt: skip
    out = bytearray(pos)
    PREFIX.pack_into(out, 0, MAGIC, len(header))
    out[PREFIX.size : PREFIX.size + len(header)] = header
    if arrays:
        flat = np.frombuffer(out, np.uint8)
        for arr, off in zip(arrays, offsets, strict=True):
            if arr.nbytes:
                section = flat[off : off + arr.nbytes].view(arr.dtype).reshape(arr.shape)
                np.copyto(section, arr, casting="no")
    return out


# ---------------------------------------------------------------- decode


def _parse_array_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, bytes left after the header) of an ext-1 array description."""
    try:
        view = memoryview(data)
        n = view[0]
        dtype_str = bytes(view[1 : 1 + n]).decode("ascii")
        pos = 1 + n
        ndim = view[pos]
        pos += 1
        if ndim > MAX_NDIM:
            raise CodecError("malformed", f"array with {ndim} dims")
        shape = struct.unpack_from(f"<{ndim}Q", view, pos)
        pos += 8 * ndim
    except (IndexError, UnicodeDecodeError, struct.error):
        raise CodecError("malformed", "truncated array header") from None
    if dtype_str not in ALLOWED_DTYPES:
        raise CodecError("bad_dtype", f"array dtype {dtype_str!r} not allowed")
    return np.dtype(dtype_str), shape, len(view) - pos


def _count(shape) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


class _Sections:
    """The ext hook of one decode: turns array descriptions into views of the sections."""

    def __init__(self, view: memoryview, start: int):
        self.view = view
        self.pos = start  # where the previous array ended

    def __call__(self, code: int, data: bytes):
        if code != ARRAY_EXT:
            raise CodecError("malformed", f"unknown ext type {code}")
        dtype, shape, extra = _parse_array_header(data)
        if extra:
            raise CodecError("malformed", f"{extra} stray bytes after an array header")
        count = _count(shape)
        nbytes = count * dtype.itemsize
        start = _align(self.pos) if nbytes else self.pos
        if start + nbytes > len(self.view):
            raise CodecError(
                "malformed", f"array {dtype.str}{tuple(shape)} runs past the end of the message"
            )
        self.pos = start + nbytes
        return np.frombuffer(self.view, dtype=dtype, count=count, offset=start).reshape(shape)


def _depth_ok(obj, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(obj, dict):
        return all(_depth_ok(v, depth + 1) for v in obj.values())
    if isinstance(obj, list):
        return all(_depth_ok(v, depth + 1) for v in obj)
    return True


_UNPACK_LIMITS = {
    "max_str_len": MAX_STR_BYTES,
    "max_bin_len": MAX_STR_BYTES,
    "max_array_len": MAX_CONTAINER_LEN,
    "max_map_len": MAX_CONTAINER_LEN,
    "max_ext_len": MAX_EXT_BYTES,  # msgpack counts the ext type byte too
}
_OVER_LIMIT = re.compile(r"exceeds max_(str|bin|array|map|ext)_len")


def _unpack_error(e: Exception) -> CodecError:
    """The CodecError for what msgpack raised (it raises a zoo of types on bad input)."""
    text = f"{type(e).__name__}: {e}"[:200]
    return CodecError("oversized" if _OVER_LIMIT.search(str(e)) else "malformed", text)


def _unpack(data, ext_hook, limits: dict | None = None) -> object:
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True, ext_hook=ext_hook,
            **(limits or {}),
        )  # fmt: skip
    except CodecError:
        raise
    except Exception as e:
        raise _unpack_error(e) from None


def _peek_type(header: memoryview) -> object:
    """The value of the header's first ``type`` field, found without building the other
    values (msgpack's skip); None if the header is not a map or has none."""
    size = max(1, len(header))  # the buffer it allocates (0 would mean no limit)
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=size, **_UNPACK_LIMITS)
    try:
        unpacker.feed(header)
        for _ in range(unpacker.read_map_header()):
            if unpacker.unpack() == "type":
                return unpacker.unpack()
            unpacker.skip()
    except Exception:  # anything wrong is reported by the full unpack
        return None
    return None


def _check(msg: object, version: int = SCHEMA_VERSION) -> dict:
    if not isinstance(msg, dict):
        raise CodecError("wrong_schema", f"top level is {type(msg).__name__}, not a map")
    if not _is_int(msg.get("v")) or msg["v"] != version:
        raise CodecError("wrong_schema", f"schema version {msg.get('v')!r}, expected {version}")
    kind = msg.get("type")
    fields = MESSAGE_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise CodecError("unknown_type", f"message type {kind!r}")
    if not _depth_ok(msg):
        raise CodecError("malformed", "nested too deeply")
    for name, check in fields.items():
        if name not in msg or not check(msg[name]):
            raise CodecError("bad_field", f"{kind} message: field {name!r} missing or invalid")
    return msg


def _view(data) -> memoryview:
    try:
        view = memoryview(data)
        return (view if view.format == "B" and view.ndim == 1 else view.cast("B")).toreadonly()
    except (TypeError, ValueError):
        raise CodecError("malformed", f"cannot read a {type(data).__name__}") from None


def decode(data, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """The message in ``data`` (any bytes-like object), validated against its type; raises
    CodecError(reason). Arrays in it are read-only views of ``data``."""
    view = _view(data)
    size = len(view)
    if size > max_bytes:
        raise CodecError("oversized", f"{size} bytes > limit {max_bytes}")
    if size < PREFIX.size or view[:4] != MAGIC:
        if size and view[0] in _MSGPACK_MAP_FIRST:
            raise CodecError(
                "wrong_schema", f"a schema-1 message (plain msgpack); expected {SCHEMA_VERSION}"
            )
        raise CodecError("malformed", "no schema-2 message prefix")
    _, header_len = PREFIX.unpack_from(view)
    end = PREFIX.size + header_len
    if end > size:
        raise CodecError("malformed", f"header of {header_len} bytes runs past the end")
    if header_len > MAX_HEADER_BYTES:
        raise CodecError("oversized", f"header of {header_len} bytes > {MAX_HEADER_BYTES}")
    header = view[PREFIX.size : end]
    kind = _peek_type(header)
    header_limit, message_limit = _limits(kind, max_bytes)
    if header_len > header_limit or size > message_limit:
        raise CodecError("oversized", f"{str(kind)[:20]!r} message of {size} bytes (header "
                         f"{header_len}) > limits {message_limit} ({header_limit})")  # fmt: skip
    sections = _Sections(view, end)
    msg = _unpack(header, sections, _UNPACK_LIMITS)
    if sections.pos != size:
        raise CodecError(
            "malformed", f"{size - sections.pos} bytes after the last array (truncated header?)"
        )
    if isinstance(kind, str) and isinstance(msg, dict):
        final = msg.get("type")
        if not (isinstance(final, str) and final == kind):  # limits were chosen for ``kind``
            raise CodecError("malformed", "two type fields")
    return _check(msg)


# ---------------------------------------------------------------- chunk values


def check_chunk_values(data: Mapping[str, np.ndarray], spaces: Mapping) -> str:
    """``''`` if the values of a chunk (arrays shaped (T, ...)) are plausible, otherwise
    ``"<reason>: <detail>"`` with the reason one of VALUE_REASONS (see the module docstring).

    ``spaces`` maps a key to its space (``.dtype .shape .low .high .discrete``, as
    ``robots.base.Space``); keys, dtypes and shapes are checked before this. On a step with
    ``is_last`` the actor stores an all-zero action (none was executed there), so an
    all-zero action is accepted on those steps. Integer arrays (images) are not scanned.
    """
    for key, arr in data.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            count = arr.size - int(np.count_nonzero(np.isfinite(arr)))
            return f"non_finite: {key} has {count} NaN or infinite values"
    for key in BOOLEAN_KEYS:
        arr = data.get(key)
        if arr is not None and arr.dtype != bool and not ((arr == 0) | (arr == 1)).all():
            return f"not_boolean: {key} has values other than 0 and 1"
    unexecuted = np.asarray(data["is_last"], bool) if "is_last" in data else None
    for key, space in spaces.items():
        discrete = bool(getattr(space, "discrete", False))
        if key not in data or not (key in ACTION_KEYS or discrete):
            continue
        steps = np.asarray(data[key]).reshape(len(data[key]), -1)  # (T, N)
        if discrete:
            bad = ~(((steps == 0) | (steps == 1)).all(1) & (steps.sum(1) == 1))
        else:
            bad = _out_of_bounds(steps, space, data[key].shape[1:])
        if unexecuted is not None and unexecuted.shape == bad.shape:
            bad &= ~(unexecuted & (steps == 0).all(1))
        if bad.any():
            step = int(np.argmax(bad))
            if discrete:
                return f"bad_one_hot: {key} at step {step} is not one-hot"
            return f"out_of_bounds: {key} at step {step} is outside [low, high]"
    return ""


def _out_of_bounds(steps: np.ndarray, space, shape: tuple[int, ...]) -> np.ndarray:
    """(T,) True where a step of ``steps`` (T, N) lies outside the space's bounds."""
    bad = np.zeros(len(steps), bool)
    for bound, sign in ((space.low, -1.0), (space.high, 1.0)):
        if bound is None:
            continue
        limit = np.broadcast_to(np.asarray(bound, np.float64), shape).reshape(-1)
        limit = limit + sign * BOUND_TOLERANCE * np.maximum(1.0, np.abs(limit))
        bad |= ((steps < limit) if sign < 0 else (steps > limit)).any(1)
    return bad


# ---------------------------------------------------------------- schema 1


def _unpack_v1_array(code: int, data: bytes):
    if code != ARRAY_EXT:
        raise CodecError("malformed", f"unknown ext type {code}")
    dtype, shape, left = _parse_array_header(data)
    count = _count(shape)
    if count * dtype.itemsize != left:
        raise CodecError("malformed", f"array {dtype.str}{tuple(shape)} does not match its data")
    return np.frombuffer(data, dtype=dtype, count=count, offset=len(data) - left).reshape(shape)


def upgrade_v1(data, max_bytes: int = DEFAULT_MAX_BYTES) -> bytearray:
    """A schema-1 message (msgpack map, arrays inline as ext 1) re-encoded in schema 2."""
    view = _view(data)
    if len(view) > max_bytes:
        raise CodecError("oversized", f"{len(view)} bytes > limit {max_bytes}")
    msg = dict(_check(_unpack(view, _unpack_v1_array), version=1))
    del msg["v"]
    return encode(msg, max_bytes)


def is_v1(data) -> bool:
    """True for what looks like a schema-1 message (a plain msgpack map)."""
    return len(data) > 0 and _view(data)[0] in _MSGPACK_MAP_FIRST
