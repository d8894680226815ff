"""CURVE keys: who may talk to a daydream server socket (gateway, remote safety console).

Key files are pyzmq's certificate format (``zmq.auth.create_certificates``):
``NAME.key`` holds the public key (safe to copy around), ``NAME.key_secret`` holds the public
and the secret key (keep it on the machine that owns it, mode 0600).

Layout that ``daydream keys --out DIR`` writes::

    DIR/gateway.key, DIR/gateway.key_secret     the server's pair (workstation)
    DIR/actor.key,   DIR/actor.key_secret       a client's pair (copy to the robot computer)
    DIR/allowed/actor.key                       the server's allow-list: public keys of clients

Usage, server side::

    public, secret = load_keypair("DIR/gateway.key_secret")
    auth = start_authenticator(ctx, "DIR/allowed")    # only clients whose .key is there
    sock = ctx.socket(zmq.ROUTER); make_curve_server(sock, secret)
    ...
    auth.stop()

Client side::

    public, secret = load_keypair("DIR/actor.key_secret")
    server_public, _ = load_keypair("DIR/gateway.key")
    make_curve_client(sock, public, secret, server_public)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER_NAME = "gateway"
ALLOWED_DIR = "allowed"


def key_directory(key_dir: str | Path, logdir: str | Path) -> Path:
    """Where the key files are: ``transport.key_dir`` as given when absolute, else inside the
    run's logdir (``--keys DIR`` on the command line is made absolute from the working
    directory). The one rule for the gateway, the robots and the consoles."""
    path = Path(key_dir)
    return path if path.is_absolute() else Path(logdir) / path


class KeyFileError(ValueError):
    """A key file that is missing or unusable."""


def create_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` and ``name.key_secret`` into ``directory``; return (public, secret)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def create_keys(out: str | Path, clients: list[str] | tuple[str, ...] = ("actor",)) -> dict:
    """Create the server pair, one pair per client name, and the allow-list with the clients."""
    out = Path(out)
    allowed = out / ALLOWED_DIR
    allowed.mkdir(parents=True, exist_ok=True)
    made = {SERVER_NAME: create_keypair(out, SERVER_NAME)}
    for name in clients:
        if name == SERVER_NAME:
            raise KeyFileError(f"client name '{name}' is reserved for the server; pick another")
        made[name] = create_keypair(out, name)
        shutil.copy(made[name][0], allowed / f"{name}.key")
    return made


def load_keypair(path: str | Path) -> tuple[bytes, bytes | None]:
    """(public, secret) from a ``.key`` (secret is None) or ``.key_secret`` file."""
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(
            f"key file {path} does not exist (create keys with `daydream keys --out DIR`, "
            f"or turn encryption off with --set transport.curve=false on a trusted network)"
        )
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as e:
        raise KeyFileError(f"key file {path} is not a ZeroMQ certificate: {e}") from None
    if public is None:
        raise KeyFileError(f"key file {path} holds no public key")
    return public, secret


def start_authenticator(context: zmq.Context, allowed_dir: str | Path) -> ThreadAuthenticator:
    """Start a ZAP authenticator that admits only CURVE clients whose ``*.key`` is in the dir.

    Call ``.stop()`` on the result when the server socket is closed.
    """
    allowed_dir = Path(allowed_dir)
    if not allowed_dir.is_dir() or not any(allowed_dir.glob("*.key")):
        raise KeyFileError(
            f"allow-list {allowed_dir} has no client public keys (*.key); copy each robot's "
            f"NAME.key there (see `daydream keys --out DIR`)"
        )
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(allowed_dir))
    return auth


def make_curve_server(socket: zmq.Socket, secret_key: bytes | None) -> None:
    """Make ``socket`` a CURVE server with the given secret key (call before bind)."""
    if not secret_key:
        raise KeyFileError("a CURVE server needs its secret key (the NAME.key_secret file)")
    socket.curve_secretkey = secret_key
    socket.curve_server = True


def make_curve_client(
    socket: zmq.Socket, public_key: bytes, secret_key: bytes | None, server_public_key: bytes
) -> None:
    """Make ``socket`` a CURVE client of the server with ``server_public_key`` (before connect)."""
    if not secret_key:
        raise KeyFileError("a CURVE client needs its secret key (the NAME.key_secret file)")
    socket.curve_publickey = public_key
    socket.curve_secretkey = secret_key
    socket.curve_serverkey = server_public_key
