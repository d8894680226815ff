"""daydream on a Ray cluster of two nodes (ray.cluster_utils.Cluster on this machine), placed by
custom resources as deploy/ray-cluster.yaml places them.

    node "learner"  {daydream_learner: 1}                      the learner (the Ray driver)
    node "replay"   {daydream_replay: 1, daydream_gateway: 1}  the replay and the gateway

`daydream learner --ray-address ADDR` with ``learner.replay_resource`` puts the replay on the
replay node, and with ``learner.gateway: replay`` (the default) the gateway in the replay
actor's own process there (the process that holds the gateway's listening socket is the
replay actor's), while it trains on the learner node; two simulated robots (`daydream actor`)
stream to the gateway and both receive its weights; the learner is stopped and started again
and finds the replay on the same node with everything it had stored. A driver on a machine
attaches to the head node of its cluster (Ray prefers the head among nodes of one host), so
here the head is the learner's node; placement is by the custom resources either way.

The cluster is its own Ray instance: the scenario runs in a subprocess, never beside the test
session's ``ray_session``. It takes about a minute on 2 cores (marked slow).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "pendulum.yaml")
SETTINGS = [
    *tiny_model(units=32), "train.torch_threads=1",
    "train.batch_size=4", "train.batch_length=8", "replay.min_size=64", "train.pretrain=10",
    "learner.publish_every_s=0.5", "learner.log_every_s=1", "learner.checkpoint_every_s=2",
    "actor.chunk_length=8", "actor.period_s=0.01", "actor.status_every_s=0.5",
    "transport.resend_after_s=2", "transport.heartbeat_timeout_ms=2000",
    "actor.sim_max_lag_steps=0",
    "learner.gateway=replay", "learner.replay_resource=daydream_replay",
]  # fmt: skip
ROBOTS = ("robot-a", "robot-b")
NODE_MB = 80  # object store per node (the smallest Ray allows is 75 MB)


@pytest.mark.slow
def test_replay_and_gateway_on_their_node_learner_on_its_own_robots_get_weights_restart(
    tmp_path,
):
    code = "import json, sys; from tests.test_ray_cluster import scenario; " \
           "print(json.dumps(scenario(sys.argv[1])))"  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=400)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    nodes = facts["nodes"]
    assert nodes["learner"] != nodes["replay"]
    for run in ("first", "reloaded", "restarted"):
        where = facts[run]
        assert where["learner"] == nodes["learner"], f"{run}: the learner ran elsewhere"
        assert where["ReplayHost"] == [nodes["replay"]], f"{run}: {where}"
        assert where["gateway"] == nodes["replay"], f"{run}: the gateway is not in the replay"
    first, again = facts["first"], facts["restarted"]
    for robot in ROBOTS:  # trained weights (version > 0) reached both robots, before and after
        assert first["versions"][robot] > 0, f"{robot} got no trained weights"
        assert again["versions"][robot] > first["versions"][robot]
        assert first["acked"][robot] > 0 and again["acked"][robot] > 0  # their chunks stored
    assert first["actors"] == again["actors"] == len(ROBOTS)  # each learner heard both
    # the restarted learner resumed, and its replay, on the same node, held what the first one
    # held when it stopped (no robot streaming meanwhile), then went on storing
    assert facts["reloaded"]["resumed"]
    assert facts["reloaded"]["replay_steps"] == facts["held"] > 0
    assert again["replay_steps"] > facts["held"]


# ---------------------------------------------------------------------------- the scenario
def scenario(workdir: str) -> dict:
    """Runs in its own process: cluster, learner, robots, restart; returns what it saw."""
    import ray
    from ray.cluster_utils import Cluster

    from daydream.wire.curve import create_keys

    work = Path(workdir)
    keys = work / "keys"
    create_keys(keys, ["actor"])
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"daydream_learner": 1},
        "object_store_memory": NODE_MB << 20, "include_dashboard": False,
    })  # fmt: skip
    replay_node = cluster.add_node(
        num_cpus=1, resources={"daydream_replay": 1, "daydream_gateway": 1},
        object_store_memory=NODE_MB << 20,
    )  # fmt: skip
    cluster.wait_for_nodes()
    facts: dict = {"nodes": {"learner": cluster.head_node.node_id, "replay": replay_node.node_id}}
    port = free_port()
    procs: list[subprocess.Popen] = []
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        learner = start_learner(cluster.address, port, work, keys, "learner-1.log")
        robots = [start_robot(robot, port, work, keys) for robot in ROBOTS]
        procs += [learner, *robots]
        facts["first"] = observe(work, learner, port, 0, versions_above={})
        for robot in robots:  # they wait for their last acknowledgements
            stop(robot)
        facts["held"] = settled_replay_steps(work)
        stop(learner)  # a checkpoint on the way out
        before = len(metrics_rows(work))
        learner = start_learner(cluster.address, port, work, keys, "learner-2.log")
        procs.append(learner)
        facts["reloaded"] = {**first_row(work, learner, before), **placement(learner.pid, port)}
        facts["reloaded"]["resumed"] = "resumed from" in (work / "learner-2.log").read_text()
        procs += [start_robot(robot, port, work, keys) for robot in ROBOTS]
        facts["restarted"] = observe(work, learner, port, before, facts["first"]["versions"])
    finally:
        for proc in procs:
            stop(proc)
        ray.shutdown()
        cluster.shutdown()
    return facts


def start_learner(address: str, port: int, work: Path, keys: Path, log: str) -> subprocess.Popen:
    return spawn(["learner", "--config", CONFIG, "--bind", f"tcp://127.0.0.1:{port}",
                  "--ray-address", address, "--logdir", str(work / "run"), "--keys", str(keys),
                  "--set", *SETTINGS], work / log)  # fmt: skip


def start_robot(robot: str, port: int, work: Path, keys: Path) -> subprocess.Popen:
    return spawn(["actor", "--config", CONFIG, "--learner", f"tcp://127.0.0.1:{port}",
                  "--id", robot, "--logdir", str(work / "robots"), "--keys", str(keys),
                  "--set", *SETTINGS], work / f"{robot}.log")  # fmt: skip


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "daydream", *args], stdout=f,
                                stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the learner checkpoints on the way out), SIGKILL if it does not exit."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def observe(
    work: Path, learner: subprocess.Popen, port: int, rows_before: int, versions_above: dict,
    timeout: float = 150,
) -> dict:  # fmt: skip
    """Wait until both robots act with weights newer than ``versions_above`` (0 when not named)
    and this learner has logged its replay and both robots; then where everything runs."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        assert learner.poll() is None, f"the learner exited: {learner.returncode}"
        status = {robot: read_json(work / "robots" / "actors" / robot / "status.json")
                  for robot in ROBOTS}  # fmt: skip
        if all(s and s["policy_version"] > versions_above.get(r, 0) for r, s in status.items()):
            rows = metrics_rows(work)[rows_before:]
            if rows and rows[-1]["actors"] == len(ROBOTS):
                break
        time.sleep(0.5)
    else:
        raise TimeoutError(f"robots never got new weights: {status}")
    return {
        **placement(learner.pid, port),
        "versions": {r: s["policy_version"] for r, s in status.items()},
        "acked": {r: s["outbox"].get("acked", 0) for r, s in status.items()},
        "replay_steps": int(rows[-1]["replay_steps"]),
        "actors": int(rows[-1]["actors"]),
    }


