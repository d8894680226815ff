"""Stream owners: each actor stream belongs to the robot key that first wrote to it.

With CURVE on, the gateway knows the public key of the robot that sent each chunk (ZeroMQ's
ZAP ``User-Id``: the key's 40-character Z85 text, as in the robot's ``NAME.key`` file). The
first key to write a stream owns it; a chunk from any other key naming that stream is
refused (``stream_owned``) before anything else is looked at, so one robot can neither
store chunks in another's stream nor have the other's chunks dropped as duplicates.

    LOGDIR/replay/streams.json     {"ur5-0": "<Z85 public key>", "ur5-1": "...", ...}

The file is written (``atomic_write``) before the first chunk of a new stream is, so a
binding survives any restart. To give a stream to a new key on purpose (the robot
computer was replaced, its key renewed): ``daydream learner --rebind STREAM=NEW.key``, or
delete the stream's entry while the learner is stopped (the next key that writes it owns
it). Chunks without a key (``transport.curve: false``, a trusted network; single-process
training) are not checked and bind nothing: without CURVE there is no identity to bind to.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from daydream.core.files import atomic_write

log = logging.getLogger(__name__)

FILENAME = "streams.json"
KEY_CHARS = 40  # a CURVE public key as Z85 text
REFUSED = "stream_owned"


def short(key: str) -> str:
    """The first characters of a key, enough for a person to tell two keys apart."""
    return f"{key[:8]}..."


class StreamOwners:
    """Owns the stream -> key bindings and their file (``None`` directory: memory only).

    ``check`` says whether a key may write a stream; ``claim`` binds a new stream to the key
    of its first accepted chunk (in memory); ``commit`` writes new bindings before the chunks
    that made them are written (``Replay.add_batch``), ``discard`` drops them when that write
    is not going to happen.
    """

    def __init__(self, directory: str | Path | None = None, read_only: bool = False) -> None:
        self.path = Path(directory) / FILENAME if directory is not None else None
        self.read_only = read_only  # another process's file: an unreadable one stays in place
        self._owners: dict[str, str] = {}
        self._new: dict[str, str] = {}
        self.warnings: list[str] = []
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            owners = json.loads(self.path.read_text())
            if not isinstance(owners, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and len(v) == KEY_CHARS
                for k, v in owners.items()
            ):
                raise ValueError("not a map of stream names to 40-character keys")
        except (OSError, ValueError) as e:
            if self.read_only:
                self.warnings.append(f"{self.path} is unreadable ({e}); no stream has an owner")
                return
            aside = self.path.with_name(self.path.name + ".corrupt")
            os.replace(self.path, aside)
            self.warnings.append(
                f"{self.path} is unreadable ({e}); moved to {aside}: every stream now belongs "
                f"to the next robot key that writes it (check {aside} and restore the entries)"
            )
            return
        self._owners = owners

    def owner(self, stream: str) -> str | None:
        return self._new.get(stream) or self._owners.get(stream)

    def check(self, stream: str, key: str | None) -> str:
        """'' if ``key`` may write ``stream`` (None: no key, not checked), else the refusal."""
        owner = self.owner(stream)
        if key is None or owner is None or owner == key:
            return ""
        return (
            f"{REFUSED}: stream {stream!r} belongs to robot key {short(owner)}, this is "
            f"{short(key)}; give this robot its own actor id, or rebind the stream "
            f"(docs/PROTOCOL.md)"
        )

    def claim(self, stream: str, key: str | None) -> None:
        """``stream`` belongs to ``key`` from now on if it belonged to nobody."""
        if key is not None and self.owner(stream) is None:
            self._new[stream] = key

    def commit(self) -> None:
        """Persist the bindings made since the last commit (before their chunks are stored)."""
        if not self._new:
            return
        merged = {**self._owners, **self._new}
        if self.path is not None:
            atomic_write(self.path, json.dumps(merged, indent=1, sort_keys=True).encode())
        for stream, key in self._new.items():
            log.info("replay: stream %r now belongs to robot key %s", stream, short(key))
        self._owners, self._new = merged, {}

    def discard(self) -> None:
        self._new = {}

    def rebind(self, stream: str, key: str) -> str | None:
        """Give ``stream`` to ``key`` on purpose; returns the key it belonged to before."""
        if len(key) != KEY_CHARS:
            raise ValueError(f"a robot key is {KEY_CHARS} characters of Z85, got {len(key)}")
        before = self.owner(stream)
        self._new[stream] = key
        self.commit()
        return before

    def __len__(self) -> int:
        return len(self._owners) + len(self._new)

    def as_dict(self) -> dict[str, str]:
        return {**self._owners, **self._new}
