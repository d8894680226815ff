"""The policy on the robot computer with ONNX Runtime and numpy, no torch (actor.backend onnx).

    learner (torch)                                     robot actor process (this module)
    ───────────────                                     ─────────────────────────────────
    Agent.policy_weights(): the parameters as numpy  ─▶ link thread: load_policy_weights builds
      arrays + ONNX_GRAPH_KEY: the graph of one tick      a new InferenceSession on the spare
      (daydream/agent/export.py, exported once)           copy, the arrays bound as its initializers
                                                        control thread: PolicySlots.current() swaps
                                                          the ready copy in between two ticks

Why a new session per weights version: ONNX Runtime prepacks constant weights for its matrix
kernels when a session is built, which is what makes a tick fast; weights fed as inputs every
tick would lose that. A session of DayDreamer's UR5 policy builds in about 50 ms on the link's
thread, into the policy copy that is not acting (``robot_actor.PolicySlots``); the control
thread swaps copies by reference, so it never waits for weights. ONNX Runtime releases the GIL
while it optimises the graph (most of the build); parsing it holds the GIL for a few ms, which
the link times into the idle time after a tick, as it does torch's load (links.WeightsReceiver).
The graph's parameters are external data named by their ``PolicyWeights`` keys (the learner
sends the list: ONNX_PARAMS_KEY) and given to the session with ``add_external_initializers``.

One tick (the graph's inputs and outputs are listed in daydream/agent/export.py):

    h_t, z_t, pi = session(o_t, is_first, h_{t-1}, z_{t-1}, a_{t-1}, noise, explore)
    explore:  z_t sampled with u ~ U[0, 1) (categorical, inverse CDF) or eps ~ N(0, 1) (Gaussian)
    eval:     z_t the mode
    action:   truncated Normal  a ~ N(mean, std) truncated to [-1, 1] (eval: mean), by rejection
              tanh-Gaussian     a = tanh(mean + std * eps)   (eval: tanh(mean)),
                                + expl_noise * N(0, 1), clipped to [-1, 1] when exploring
              one-hot        a = onehot(#{k: cumsum(probs)_k < u})   (eval: onehot(argmax probs))
              random         uniform in [-1, 1] or a uniform one-hot (the state is still tracked)

The same distributions as the torch policy (agent/dists.py: OneHotST.sample, TruncNormal,
TanhNormal.rsample; which one: behavior.actor.dist); the random numbers come from numpy's
generator instead of torch's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from daydream.core.config import actor_dist
from daydream.core.spaces import Space
from daydream.core.weights import (
    ONNX_GRAPH_FORMAT,
    ONNX_GRAPH_KEY,
    ONNX_PARAMS_KEY,
    PolicyWeights,
)


def categorical_index(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per row of ``probs`` (..., K) with ``u`` (..., 1) in [0, 1):
    index = #{k : cumsum(probs)_k < u}, at most K - 1 (dists.OneHotST.sample)."""
    index = (np.cumsum(probs, -1) < u).sum(-1)
    return np.minimum(index, probs.shape[-1] - 1)


