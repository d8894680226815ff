"""Who may use the fleet console: its token, where it binds, and the checks on what people type.

The token is one random string (``secrets.token_urlsafe(32)``: 256 bits) that every request
must carry: ``Authorization: Bearer TOKEN``, the ``daydream_console`` cookie (set when the
page is first opened as ``/?token=TOKEN``), or ``?token=TOKEN``. It comes from
``console.token`` in the config or, when that is empty, from ``<key dir>/console.token``
(``daydream keys --out DIR`` writes it; mode 0600).

    token = resolve_token(config.console.token, key_dir, host)  # ConsoleAuthError: one line
    host, port = parse_bind(":8080")                            # ("127.0.0.1", 8080)

The console binds to loopback unless told otherwise; a bind to any other address needs a
token that was configured beforehand (a loopback console without one makes one and writes
it to the key directory, so the next start uses the same).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
from pathlib import Path

TOKEN_FILE = "console.token"
MIN_TOKEN_CHARS = 16
TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-.~]+")
# a person's name for a reset: letters first, then letters, digits, spaces and . ' -
PERSON = re.compile(r"[^\W\d_][\w .'-]{0,63}")


class ConsoleAuthError(ValueError):
    """A console setting that cannot be used (one line that says what to do)."""


def parse_bind(text: str) -> tuple[str, int]:
    """``[HOST]:PORT`` as (host, port); no host is loopback (127.0.0.1). Port 0: any free."""
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConsoleAuthError(
            f"--console {text!r}: expected [HOST]:PORT, e.g. :8080 (loopback) or 0.0.0.0:8080"
        )
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(key_dir: str | Path, token: str | None = None) -> Path:
    """Write ``token`` (default: a new one) to ``<key_dir>/console.token``, mode 0600."""
    path = Path(key_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write((token or new_token()) + "\n")
    os.chmod(path, 0o600)
    return path


def check_token(token: str, where: str) -> str:
    """``token`` if it is usable, else ConsoleAuthError naming ``where`` it came from."""
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS or not TOKEN_CHARS.fullmatch(token):
        raise ConsoleAuthError(
            f"the console token in {where} must be at least {MIN_TOKEN_CHARS} characters of "
            f"A-Z a-z 0-9 _ - . ~ (make one with `daydream keys --out DIR --console-token`)"
        )
    return token


def resolve_token(configured: str, key_dir: str | Path, host: str) -> str:
    """The console's token: ``configured`` (console.token), else the key directory's token
    file; with neither, a new one written there, but only for a loopback bind."""
    if configured:
        return check_token(configured, "console.token")
    path = Path(key_dir) / TOKEN_FILE
    if path.is_file():
        return check_token(path.read_text(), str(path))
    if not is_loopback(host):
        raise ConsoleAuthError(
            f"the fleet console would listen on {host}, beyond this machine, without a token: "
            f"make one with `daydream keys --out {key_dir} --console-token` or set "
            f"console.token, or bind to loopback (--console :PORT)"
        )
    return write_token(key_dir).read_text().strip()


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison of a request's token with the console's."""
    if not given:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def valid_person(name: object) -> bool:
    """Whether ``name`` is a person's name the console accepts for a reset."""
    return isinstance(name, str) and PERSON.fullmatch(name) is not None
