"""train.compile: the compiled update computes what the eager update computes, and what leaves
the learner (the ONNX export, the robot's policy) is eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo

from daydream.agent.agent import Agent
from daydream.agent.compiled import eager_copy
from daydream.core.config import load_config
from daydream.core.spaces import Space, step_spaces
from daydream.core.weights import ONNX_GRAPH_KEY
from tests.test_algorithms import _fixed_batch
from tests.tiny import tiny_model

OBS = {"state": Space((2,)), "image": Space((16, 16, 3), np.uint8), **step_spaces()}
ACT = {"action": Space((2,), np.float32, -1.0, 1.0)}


def _agent() -> Agent:
    torch.manual_seed(0)
    config = load_config(None, overrides=[*tiny_model(units=32), "train.compile=true"])
    return Agent(OBS, ACT, config)


@pytest.fixture
def same_random_numbers():
    """Inductor draws its own random numbers unless told to call torch's, as eager does."""
    import torch._inductor.config as inductor

    with inductor.patch(fallback_random=True):
        yield


def test_a_compiled_update_agrees_with_the_eager_update_on_a_fixed_batch(same_random_numbers):
    batch = _fixed_batch(images=True, rng=np.random.default_rng(0))
    eager, compiled = _agent(), _agent()
    assert compiled.compile_update() > 0
    for update in range(2):  # the first with the visualisation decoder, the second without
        torch.manual_seed(1 + update)
        want = eager.train(batch)
        torch.manual_seed(1 + update)  # the same samples, drawn in the same order
        with torch._dynamo.config.patch(suppress_errors=False):  # compiled, not fallen back
            got = compiled.train(batch)
        for key in ("wm/loss", "wm/kl", "wm/reward_loss", "wm/image_loss", "actor/loss",
                    "critic/loss"):  # fmt: skip
            assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), (update, key)
    for a, b in zip([*eager.wm.parameters(), *eager.behavior.parameters()],
                    [*compiled.wm.parameters(), *compiled.behavior.parameters()],
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    compiled.config.actor.backend = "onnx"  # a learner that compiles exports the eager policy
    assert ONNX_GRAPH_KEY in compiled.policy_weights().arrays


def test_the_policy_that_leaves_the_learner_is_eager_and_saves_as_before():
    agent = _agent()
    before = {k: v.clone() for k, v in agent.state_dict()["world_model"].items()}
    agent.compile_update()
    assert agent.state_dict()["world_model"].keys() == before.keys()  # no renamed parameters
    copy = eager_copy(agent.wm.rssm)
    assert "img_step" not in vars(copy) and "obs_step" not in vars(copy)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in copy.modules())
    assert "img_step" in vars(agent.wm.rssm)  # the learner's own stay compiled


def test_compile_mode_reaches_every_compiled_callable_and_marks_each_update(monkeypatch):
    """train.compile_mode is torch.compile's mode; where it replays CUDA graphs (reduce-overhead
    on CUDA) every update starts with a step mark, so no update reads the last one's outputs."""
    modes, marks = [], []

    def spy(fn, **kwargs):  # records the mode, compiles nothing
        modes.append(kwargs.get("mode"))
        return fn

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    monkeypatch.setattr("daydream.agent.agent.records_graphs", lambda mode, device: True)
    config = load_config(None, overrides=[*tiny_model(units=32), "train.compile=true",
                                          "train.compile_mode=reduce-overhead"])  # fmt: skip
    agent = Agent(OBS, ACT, config)
    assert agent.compile_update() == len(modes) > 2
    assert set(modes) == {"reduce-overhead"}
    batch = _fixed_batch(images=True, rng=np.random.default_rng(0))
    agent.train(batch)
    agent.train(batch)
    assert len(marks) == 2


def test_cuda_graphs_are_recorded_on_cuda_only_and_a_mode_torch_lacks_is_one_line():
    from daydream.agent.compiled import records_graphs

    assert records_graphs("reduce-overhead", torch.device("cuda"))
    assert records_graphs("max-autotune", torch.device("cuda"))
    assert not records_graphs("reduce-overhead", torch.device("cpu"))
    assert not records_graphs("default", torch.device("cuda"))
    assert not records_graphs("max-autotune-no-cudagraphs", torch.device("cuda"))
    config = load_config(None, overrides=[*tiny_model(units=32), "train.compile_mode=fast"])
    with pytest.raises(ValueError, match="train.compile_mode must be one of default, .*'fast'"):
        Agent(OBS, ACT, config)


def _state(agent: Agent) -> dict[str, torch.Tensor]:
    """Every tensor of the agent's state (networks, optimisers), copied."""
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            out[prefix] = value.detach().clone()
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}/{i}", item)
        else:
            out[prefix] = torch.tensor(float(value)) if isinstance(value, (int, float)) else value

    walk("", agent.state_dict())
    return out


def test_a_warm_up_compiles_before_the_first_batch_and_leaves_the_agent_as_it_was():
    """The learner compiles while the robots fill the replay: Agent.warm_up runs an update on a
    zero batch of the training shape and undoes it, so the first real update compiles nothing."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # what an earlier test compiled in this process is compiled again
    agent = _agent()
    agent.compile_update()
    before, rng = _state(agent), torch.get_rng_state()
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(suppress_errors=False):
        agent.warm_up(4, 12)
        compiled = counters["stats"]["unique_graphs"] - graphs
        assert compiled > 0
        after = _state(agent)
        assert after.keys() == before.keys()  # the optimisers hold no moments yet, as before
        for key, value in before.items():
            assert torch.equal(after[key], value) if isinstance(value, torch.Tensor) else (
                after[key] == value), key  # fmt: skip
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(p.grad is None for p in [*agent.wm.parameters(), *agent.behavior.parameters()])
        assert agent.updates == agent.behavior.updates == 0
        agent.train(_fixed_batch(images=True, rng=np.random.default_rng(0)))  # B 4, T 12
        agent.train(_fixed_batch(images=True, rng=np.random.default_rng(1)))
    assert counters["stats"]["unique_graphs"] - graphs == compiled  # nothing new to compile


def test_a_warm_up_that_is_interrupted_leaves_no_trace(monkeypatch):
    agent = _agent()
    before = _state(agent)

    train = agent.train

    def interrupted(batch):
        train(batch)  # the whole update happened, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(agent, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        agent.warm_up(2, 6)
    after = _state(agent)
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(after[key], value), key
    assert not agent.model_opt.opt.state  # the step's moments are gone with it


@pytest.mark.parametrize("compile_", [True, False])
def test_the_learner_compiles_while_the_robots_fill_the_replay(tmp_path, monkeypatch, compile_):
    import threading
    import time

    from daydream.replay.service import ReplayService
    from daydream.runtime.learner import Learner
    from daydream.runtime.links import InProcessLink

    calls = []
    monkeypatch.setattr(Agent, "warm_up", lambda self, *shape: calls.append((*shape, self.updates)))
    config = load_config("configs/pendulum.yaml", None, [
        *tiny_model(), f"train.compile={str(compile_).lower()}", "train.torch_threads=1",
        "train.batch_size=4", "train.batch_length=8", "train.prefill=32", f"logdir={tmp_path}",
    ])  # fmt: skip
    replay = ReplayService(capacity=1000, min_size=32)  # empty: the robots are still prefilling
    learner = Learner(config, replay, InProcessLink(replay, "actor-0"))
    thread = threading.Thread(target=learner.run)
    thread.start()
    deadline = time.monotonic() + (10 if compile_ else 1)
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    learner.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert calls == ([(4, 8, 0)] if compile_ else [])  # once, in the training shape, untrained
