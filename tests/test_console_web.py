"""The fleet console: `daydream run --console` with two simulated UR5s, driven in a real browser.

Debian's Chromium (scripts/install puts it there) runs headless under Playwright; nothing is
downloaded. The end-to-end tests share one `daydream run` (module fixture, ~30 s to start
on 2 cores): the page shows both robots, its stop latches one through the robots' CURVE
console within the deadline while the other goes on acting, and only a typed name releases
it; without the token, with a wrong one, or for a forged robot id, nothing happens.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.test_runtime import kill, spawn, wait_for
from tests.tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "sim_ur5_reach.yaml")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PERIOD_S = 0.1  # the UR5's control tick
# A stop reaches the supervisor within one control tick plus network time; the page's click,
# HTTP, ZeroMQ and a loaded 2-core CI machine (learner training beside two robots) get 0.9 s.
STOP_DEADLINE_S = PERIOD_S + 0.9
RUN_SETTINGS = [
    *tiny_model(units=16), "train.torch_threads=1", "train.batch_size=4", "train.batch_length=8",
    "replay.min_size=64", "train.pretrain=2", "learner.log_every_s=1",
    "learner.publish_every_s=2", f"actor.period_s={PERIOD_S}", "actor.sim_max_lag_steps=0",
    "actor.status_every_s=0.5", "actor.heartbeat_every_s=0.5", "actor.shutdown_grace_s=1",
    "ur5.camera.enabled=true",
    "console.push_every_s=0.25", "console.poll_every_s=0.5",
    # a tick stalled by the loaded machine must not latch the watchdog: the test tells which
    # robot the page stopped by who latched it
    "safety.watchdog_deadline_s=5",
]  # fmt: skip


# ---------------------------------------------------------------- helpers


def http(url: str, token: str | None = None, method: str = "GET", body: dict | None = None,
         headers: dict | None = None) -> tuple[int, bytes, Any]:  # fmt: skip
    """(status, body, headers) of one request (no cookies, no redirects followed)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def robot_status(run, robot: str) -> dict:
    """The robot's own supervisor status, read over its CURVE console (as `daydream teleop`)."""
    from daydream.safety.console import ConsoleClient

    endpoint = run["fleet"]()[robot]["console"]["endpoint"]
    keys = run["logdir"] / "keys"
    client = ConsoleClient(endpoint, keys / "gateway.key_secret", keys / "actor.key", 5.0)
    try:
        reply = client.status()
    finally:
        client.close()
    assert reply is not None, f"{robot}'s console did not answer"
    return reply["status"]