def placement(learner_pid: int, port: int) -> dict:
    """The node of every live replay actor, of the gateway (the node of the replay actor whose
    process holds the listening socket on ``port``; None: no replay actor holds it) and of the
    learner's driver (Ray's GCS tables; the job table's driver address holds its node)."""
    from ray._private import state
    from ray.core.generated import gcs_pb2

    from tests.test_gateway_in_replay import listening_pid

    holder = listening_pid(f"tcp://127.0.0.1:{port}")
    where: dict = {"ReplayHost": [], "gateway": None}
    for actor in state.actors().values():
        name = actor["ActorClassName"].split(".")[-1]
        if actor["State"] == "ALIVE" and name == "ReplayHost":
            where[name].append(actor["Address"]["NodeID"])
            if actor["Pid"] == holder:
                where["gateway"] = actor["Address"]["NodeID"]
    accessor = state.state._connect_and_get_accessor()
    for raw in accessor.get_job_table(skip_submission_job_info_field=True,
                                      skip_is_running_tasks_field=True):  # fmt: skip
        job = gcs_pb2.JobTableData.FromString(raw)
        if job.driver_pid == learner_pid and not job.is_dead:
            where["learner"] = job.driver_address.node_id.hex()
    return where


def settled_replay_steps(work: Path, timeout: float = 60) -> int:
    """The replay's size once three metric rows in a row agree (no robot is streaming)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [row["replay_steps"] for row in metrics_rows(work)[-3:]]
        if len(steps) == 3 and len(set(steps)) == 1:
            return int(steps[0])
        time.sleep(0.5)
    raise TimeoutError("the replay's size kept changing with no robot streaming")


def first_row(work: Path, learner: subprocess.Popen, before: int, timeout: float = 120) -> dict:
    """The first metric row of the learner started after ``before`` rows were written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert learner.poll() is None, f"the learner exited: {learner.returncode}"
        rows = metrics_rows(work)[before:]
        if rows:
            return {"replay_steps": int(rows[0]["replay_steps"])}
        time.sleep(0.5)
    raise TimeoutError("the restarted learner logged nothing")


def metrics_rows(work: Path) -> list[dict]:
    """The learner's metric rows (the ones with the replay's size) in metrics.jsonl."""
    path = work / "run" / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [row for row in map(json.loads, lines) if "replay_steps" in row]


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
