"""The fleet console: a web page, served by the learner, that shows every robot and stops any.

    browser ──HTTP, token──▶ FleetConsole: Starlette app on uvicorn, a thread of the learner
                               │ reads  the gateway's FleetRegistry (robots' heartbeats)
                               │        and Learner.console_stats (updates/s, replay, curve)
                               └ stop / reset ──RobotConsoles: ZeroMQ CURVE──▶ each robot's
                                                ConsoleServer ──▶ its SafetySupervisor

    daydream learner --config C --console :8080      (or daydream run ... --console :8080)
    -> fleet console on http://127.0.0.1:8080/?token=...

Routes (every one answers 401 without the token, see ``console_auth.py``)::

    GET  /                                the page (?token=T sets the cookie, then redirects)
    GET  /static/console.js|console.css   its script and style
    GET  /api/fleet                       one snapshot (JSON): robots and learner
    GET  /api/events                      server-sent events: a snapshot every push_every_s
    GET  /api/robots/ID/thumbnail         the robot's newest camera thumbnail (JPEG/PNG)
    POST /api/robots/ID/stop              latch the robot's safety stop
    POST /api/robots/ID/reset             {"name": "..."}: release it, in that person's name
    POST /api/stop_all                    stop every robot that has a console

Nothing here can send motion: the robots' consoles are sent ``stop``, ``reset`` and
``status`` only. Robot ids are validated (``wire/fleet.py``) and unknown ones get 404; a
POST must be JSON from this page's own origin; the page writes everything robots report
as text (never as markup) and its Content-Security-Policy allows no inline script.

Why Starlette on uvicorn: a small, well-kept ASGI toolkit (the core of FastAPI) with
routing, cookies, JSON and streaming responses (server-sent events) and nothing else to
pull in (anyio, and h11 for uvicorn); uvicorn runs it in one thread of the learner with
its own event loop, on a socket this module binds (so a port in use is a plain error).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daydream.runtime.console_auth import token_matches, valid_person
from daydream.runtime.robot_consoles import RobotConsoles
from daydream.wire.fleet import valid_robot_id

STATIC_DIR = Path(__file__).with_name("console_static")
STATIC_FILES = {"console.js": "text/javascript", "console.css": "text/css"}
COOKIE = "daydream_console"
MAX_BODY = 4096  # bytes of a POST body (a name)
STATUS_KEYS = ("stopped", "stop_source", "reason", "stopped_since", "overridden", "step",
               "episode", "needs_reset")  # fmt: skip
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class FleetSources:
    """Where the console reads what it shows (the learner's hub and the learner)."""

    robots: Callable[[], list[dict]]  # FleetRegistry.robots()
    thumbnail: Callable[[str], tuple[bytes, str] | None]  # FleetRegistry.thumbnail(id)
    learner: Callable[[], dict]  # Learner.console_stats()


def robot_view(entry: dict, answer: dict | None, now: float, stale_after_s: float,
               newest: int) -> dict:  # fmt: skip
    """What the page shows of one robot: its heartbeat's report, with the supervisor's state
    from whichever is newer, the heartbeat or the robot console's last answer."""
    status = dict(entry.get("status") or {})
    safety = {k: status.get(k) for k in ("stopped", "stop_source", "reason", "stopped_since",
                                         "overridden")}  # fmt: skip
    if answer and answer.get("status") and answer["at"] >= entry.get("status_at", 0.0):
        safety.update({k: answer["status"].get(k) for k in safety})
    last_seen = float(entry.get("last_seen", 0.0))
    if now - last_seen > stale_after_s:
        state, since = "disconnected", last_seen
    elif safety["stopped"]:
        state, since = "stopped", safety["stopped_since"]
    elif safety["overridden"]:
        state, since = "overridden", None
    else:
        state, since = "acting", None
    console = entry.get("console") or {}
    at = entry.get("thumb_at") or 0.0
    return {
        "id": entry["id"], "state": state, "since": since, "last_seen": last_seen,
        "stop": {"source": safety["stop_source"] or "", "reason": safety["reason"] or "",
                 "since": safety["stopped_since"]} if safety["stopped"] else None,
        "steps": status.get("steps"), "episodes": status.get("episodes"),
        "tick_rate": status.get("tick_rate"), "tick_p99_ms": status.get("tick_p99_ms"),
        "outbox": status.get("outbox"), "last_fault": status.get("last_fault", ""),
        "policy_version": entry.get("policy_version"), "newest_version": newest,
        "returns": list(entry.get("returns") or []),
        "thumbnail": f"/api/robots/{entry['id']}/thumbnail?at={at:.3f}" if at else "",
        "console": {
            "endpoint": console.get("endpoint", ""),
            "problem": console.get("problem", "" if console else "the robot runs no safety "
                                   "console (teleop.console)"),  # fmt: skip
            "reachable": None if answer is None else bool(answer["reachable"]),
        },
    }  # fmt: skip


class FleetConsole:
    """Owns the fleet console's web server (a Starlette app on uvicorn, in a thread of the
    learner), its token, and its connections to the robots' safety consoles."""

    def __init__(self, sources: FleetSources, consoles: RobotConsoles, token: str, host: str,
                 port: int, push_every_s: float, stale_after_s: float) -> None:  # fmt: skip
        self.sources, self.consoles, self._token = sources, consoles, token
        self.host, self.port = host, int(port)
        self.push_every_s, self.stale_after_s = float(push_every_s), float(stale_after_s)
        self._pages = {name: (STATIC_DIR / name).read_bytes()
                       for name in ("index.html", *STATIC_FILES)}  # fmt: skip
        self._closing = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def login_url(self) -> str:
        """The address to open: it carries the token once, the page then keeps it in a cookie."""
        return f"{self.url}?token={self._token}"

    # ------------------------------------------------------------ what the page shows
    def snapshot(self) -> dict:
        """Robots and learner, as the page shows them (JSON-ready)."""
        now = time.time()
        learner = self.sources.learner()
        newest = int(learner.get("weights_version", -1))
        robots = [robot_view(r, self.consoles.answer(r["id"]), now, self.stale_after_s, newest)
                  for r in self.sources.robots()]  # fmt: skip
        return {"time": now, "stale_after_s": self.stale_after_s, "robots": robots,
                "learner": learner}  # fmt: skip

    # ------------------------------------------------------------ the app
    def _build_app(self):
        from starlette.applications import Starlette
        from starlette.routing import Route

        guard = self._guard
        routes = [
            Route("/", guard(self._index)),
            Route("/static/{name}", guard(self._static)),
            Route("/api/fleet", guard(self._fleet)),
            Route("/api/events", guard(self._events)),
            Route("/api/robots/{robot_id}/thumbnail", guard(self._thumbnail)),
            Route("/api/robots/{robot_id}/stop", guard(self._stop), methods=["POST"]),
            Route("/api/robots/{robot_id}/reset", guard(self._reset), methods=["POST"]),
            Route("/api/stop_all", guard(self._stop_all), methods=["POST"]),
            Route("/{rest:path}", guard(self._not_found), methods=["GET", "POST"]),
        ]
        return Starlette(routes=routes)

    def _authorized(self, request) -> bool:
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header.lower().startswith("bearer ") else None
        given = bearer or request.cookies.get(COOKIE) or request.query_params.get("token")
        return token_matches(given, self._token)

    def _guard(self, handler):
        from starlette.responses import PlainTextResponse

        async def guarded(request):
            if not self._authorized(request):
                response = PlainTextResponse(
                    "401: the fleet console needs its token: open the address the learner "
                    "printed (http://HOST:PORT/?token=...)", status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="daydream fleet console"'},
                )  # fmt: skip
            elif request.method == "POST" and (problem := _post_problem(request)):
                response = _json({"ok": False, "error": problem}, 403)
            else:
                response = await handler(request)
            response.headers.update(SECURITY_HEADERS)
            return response

        return guarded

    async def _index(self, request):
        from starlette.responses import RedirectResponse, Response

        if request.query_params.get("token"):  # keep the token in a cookie, not the address
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self._token, httponly=True, samesite="strict", path="/")
            return response
        return Response(self._pages["index.html"], media_type="text/html; charset=utf-8")

    async def _not_found(self, request):
        return _json({"error": "not found"}, 404)

    async def _static(self, request):
        from starlette.responses import Response

        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return _json({"error": "not found"}, 404)
        return Response(self._pages[name], media_type=f"{STATIC_FILES[name]}; charset=utf-8")

    async def _fleet(self, request):
        from starlette.concurrency import run_in_threadpool

        return _json(await run_in_threadpool(self.snapshot))

    async def _events(self, request):
        import anyio
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import StreamingResponse

        async def stream():
            while not self._closing.is_set():
                try:
                    snapshot = await run_in_threadpool(self.snapshot)
                except Exception as e:  # noqa: BLE001 - the hub is stopping: skip this one
                    yield f"event: problem\ndata: {json.dumps(str(e)[:200])}\n\n"
                else:
                    yield f"data: {json.dumps(snapshot)}\n\n"
                await anyio.sleep(self.push_every_s)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})  # fmt: skip

    async def _thumbnail(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import Response

        robot_id = request.path_params["robot_id"]
        thumb = await run_in_threadpool(self.sources.thumbnail, robot_id) if valid_robot_id(
            robot_id) else None  # fmt: skip
        if thumb is None:
            return _json({"error": "no thumbnail"}, 404)
        return Response(thumb[0], media_type=thumb[1])

    # ------------------------------------------------------------ stop and reset
    async def _console_of(self, robot_id: str) -> tuple[dict | None, Any]:
        """(the robot's console, None) or (None, an error response)."""
        from starlette.concurrency import run_in_threadpool

        robots = await run_in_threadpool(self.sources.robots) if valid_robot_id(robot_id) else []
        entry = next((r for r in robots if r["id"] == robot_id), None)
        if entry is None:
            return None, _json({"ok": False, "error": "no such robot"}, 404)
        console = entry.get("console") or {}
        if not console.get("endpoint") or console.get("problem"):
            problem = console.get("problem") or (
                f"robot {robot_id} runs no safety console: start its actor with teleop.console "
                "(daydream run --console starts one per robot)"
            )
            return None, _json({"ok": False, "error": problem}, 409)
        return console, None

    def _result(self, robot_id: str, what: str, reply: dict | None, request) -> Any:
        who = request.client.host if request.client else "?"
        if reply is None:
            print(f"fleet console: {what} {robot_id} from {who}: no answer", flush=True)
            return _json({"ok": False, "error": f"robot {robot_id} did not answer within "
                          f"{self.consoles.timeout} s"}, 504)  # fmt: skip
        status = {k: reply.get("status", {}).get(k) for k in STATUS_KEYS}
        done = "latched" if status["stopped"] else "released"
        print(f"fleet console: {what} {robot_id} from {who}: "
              f"{reply['error'] or done}", flush=True)  # fmt: skip
        body = {"ok": bool(reply.get("ok")), "robot": robot_id, "status": status,
                "error": reply.get("error", "")}  # fmt: skip
        return _json(body, 200 if body["ok"] else 409)

    async def _stop(self, request):
        from starlette.concurrency import run_in_threadpool

        robot_id = request.path_params["robot_id"]
        console, error = await self._console_of(robot_id)
        if error is not None:
            return error
        reply = await run_in_threadpool(self.consoles.stop, robot_id, console)
        return self._result(robot_id, "stop", reply, request)

    async def _reset(self, request):
        from starlette.concurrency import run_in_threadpool

        robot_id = request.path_params["robot_id"]
        body = await _read_json(request)
        name = body.get("name").strip() if isinstance(body.get("name"), str) else None
        if not valid_person(name):
            return _json({"ok": False, "error": "type your name to release the stop (letters "
                          "first; letters, digits, spaces, . ' -; at most 64)"}, 400)  # fmt: skip
        console, error = await self._console_of(robot_id)
        if error is not None:
            return error
        reply = await run_in_threadpool(self.consoles.reset, robot_id, console, name)
        return self._result(robot_id, f"reset by {name!r} of", reply, request)

    async def _stop_all(self, request):
        from starlette.concurrency import run_in_threadpool

        robots = await run_in_threadpool(self.sources.robots)
        consoles = {r["id"]: r["console"] for r in robots
                    if (r.get("console") or {}).get("endpoint")
                    and not r["console"].get("problem")}  # fmt: skip
        replies = await run_in_threadpool(self.consoles.stop_all, consoles)
        results = {rid: {"ok": bool(reply and reply.get("ok")),
                         "error": "" if reply else "no answer"}
                   for rid, reply in replies.items()}  # fmt: skip
        missing = [r["id"] for r in robots if r["id"] not in consoles]
        print(f"fleet console: stop all: {sum(r['ok'] for r in results.values())} of "
              f"{len(robots)} latched", flush=True)  # fmt: skip
        ok = all(r["ok"] for r in results.values()) and not missing
        return _json({"ok": ok, "robots": results, "without_console": missing})

    # ------------------------------------------------------------ server
    def start(self) -> FleetConsole:
        """Bind and serve in a background thread (RuntimeError if the address is taken)."""
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(64)
        except OSError as e:
            sock.close()
            raise RuntimeError(f"the fleet console cannot listen on {self.host}:{self.port} "
                               f"({e.strerror}); pick another with --console HOST:PORT") from None
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2)  # fmt: skip
        self._server = uvicorn.Server(config)
        self.consoles.start()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="daydream-console-web", daemon=True)  # fmt: skip
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not self._server.started:
            self.close()
            raise RuntimeError("the fleet console's web server did not start (see above)")
        return self

    def close(self) -> None:
        """Stop serving (open pages see the stream end) and close the robot connections."""
        self._closing.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.consoles.close()