def steps_of(run, robot: str) -> int:
    """Executed steps, from the actor's status.json (written every 0.5 s)."""
    path = run["logdir"] / "actors" / robot / "status.json"
    try:
        return json.loads(path.read_text())["steps"]
    except (OSError, ValueError, KeyError):
        return -1


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium under Playwright (never a downloaded browser)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not os.path.exists(CHROMIUM):
        message = ("the fleet console's browser tests need Debian's chromium and the playwright "
                   "package: run bash scripts/install (apt-get install chromium, as root)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 760})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`daydream run` with two simulated UR5s and the fleet console on a free loopback port."""
    tmp = tmp_path_factory.mktemp("fleet")
    logdir, log = tmp / "run", tmp / "run.log"
    proc = spawn(["run", "--config", CONFIG, "--actors", "2", "--steps", "0", "--no-report",
                  "--logdir", str(logdir), "--console", "127.0.0.1:0",
                  "--set", *RUN_SETTINGS], log)  # fmt: skip
    logs = (log, logdir / "actors/actor-0/actor.log", logdir / "actors/actor-1/actor.log")
    try:
        url = wait_for(lambda: next((w for line in log.read_text().splitlines()
                                     if "fleet console on " in line
                                     for w in line.split() if w.startswith("http")), None),
                       60, "the fleet console's address", logs)  # fmt: skip
        base, token = url.split("?token=")

        def fleet() -> dict:
            status, body, _ = http(base + "api/fleet", token)
            assert status == 200, body
            return {r["id"]: r for r in json.loads(body)["robots"]}

        def both_acting():
            robots = fleet()
            return len(robots) == 2 and all(
                r["state"] == "acting" and r["console"]["reachable"] and (r["steps"] or 0) > 0
                for r in robots.values())  # fmt: skip

        wait_for(both_acting, 90, "both robots acting, their consoles answering", logs)
        yield {"base": base, "token": token, "url": url, "logdir": logdir, "fleet": fleet,
               "logs": logs, "proc": proc}  # fmt: skip
    finally:
        kill(proc, signal.SIGTERM)
        kill(proc)


# ---------------------------------------------------------------- end to end, in the browser


def test_page_stops_one_robot_within_the_deadline_the_other_acts_on_reset_needs_a_name(
    run, page
):
    page.goto(run["url"])  # the token once in the address; the page keeps it in a cookie
    assert page.url == run["base"], "the token is moved out of the address bar"
    card = {r: page.locator(f'article.robot[data-robot="{r}"]') for r in ("actor-0", "actor-1")}
    for r in card:
        card[r].locator(".state", has_text="acting").wait_for(timeout=10000)
    assert page.locator("#live").inner_text() == "live"
    assert "replay" in page.locator("#learner-figures").inner_text()
    # the camera thumbnail is a decoded image on the page
    thumb = card["actor-1"].locator("img.thumb")
    thumb.wait_for(state="visible", timeout=10000)
    loaded = "img => img.complete && img.naturalWidth > 0"
    page.wait_for_function(loaded, arg=thumb.element_handle())

    steps_before = steps_of(run, "actor-1")
    card["actor-0"].locator("button.stop").click()
    status = wait_for(lambda: (s := robot_status(run, "actor-0"))["stopped"] and s, 5,
                      "actor-0 latched", run["logs"])  # fmt: skip
    pressed_at = float(card["actor-0"].get_attribute("data-stop-pressed-at")) / 1000.0
    latched_after = status["stopped_since"] - pressed_at
    assert 0 <= latched_after < STOP_DEADLINE_S, latched_after
    assert status["stop_source"] == "console:gateway (fleet console)"
    card["actor-0"].locator(".state", has_text="STOPPED").wait_for(timeout=5000)
    assert "stop latched" in page.locator("#message").inner_text()

    # the other robot goes on acting; the stopped one does not
    time.sleep(1.0)  # a tick in flight when the stop came, and a status.json written after it
    stopped_steps = steps_of(run, "actor-0")
    time.sleep(2.0)
    assert steps_of(run, "actor-1") > steps_before + 5, "actor-1 kept acting"
    assert not robot_status(run, "actor-1")["stopped"]
    assert steps_of(run, "actor-0") == stopped_steps, "actor-0 executes nothing while latched"
    assert card["actor-1"].locator(".state").inner_text() == "acting"

    # releasing needs a typed name: without one nothing is sent and the stop stays
    card["actor-0"].locator("button.reset-button").click()
    assert "type your name" in page.locator("#message").inner_text()
    assert robot_status(run, "actor-0")["stopped"]
    card["actor-0"].locator("input.reset-name").fill("Ada Lovelace")
    card["actor-0"].locator("button.reset-button").click()
    wait_for(lambda: not robot_status(run, "actor-0")["stopped"], 5, "actor-0 released",
             run["logs"])  # fmt: skip
    card["actor-0"].locator(".state", has_text="acting").wait_for(timeout=10000)
    log = run["logs"][1].read_text()
    assert "released by console:gateway (Ada Lovelace)" in log
    wait_for(lambda: steps_of(run, "actor-0") > stopped_steps, 10, "actor-0 acting again")


def test_no_token_a_wrong_token_and_forged_robot_ids_get_nothing(run, page):
    base, token = run["base"], run["token"]
    for path in ("", "api/fleet", "api/events", "static/console.js",
                 "api/robots/actor-0/thumbnail", "no/such/page"):  # fmt: skip
        assert http(base + path)[0] == 401, path
        assert http(base + path, token="x" * 43)[0] == 401, path
        assert http(base + path + "?token=" + "y" * 43)[0] == 401, path
    assert http(base, headers={"Cookie": "daydream_console=" + "z" * 43})[0] == 401
    for robot in ("actor-0", "actor-1"):
        assert http(f"{base}api/robots/{robot}/stop", method="POST", body={})[0] == 401
        assert http(f"{base}api/robots/{robot}/stop", "w" * 43, "POST", {})[0] == 401
        assert http(f"{base}api/robots/{robot}/reset", None, "POST", {"name": "Eve"})[0] == 401
    assert http(f"{base}api/stop_all", method="POST", body={})[0] == 401
    # the right token, but robots that do not exist or ids that are not ids
    for forged in ("actor-9", "actor-0%2F..", "%3Cscript%3E", "actor-0%00", "a" * 80):
        assert http(f"{base}api/robots/{forged}/stop", token, "POST", {})[0] == 404, forged
        assert http(f"{base}api/robots/{forged}/thumbnail", token)[0] == 404, forged
    # a POST that is not JSON, or comes from another site, is refused
    assert http(f"{base}api/robots/actor-0/stop", token, "POST",
                headers={"Content-Type": "text/plain"})[0] == 403  # fmt: skip
    assert http(f"{base}api/robots/actor-0/stop", token, "POST", {},
                {"Origin": "http://evil.example"})[0] == 403  # fmt: skip
    # a reset needs a name that is a name
    for name in ("", "   ", "<script>", "x" * 65, 42):
        assert http(f"{base}api/robots/actor-0/reset", token, "POST", {"name": name})[0] == 400
    # the browser with a wrong token sees the 401 text and no robot
    response = page.goto(base + "?token=" + "v" * 43)
    assert response.status == 401
    assert "needs its token" in page.content()
    assert page.locator("article.robot").count() == 0
    # and nothing of it reached a robot
    for robot in ("actor-0", "actor-1"):
        assert not robot_status(run, robot)["stopped"], robot


def test_stop_all_latches_every_robot_and_the_thumbnail_is_the_camera(run, page):
    base, token = run["base"], run["token"]
    status, body, headers = http(f"{base}api/robots/actor-0/thumbnail", token)
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (64, 64, 3)  # the UR5's 64 x 64 camera (under the 96 px cap)
    assert "default-src 'none'" in headers["Content-Security-Policy"]

    page.goto(run["url"])
    page.locator('article.robot[data-robot="actor-1"] .state', has_text="acting").wait_for()
    page.locator("#stop-all").click()
    for robot in ("actor-0", "actor-1"):
        wait_for(lambda r=robot: robot_status(run, r)["stopped"], 5, f"{robot} latched")
    page.locator("#message", has_text="stop all: 2 robots latched").wait_for(timeout=5000)
    for robot in ("actor-0", "actor-1"):
        status, body, _ = http(f"{base}api/robots/{robot}/reset", token, "POST",
                               {"name": "Grace Hopper"})  # fmt: skip
        assert status == 200 and not json.loads(body)["status"]["stopped"], body


# ---------------------------------------------------------------- what robots report is text


def test_markup_a_robot_reports_is_shown_as_text_and_foreign_ids_never_appear(tmp_path, page):
    from daydream.runtime.console_web import FleetConsole, FleetSources
    from daydream.runtime.robot_consoles import RobotConsoles
    from daydream.wire.curve import create_keys
    from daydream.wire.fleet import FleetRegistry

    create_keys(tmp_path, ["actor"])
    evil = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    registry = FleetRegistry()
    registry.note({"actor": "arm-1", "status": {
        "stopped": True, "stop_source": evil, "reason": evil, "stopped_since": time.time(),
        "steps": 3, "last_fault": evil}, "console": {"endpoint": "tcp://127.0.0.1:9",
        "key": "A" * 40}}, key="B" * 40)  # fmt: skip
    assert not registry.note({"actor": "<b>arm</b>"}, None)
    learner = {"env_steps": 0, "updates": 0, "weights_version": -1, "replay_steps": 0,
               "losses": {}, "spi": {"phase": "prefill", "prefill": 10}, "curve": []}  # fmt: skip
    consoles = RobotConsoles(tmp_path / "gateway.key_secret", 0.5, 60.0, registry.robots)
    console = FleetConsole(FleetSources(registry.robots, registry.thumbnail, lambda: learner),
                           consoles, "t" * 43, "127.0.0.1", 0, 0.2, 5.0).start()  # fmt: skip
    try:
        page.goto(console.login_url)
        card = page.locator('article.robot[data-robot="arm-1"]')
        card.locator(".state", has_text="STOPPED").wait_for(timeout=10000)
        assert evil in card.locator(".stop-info").inner_text()
        assert evil in card.locator(".figures").inner_text()
        assert card.locator("img").count() == 1  # only the page's own (hidden) thumbnail
        assert card.locator("script").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert page.locator("article.robot").count() == 1
        # a console whose key is not the robot's own is refused, and the page says so
        assert "not the key it connected with" in card.locator(".console-info").inner_text()
        assert card.locator("button.stop").is_disabled()
        status, body, _ = http(console.url + "api/robots/arm-1/stop", "t" * 43, "POST", {})
        assert status == 409 and b"not the key it connected with" in body
    finally:
        console.close()


# ---------------------------------------------------------------- pieces


def test_registry_keeps_typed_fields_and_refuses_bad_ids_thumbnails_and_endpoints():
    from daydream.wire.fleet import FleetRegistry, read_console, read_status

    registry = FleetRegistry(max_robots=2)
    assert registry.note({"actor": "ur5-left", "policy_version": 7, "status": {
        "stopped": "yes", "steps": -3, "tick_rate": float("nan"), "reason": "x" * 1000,
        "overridden": True, "secret": "kept nowhere"}}, None, [1.0, float("inf")])  # fmt: skip
    robot = registry.robots()[0]
    assert robot["status"] == {"reason": "x" * 300, "overridden": True}
    assert robot["returns"] == [1.0] and robot["policy_version"] == 7
    for bad in ("", "../etc", "a b", "<x>", "é", "x" * 65, 5, None):
        assert not registry.note({"actor": bad}, None)
    assert registry.note({"actor": "ur5-right"}, None)
    assert not registry.note({"actor": "third"}, None)  # max_robots
    assert registry.counts()["refused_ids"] == 9
    # thumbnails: a small JPEG or PNG as a uint8 array, nothing else
    jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].reshape(-1)
    for thumb in (b"\xff\xd8\xff", np.zeros(10, np.uint8), jpeg.astype(np.int16),
                  np.zeros(49 * 1024, np.uint8)):  # fmt: skip
        registry.note({"actor": "ur5-left", "thumb": thumb}, None)
    assert registry.thumbnail("ur5-left") is None and registry.counts()["refused_thumbs"] == 4
    registry.note({"actor": "ur5-left", "thumb": jpeg}, None)
    assert registry.thumbnail("ur5-left") == (jpeg.tobytes(), "image/jpeg")
    # consoles: a host to reach, and the key the robot connected with
    key = "K" * 40
    assert read_console({"endpoint": "tcp://10.0.0.5:5557", "key": key}, key)["problem"] == ""
    assert read_console({"endpoint": "tcp://[::1]:5557", "key": key}, None)["problem"] == ""
    for endpoint in ("tcp://0.0.0.0:5557", "tcp://*:5557", "ipc:///tmp/x", "tcp://h:99999"):
        assert read_console({"endpoint": endpoint, "key": key}, key)["problem"], endpoint
    assert "not the key" in read_console({"endpoint": "tcp://h:1", "key": key}, "L" * 40)[
        "problem"]  # fmt: skip
    assert read_status("not a dict") == {}


