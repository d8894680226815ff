"""The Agent: world model + behaviour + optimisers, behind the API the processes use.

    agent = Agent(obs_space, act_space, config)
    action, state = agent.policy(obs, state, mode="explore")   # robot side, every tick
    metrics = agent.train(batch)                                 # learner side, (B, T, ...) arrays
    weights = agent.policy_weights()                             # encoder + RSSM + actor, numpy
    agent.load_policy_weights(weights)                           # robot side, between two ticks
    agent.state_dict() / agent.load_state_dict(...)              # checkpoints, optimisers included

Continuous actions are in [-1, 1] (robots normalise their own action ranges);
discrete actions are one-hot vectors.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from daydream.agent.behavior import Behavior
from daydream.agent.checkpoint import Snapshot
from daydream.agent.compiled import check_mode, compile_networks, records_graphs
from daydream.agent.rssm import State
from daydream.agent.world_model import WorldModel, preprocess, to_torch
from daydream.core.spaces import Space, record_spaces
from daydream.core.weights import PolicyWeights

POLICY_MODULES = ("encoder", "rssm", "actor")
# the phases of an update, labelled for torch.profiler (bench/train_step.py --profile); a label
# costs a few microseconds when no profiler runs
phase = torch.profiler.record_function


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (faster than float32): CUDA with
    bf16 support, or a CPU with AVX512-BF16 or AMX (elsewhere oneDNN emulates it, slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """``train.precision`` -> the autocast dtype of an update (None: float32 throughout)."""
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    raise ValueError(f"train.precision must be float32, bfloat16 or auto, got {name!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Optimizer:
    """Adam with gradient-norm clipping and decoupled weight decay over one group of modules.

    Weight decay as DreamerV2 (common/tfutils.py) and dreamerv3-torch apply it: before each
    Adam step every weight matrix and convolution kernel is multiplied by (1 - wd), whatever
    the learning rate. (torch's AdamW multiplies by 1 - lr * wd: 1e-6 became 1e-10 per step,
    which float32 rounds away.) DayDreamer decays by 1 - wd * lr with wd = 1e-2, lr = 1e-4:
    the same 1e-6 per step. As there, biases and layer-norm parameters are not decayed.
    """

    def __init__(self, params, cfg) -> None:
        if not 0 <= cfg.wd < 1:
            raise ValueError(
                f"opt.wd is the fraction the weights shrink per step, in [0, 1); got {cfg.wd}"
            )
        self.params = [p for p in params if p.requires_grad]
        self.decayed = [p for p in self.params if p.dim() >= 2]  # weight matrices, kernels
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, eps=cfg.eps)
        self.clip, self.wd = cfg.clip, cfg.wd

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def clip_and_step(self) -> float:
        """Clip this group's gradient norm and step; returns the norm before clipping."""
        norm = nn.utils.clip_grad_norm_(self.params, self.clip)
        if self.wd:
            with torch.no_grad():
                for p in self.decayed:
                    p.mul_(1 - self.wd)
        self.opt.step()
        return float(norm)

    def step(self, loss: torch.Tensor) -> float:
        self.zero_grad()
        loss.backward()
        return self.clip_and_step()


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Gradients still flow through ``module``'s computations, but not into its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class Agent:
    """Owns the world model, the behaviour (actor, critics) and their optimisers."""

    def __init__(
        self,
        obs_space: dict[str, Space],
        act_space: dict[str, Space],
        config,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = config
        self.obs_space, self.act_space = obs_space, act_space
        self.device = resolve_device(str(device or config.device))
        space = act_space["action"]
        self.discrete = space.discrete
        if not self.discrete and (
            np.any(np.asarray(space.low) != -1) or np.any(np.asarray(space.high) != 1)
        ):
            raise ValueError(
                f"continuous action spaces must be normalised to [-1, 1], got low={space.low} "
                f"high={space.high}; rescale inside the robot driver"
            )
        self.wm = WorldModel(obs_space, act_space, config.model).to(self.device)
        self.behavior = Behavior(
            self.wm.rssm.feat_size,
            space.shape[0],
            self.discrete,
            config.behavior,
            config.model.act,
            config.model.norm,
        ).to(self.device)
        # The visualisation decoder (reconstruction-free models) learns on detached features
        # with its own optimiser, so that its gradient norm never scales the world model's clip.
        if config.model.vis_every < 1:
            raise ValueError(
                f"model.vis_every is the number of updates between two of the visualisation "
                f"decoder's; it must be at least 1, got {config.model.vis_every}"
            )
        vis = self.wm.heads["vis_decoder"] if "vis_decoder" in self.wm.heads else None
        vis_ids = {id(p) for p in vis.parameters()} if vis is not None else set()
        self.model_opt = Optimizer(
            [p for p in self.wm.parameters() if id(p) not in vis_ids], config.model.opt
        )
        self.vis_opt = Optimizer(vis.parameters(), config.model.opt) if vis is not None else None
        self.actor_opt = Optimizer(self.behavior.actor.parameters(), config.behavior.actor_opt)
        self.critic_opt = Optimizer(self.behavior.critic.parameters(), config.behavior.critic_opt)
        self.updates = 0
        self._sensor_keys = self.wm.images + self.wm.vectors
        self.precision = resolve_precision(str(config.train.precision), self.device)
        self.compile_mode = check_mode(str(config.train.compile_mode))
        self._graphs = False  # compile_update in a mode that replays CUDA graphs
        self._onnx_graph: dict[str, np.ndarray] | None = None  # exported once (actor.backend onnx)

    @property
    def precision_name(self) -> str:
        """What an update's matrix products run in (``train.precision`` resolved here)."""
        return "bfloat16" if self.precision is torch.bfloat16 else "float32"

    def compile_update(self) -> int:
        """``train.compile``: compile the per-step parts of an update (daydream/agent/compiled.py;
        the learner calls this, a robot's policy stays eager). Returns the parts compiled."""
        self._graphs = records_graphs(self.compile_mode, self.device)
        return compile_networks(self.wm, self.behavior, self.compile_mode)

    def warm_up(self, batch_size: int, length: int) -> None:
        """One update on a zero batch of the training shape, then undone: what
        ``compile_update`` compiled compiles now (the learner calls this while the robots
        fill the replay) and not on the first real batch. Parameters, buffers, optimiser
        moments, counters and torch's random generators end as they were."""
        batch = {
            key: np.zeros((batch_size, length, *space.shape), space.dtype)
            for key, space in record_spaces(self.obs_space, self.act_space).items()
        }
        batch["is_first"][:, 0] = True
        snapshot = Snapshot(self)
        snapshot.take()
        cuda = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda):
                self.train(batch)
        finally:  # also when interrupted: never keep an update on made-up data
            snapshot.restore()
            self.wm.zero_grad(set_to_none=True)
            self.behavior.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ acting
    def initial_state(self, batch: int) -> tuple[State, torch.Tensor]:
        latent = self.wm.rssm.initial(batch, self.device)
        return latent, torch.zeros(batch, self.act_space["action"].shape[0], device=self.device)

    @torch.no_grad()
    def policy(self, obs: dict[str, np.ndarray], state=None, mode: str = "explore"):
        """One step of the policy on a single observation or a batch of them.

        mode: ``explore`` samples, ``eval`` takes the mode, ``random`` acts uniformly at random
        (the latent state is still tracked). Returns ({"action": array}, state).
        """
        single = np.ndim(obs["is_first"]) == 0
        data = {
            k: np.asarray(obs[k])[None] if single else np.asarray(obs[k])
            for k in [*self._sensor_keys, "is_first"]
        }
        data = preprocess(to_torch(data, self.device), self.wm.images)
        batch = data["is_first"].shape[0]
        latent, prev_action = state if state is not None else self.initial_state(batch)
        embed = self.wm.encoder(data)
        latent, _ = self.wm.rssm.obs_step(
            latent, prev_action, embed, data["is_first"], sample=mode != "eval"
        )
        dist = self.behavior.actor(self.wm.rssm.feat(latent))
        if mode == "eval":
            action = dist.mode()
        elif mode == "explore":
            action = dist.sample()
            noise = self.config.behavior.expl_noise
            if noise and not self.discrete:
                action = (action + noise * torch.randn_like(action)).clamp(-1, 1)
        elif mode == "random":
            action = self._random_action(batch)
        else:
            raise ValueError(f"policy mode must be explore, eval or random, got {mode!r}")
        action = action.detach()
        if self.discrete:  # exact one-hot (straight-through samples carry float rounding)
            action = nn.functional.one_hot(action.argmax(-1), action.shape[-1]).float()
        out = action.cpu().numpy().astype(np.float32)
        return {"action": out[0] if single else out}, (latent, action)

    def executed(self, state, action: np.ndarray):
        """The recurrent state with the action the robot executed (after limits, holds and a
        person's override) in place of the policy's proposal: the model consumes a_{t-1} as
        executed, in training (the replay stores it) and while acting (DESIGN.md section 1)."""
        latent, proposal = state
        done = torch.as_tensor(np.asarray(action), dtype=proposal.dtype, device=proposal.device)
        return latent, done.reshape(proposal.shape)

    def _random_action(self, batch: int) -> torch.Tensor:
        size = self.act_space["action"].shape[0]
        if self.discrete:
            index = torch.randint(size, (batch,), device=self.device)
            return nn.functional.one_hot(index, size).float()
        return torch.rand(batch, size, device=self.device) * 2 - 1

    # ------------------------------------------------------------------ learning
    def autocast(self):
        """The forward passes of an update in ``train.precision`` (backward follows it)."""
        dtype = self.precision or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.precision is not None)

    def train_world_model(
        self, data: dict[str, torch.Tensor], vis: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The world model's half of an update on a preprocessed batch (``preprocess``), with
        the visualisation decoder's step when ``vis``; returns the posteriors and metrics."""
        with self.autocast():
            wm_loss, post, metrics = self.wm.loss(data, vis=vis)
        if "wm/model_loss" in metrics:  # wm/loss: the world model's own, on every update alike
            metrics["wm/loss"] = metrics.pop("wm/model_loss")
        with phase("wm: backward + optimiser"):
            self.model_opt.zero_grad()
            if vis:
                self.vis_opt.zero_grad()
            wm_loss.backward()
            metrics["wm/grad_norm"] = self.model_opt.clip_and_step()
            if vis:
                metrics["wm/vis_grad_norm"] = self.vis_opt.clip_and_step()
        return post, metrics

    def train(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One world-model update and one behaviour update on a (B, T, ...) batch.

        The visualisation decoder (reconstruction-free models) trains on updates 0, N, 2N, ...
        (N = ``model.vis_every``); on the others the world model's loss leaves it out.
        """
        if self._graphs:  # the last update's graph outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        data = preprocess(to_torch(batch, self.device), self.wm.images)
        vis = self.vis_opt is not None and self.updates % self.config.model.vis_every == 0
        post, metrics = self.train_world_model(data, vis)
        start = {k: v.detach().reshape(-1, *v.shape[2:]) for k, v in post.items()}  # (B*T, ...)
        start_cont = 1.0 - data["is_terminal"].float().reshape(-1)
        with frozen(self.wm):
            with self.autocast():
                with phase("behaviour: imagine"):
                    _, feat, actions, policy = self.behavior.imagine(self.wm, start)
                with phase("behaviour: targets (reward, cont, slow critic)"):
                    ret, weight, value = self.behavior.targets(self.wm, feat, start_cont)
                actor_loss, m = self.behavior.actor_loss(feat, actions, ret, value, weight, policy)
            metrics.update({k: float(v) for k, v in m.items()})  # tensors: one read each
            metrics["actor/loss"] = float(actor_loss.detach())
            with phase("behaviour: actor backward + optimiser"):
                metrics["actor/grad_norm"] = self.actor_opt.step(actor_loss)
        with phase("behaviour: critic"):
            with self.autocast():
                critic_loss, m = self.behavior.critic_loss(feat, ret, weight)
            metrics.update({k: float(v) for k, v in m.items()})  # tensors: one read each
            metrics["critic/loss"] = float(critic_loss.detach())
            metrics["critic/grad_norm"] = self.critic_opt.step(critic_loss)
        self.behavior.update_slow_critic()
        self.updates += 1
        return metrics

    # ------------------------------------------------------------------ weights and checkpoints
    def _policy_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.wm.encoder, "rssm": self.wm.rssm, "actor": self.behavior.actor}

    def policy_weights(self) -> PolicyWeights:
        """The policy's parameters; with ``actor.backend: onnx`` also the graph they bind into
        (exported on the first call: daydream/agent/export.py, daydream/core/weights.py) and,
        with ``actor.onnx_precision: int8``, its int8 layers."""
        arrays = {
            f"{name}.{key}": value.detach().cpu().numpy()
            for name, module in self._policy_modules().items()
            for key, value in module.state_dict().items()
        }
        if self.config.actor.backend == "onnx":
            from daydream.agent.export import export_policy, int8_weights

            if self._onnx_graph is None:
                self._onnx_graph = export_policy(self)
            arrays.update(self._onnx_graph)
            arrays.update(int8_weights(arrays))  # actor.onnx_precision int8: its layers
        return PolicyWeights(self.updates, arrays)

    def load_policy_weights(self, weights: PolicyWeights) -> None:
        """Replace the policy's parameters; raises ValueError naming any key or shape mismatch."""
        for name, module in self._policy_modules().items():
            own = module.state_dict()
            new = {}
            for key, value in own.items():
                full = f"{name}.{key}"
                if full not in weights.arrays:
                    raise ValueError(
                        f"policy weights lack '{full}' (built from a different config?)"
                    )
                array = weights.arrays[full]
                if tuple(array.shape) != tuple(value.shape):
                    raise ValueError(
                        f"policy weight '{full}' has shape {tuple(array.shape)}, "
                        f"expected {tuple(value.shape)} (built from a different config?)"
                    )
                new[key] = torch.as_tensor(array, dtype=value.dtype)
            module.load_state_dict(new)
        self.updates = max(self.updates, int(weights.version))

    def state_dict(self) -> dict:
        return {
            "world_model": self.wm.state_dict(),
            "behavior": self.behavior.state_dict(),
            "behavior_updates": self.behavior.updates,
            "model_opt": self.model_opt.opt.state_dict(),
            "vis_opt": self.vis_opt.opt.state_dict() if self.vis_opt is not None else {},
            "actor_opt": self.actor_opt.opt.state_dict(),
            "critic_opt": self.critic_opt.opt.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.wm.load_state_dict(state["world_model"])
        self.behavior.load_state_dict(state["behavior"])
        self.behavior.updates = int(state["behavior_updates"])
        self.model_opt.opt.load_state_dict(state["model_opt"])
        if self.vis_opt is not None and state.get("vis_opt"):
            self.vis_opt.opt.load_state_dict(state["vis_opt"])
        self.actor_opt.opt.load_state_dict(state["actor_opt"])
        self.critic_opt.opt.load_state_dict(state["critic_opt"])
        self.updates = int(state["updates"])