def tanh_normal(mean: np.ndarray, std: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """a = tanh(mean + std * eps), eps ~ N(0, 1): a draw of dists.TanhNormal."""
    return np.tanh(mean + std * eps)


def trunc_normal(
    mean: np.ndarray, std: np.ndarray, rng: np.random.Generator, clip: float = 1e-6
) -> np.ndarray:
    """A draw of N(mean, std) truncated to [-1, 1] (dists.TruncNormal), by rejection: with the
    mean inside the bounds at least a third of the draws land inside, whatever the std."""
    out = mean + std * rng.standard_normal(mean.shape)
    outside = np.abs(out) > 1
    while outside.any():
        out[outside] = mean[outside] + std[outside] * rng.standard_normal(int(outside.sum()))
        outside = np.abs(out) > 1
    return np.clip(out, -1 + clip, 1 - clip)


class OnnxPolicy:
    """Owns one ONNX Runtime session of the policy (graph + one version of the weights) and acts
    with it: the torch Agent's ``policy``, ``executed`` and ``load_policy_weights``, in numpy."""

    def __init__(
        self,
        obs_space: dict[str, Space],
        act_space: dict[str, Space],
        expl_noise: float = 0.0,
        rng: np.random.Generator | None = None,
        dist: str = "auto",
    ) -> None:
        self.obs_space, self.action_space = obs_space, act_space["action"]
        self.discrete = bool(self.action_space.discrete)
        self.dist = actor_dist(dist, self.discrete)  # behavior.actor.dist, as the learner's
        self.expl_noise = float(expl_noise)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.session: ort.InferenceSession | None = None
        self._held: list = []  # the arrays the session's initializers point into
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._sensors: dict[str, np.dtype] = {}  # the graph's observation keys and dtypes
        self._outputs: list[str] = []
        self.updates = -1

    # ------------------------------------------------------------------ weights (link thread)
    def load_policy_weights(self, weights: PolicyWeights) -> None:
        """Build a session of the graph with these weights; raises ValueError naming what does
        not fit (no graph, a weight missing, a graph for other sensors or actions)."""
        graph, params = weights.arrays.get(ONNX_GRAPH_KEY), weights.arrays.get(ONNX_PARAMS_KEY)
        if graph is None or params is None:
            raise ValueError(
                "the weights carry no ONNX graph; set actor.backend: onnx in the learner's "
                "config too (the learner exports it)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the control loop's process: one thread, as torch's
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only (the graph's CastLike nodes warn)
        names = np.asarray(params, np.uint8).tobytes().decode().split("\n")
        missing = [k for k in names if k not in weights.arrays]
        if missing:
            raise ValueError(f"the ONNX graph binds weights the learner did not send: {missing}")
        arrays = [np.ascontiguousarray(weights.arrays[k]) for k in names]
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        options.add_external_initializers(names, values)
        try:
            session = ort.InferenceSession(
                np.asarray(graph, np.uint8).tobytes(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own classes
            raise ValueError(f"the ONNX graph does not load with these weights ({e})") from e
        self._check(session)
        self.session, self._held = session, [arrays, values]
        self.updates = max(self.updates, int(weights.version))

    def _check(self, session: ort.InferenceSession) -> None:
        meta = session.get_modelmeta().custom_metadata_map.get("daydream.format")
        if meta != ONNX_GRAPH_FORMAT:
            raise ValueError(
                f"the ONNX graph is of format {meta!r}, this actor reads {ONNX_GRAPH_FORMAT!r} "
                "(update daydream on the robot or the learner)"
            )
        shapes = {i.name: tuple(i.shape) for i in session.get_inputs()}
        sensors = {
            i.name[len("obs.") :]: np.dtype(np.uint8 if i.type == "tensor(uint8)" else np.float32)
            for i in session.get_inputs()
            if i.name.startswith("obs.")
        }
        for key in sensors:
            space = self.obs_space.get(key)
            if space is None or shapes[f"obs.{key}"] != (1, *space.shape):
                got = None if space is None else space.shape
                raise ValueError(
                    f"the learner's policy reads '{key}' of shape {shapes[f'obs.{key}'][1:]}, "
                    f"this robot gives {got} (built from a different config?)"
                )
        if shapes["prev_action"] != (1, self.action_space.shape[0]):
            raise ValueError(
                f"the learner's policy has {shapes['prev_action'][1]} actions, this robot "
                f"{self.action_space.shape[0]} (built from a different config?)"
            )
        self._shapes, self._sensors = shapes, sensors
        self._outputs = [o.name for o in session.get_outputs()]

    # ------------------------------------------------------------------ acting (control thread)
    def initial_state(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        latent = {k: np.zeros(self._shapes[k], np.float32) for k in ("deter", "stoch")}
        return latent, np.zeros((1, self.action_space.shape[0]), np.float32)

    def policy(self, obs: dict[str, np.ndarray], state=None, mode: str = "explore"):
        """One tick on a single observation; returns ({"action": (A,) float32}, state)."""
        if mode not in ("explore", "eval", "random"):
            raise ValueError(f"policy mode must be explore, eval or random, got {mode!r}")
        latent, prev_action = state if state is not None else self.initial_state()
        outputs = self.step(obs, latent, prev_action, explore=mode != "eval")
        latent = {"deter": outputs["next.deter"], "stoch": outputs["next.stoch"]}
        action = self.action(outputs, mode)[None]  # (1, A)
        return {"action": action[0]}, (latent, action)

    def step(
        self, obs: dict, latent: dict[str, np.ndarray], prev_action: np.ndarray, explore: bool
    ) -> dict[str, np.ndarray]:
        """Run the graph once; every output by name (next.deter, post.*, action.*)."""
        feed = {f"obs.{k}": np.asarray(obs[k], dtype)[None] for k, dtype in self._sensors.items()}
        noise_shape = self._shapes["noise"]
        if not explore:
            noise = np.zeros(noise_shape, np.float32)
        elif len(noise_shape) == 3:  # categorical latent: one uniform per variable
            noise = self.rng.random(noise_shape, np.float32)
        else:
            noise = self.rng.standard_normal(noise_shape, np.float32)
        feed.update(
            is_first=np.asarray(obs["is_first"], np.float32).reshape(1),
            deter=latent["deter"],
            stoch=latent["stoch"],
            prev_action=np.asarray(prev_action, np.float32).reshape(1, -1),
            noise=noise,
            explore=np.full(1, float(explore), np.float32),
        )
        values = self.session.run(None, feed)
        return dict(zip(self._outputs, values, strict=True))

    def action(self, outputs: dict[str, np.ndarray], mode: str) -> np.ndarray:
        """The action (A,) float32 drawn from the graph's actor outputs in this mode."""
        size, rng = self.action_space.shape[0], self.rng
        if self.discrete:
            probs = outputs["action.probs"][0]
            if mode == "eval":
                index = int(np.argmax(probs))
            elif mode == "explore":
                index = int(categorical_index(probs, rng.random(1)))
            else:
                index = int(rng.integers(size))
            return np.eye(size, dtype=np.float32)[index]
        mean, std = outputs["action.mean"][0], outputs["action.std"][0]
        trunc = self.dist == "trunc_normal"  # its mean is the mode; tanh_normal's goes through tanh
        if mode == "eval":
            return (np.clip(mean, -1, 1) if trunc else np.tanh(mean)).astype(np.float32)
        if mode == "random":
            return rng.uniform(-1, 1, size).astype(np.float32)
        if trunc:
            action = trunc_normal(mean.astype(np.float64), std.astype(np.float64), rng)
        else:
            action = tanh_normal(mean, std, rng.standard_normal(size))
        if self.expl_noise:
            action = np.clip(action + self.expl_noise * rng.standard_normal(size), -1, 1)
        return action.astype(np.float32)

    def executed(self, state, action: np.ndarray):
        """The state with the action the robot executed in place of the proposal (a_{t-1} as
        executed: DESIGN.md section 1)."""
        latent, proposal = state
        return latent, np.asarray(action, np.float32).reshape(proposal.shape)