def test_a_heartbeat_with_a_thumbnail_and_64_episodes_fits_the_codec_budgets():
    from daydream.core.spaces import Space
    from daydream.runtime.fleet_report import ThumbnailTap, image_key
    from daydream.wire.codec import SMALL_HEADER_BYTES, SMALL_MESSAGE_BYTES, decode, encode
    from daydream.wire.fleet import STATUS_FIELDS, FleetRegistry

    assert image_key({"tcp": Space((6,), np.float32), "image": Space((64, 64, 3), np.uint8)}) == (
        "image")  # fmt: skip
    tap = ThumbnailTap("image", every_s=0.2, size=96, fmt="jpeg", quality=80)
    camera = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)  # worst case
    tap.offer({"image": camera})
    tap.offer({"image": np.zeros_like(camera)})  # within every_s: not copied
    thumb = tap.take()
    assert tap.take() is None  # each offered frame is sent once
    picture = cv2.imdecode(thumb, cv2.IMREAD_COLOR)
    assert picture.shape == (72, 96, 3)  # longest side 96, aspect kept
    assert abs(float(picture.mean()) - float(camera.mean())) < 10  # the noise, not the zeros
    status = {name: {"bool": True, "int": 10**9, "float": 1e9, "float?": 1.0,
                     "text": "é" * 300}[kind] for name, kind in STATUS_FIELDS.items()}  # fmt: skip
    msg = {"type": "heartbeat", "actor": "a" * 64, "policy_version": 10**9, "status": status,
           "episodes": [[-1e9, 10**9, {f"figure_{i}": 1e9 for i in range(8)}]] * 64,
           "console": {"endpoint": "tcp://" + "h" * 60 + ":65535", "key": "K" * 40},
           "thumb": thumb}  # fmt: skip
    data = encode(msg)
    header = int.from_bytes(data[4:8], "little")
    assert header < SMALL_HEADER_BYTES and len(data) < SMALL_MESSAGE_BYTES, (header, len(data))
    registry = FleetRegistry()
    registry.note(decode(data), "K" * 40, [-1e9])
    assert registry.thumbnail("a" * 64)[0] == thumb.tobytes()