def _json(body: dict, status: int = 200):
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status)


def _post_problem(request) -> str:
    """Why a POST is refused ('' when it is fine): it must be JSON, from this page's origin."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return "send JSON (Content-Type: application/json)"
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
        return "a request from another site"
    return ""


async def _read_json(request) -> dict:
    """The body as a JSON object ({} when it is not one or is larger than MAX_BODY)."""
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY:
            return {}
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def console_settings(config, bind: str) -> tuple[str, int, str]:
    """(host, port, token) of the fleet console at ``bind`` (``[HOST]:PORT``), checked before
    anything starts: ConsoleAuthError (one line) for a bad address, or beyond loopback
    without a token made beforehand."""
    from daydream.runtime.console_auth import parse_bind, resolve_token
    from daydream.wire.curve import key_directory

    host, port = parse_bind(bind)
    key_dir = key_directory(config.transport.key_dir, config.logdir)
    return host, port, resolve_token(config.console.token, key_dir, host)


def start_console(config, learner, host: str, port: int, token: str) -> FleetConsole:
    """The fleet console of ``daydream learner --console`` / ``daydream run --console``: the
    learner's gateway (robots, thumbnails) and counters, robots reached with the workstation's
    key pair (``teleop.client_key``). RuntimeError / FileNotFoundError: one line."""
    from daydream.wire.curve import key_directory

    block = config.console
    key_dir = key_directory(config.transport.key_dir, config.logdir)
    consoles = RobotConsoles(
        key_dir / f"{config.teleop.client_key}.key_secret", config.teleop.reply_timeout_s,
        block.poll_every_s, learner.hub.robots, block.stale_after_s,
    )  # fmt: skip
    sources = FleetSources(learner.hub.robots, learner.hub.thumbnail, learner.console_stats)
    console = FleetConsole(sources, consoles, token, host, port, block.push_every_s,
                           block.stale_after_s)  # fmt: skip
    return console.start()