def test_console_settings_bind_loopback_and_refuse_other_addresses_without_a_token(tmp_path):
    from daydream.runtime.console_auth import (
        ConsoleAuthError,
        is_loopback,
        parse_bind,
        resolve_token,
        valid_person,
    )

    assert parse_bind(":8080") == ("127.0.0.1", 8080)
    assert parse_bind("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_bind("[::1]:80") == ("::1", 80)
    for bad in ("8080", "host:", "h:70000", ":x"):
        with pytest.raises(ConsoleAuthError):
            parse_bind(bad)
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("lab-ws.local")
    with pytest.raises(ConsoleAuthError, match="without a token"):
        resolve_token("", tmp_path, "0.0.0.0")
    made = resolve_token("", tmp_path, "127.0.0.1")  # loopback: one is made and kept
    assert len(made) >= 43 and (tmp_path / "console.token").stat().st_mode & 0o777 == 0o600
    assert resolve_token("", tmp_path, "0.0.0.0") == made  # now it exists: any address
    with pytest.raises(ConsoleAuthError, match="at least"):
        resolve_token("short", tmp_path, "127.0.0.1")
    assert valid_person("Ada Lovelace") and valid_person("Łukasz O'Brien-Smith")
    for bad in ("", " Ada", "1Ada", "<b>", "Ada\n", "x" * 65, None):
        assert not valid_person(bad), bad


def test_daydream_keys_writes_a_console_token_and_learner_refuses_a_public_bind_without_one(
    tmp_path,
):
    import subprocess
    import sys

    keys = tmp_path / "keys"
    made = subprocess.run([sys.executable, "-m", "daydream", "keys", "--out", str(keys),
                           "--console-token"], capture_output=True, text=True, cwd=REPO)
    assert made.returncode == 0, made.stderr
    token = (keys / "console.token").read_text().strip()
    assert len(token) >= 43 and not (keys / "gateway.key").exists()  # only the token
    refused = subprocess.run(
        [sys.executable, "-m", "daydream", "learner", "--config", CONFIG, "--logdir",
         str(tmp_path / "run"), "--keys", str(tmp_path / "none"), "--console", "0.0.0.0:8080"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "without a token" in refused.stderr and "Traceback" not in refused.stderr


def test_a_stop_always_latches_and_a_reset_records_the_person_who_released_it(tmp_path):
    from daydream.safety.console import ConsoleClient, ConsoleServer
    from daydream.safety.supervisor import SafetySupervisor
    from daydream.wire.curve import create_keys, load_keypair
    from tests.test_safety import RecordingRobot, continuous, safety_config

    create_keys(tmp_path, ["actor"])
    (tmp_path / "console_allowed").mkdir()
    shutil.copy(tmp_path / "gateway.key", tmp_path / "console_allowed" / "gateway.key")
    sup = SafetySupervisor(RecordingRobot(continuous(2)), safety_config())
    sup.reset()
    server = ConsoleServer(sup, "tcp://127.0.0.1:*", tmp_path / "actor.key_secret",
                           tmp_path / "console_allowed").start()  # fmt: skip
    public, _ = load_keypair(tmp_path / "actor.key")
    client = ConsoleClient(server.endpoint, tmp_path / "gateway.key_secret", public, 2.0)
    try:
        reply = client.request("stop", person="\x00" * 100)  # a name that does not fit
        assert reply["ok"] and sup.status["stop_source"] == "console:gateway"
        reply = client.request("reset", person="\x07bell")
        assert not reply["ok"] and sup.stopped  # a reset names a person, or none
        reply = client.request("reset", person="Ada")
        assert reply["ok"] and not sup.stopped
        client.request("stop", person="fleet console")
        assert sup.status["stop_source"] == "console:gateway (fleet console)"
    finally:
        client.close()
        server.close()


def test_robot_view_shows_disconnected_since_the_last_report_and_the_newest_safety_state():
    from daydream.runtime.console_web import robot_view

    entry = {"id": "arm", "last_seen": 100.0, "status_at": 100.0, "returns": [1.0],
             "status": {"stopped": False, "overridden": True, "steps": 5},
             "console": {"endpoint": "tcp://h:1", "key": "K" * 40, "problem": ""}}  # fmt: skip
    view = robot_view(entry, None, now=101.0, stale_after_s=5.0, newest=3)
    assert view["state"] == "overridden" and view["console"]["reachable"] is None
    view = robot_view(entry, None, now=106.0, stale_after_s=5.0, newest=3)
    assert view["state"] == "disconnected" and view["since"] == 100.0
    # the console's answer after the heartbeat wins: the stop latched since it came
    answer = {"at": 100.5, "reachable": True, "status": {
        "stopped": True, "stop_source": "key", "reason": "r", "stopped_since": 100.4,
        "overridden": False}}  # fmt: skip
    view = robot_view(entry, answer, now=101.0, stale_after_s=5.0, newest=3)
    assert view["state"] == "stopped" and view["stop"] == {"source": "key", "reason": "r",
                                                           "since": 100.4}  # fmt: skip
    # ... and a newer heartbeat wins over an older answer
    view = robot_view({**entry, "status_at": 100.6}, answer, now=101.0, stale_after_s=5.0,
                      newest=3)  # fmt: skip
    assert view["state"] == "overridden" and view["stop"] is None
    assert "no safety console" in robot_view({**entry, "console": {}}, None, 101.0, 5.0, 3)[
        "console"]["problem"]  # fmt: skip
