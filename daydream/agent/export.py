"""The policy's tick as an ONNX graph, for robots acting with ONNX Runtime (actor.backend onnx).

``PolicyStep`` is everything ``Agent.policy`` does for one observation, with the recurrent state
and the random numbers as explicit inputs and outputs (batch 1, fixed shapes):

    inputs                                      outputs
    obs.<key>     (1, H, W, C) uint8 images,    next.deter    (1, D)
                  (1, N) float32 vectors        next.stoch    (1, S, K) one-hot | (1, S)
    is_first      (1,)   1: reset the state     post.logits   (1, S, K)     categorical latent
    deter         (1, D)    h_{t-1}             post.mean, post.std (1, S)  Gaussian latent
    stoch         (1, S, K) | (1, S)  z_{t-1}   action.probs  (1, A)        one-hot actions
    prev_action   (1, A)    a_{t-1} executed    action.mean, action.std (1, A)  tanh-Gaussian:
    noise         (1, S, 1) u ~ U[0, 1)                        the Normal before the tanh
                  | (1, S) eps ~ N(0, 1)
    explore       (1,)   1: z_t is sampled with the noise, 0: z_t is the mode

    embed = encoder(preprocess(obs));  post = rssm.obs_step(state, prev_action, embed, is_first)
    z_t   = explore ? sample(post, noise) : mode(post)        (the sampling rules of dists.py)
    pi    = actor(concat(h_t, z_t))

The action is drawn from pi on the robot side (daydream/runtime/onnx_policy.py), in numpy.

``export_policy(agent)`` traces that module once per architecture with ``torch.onnx.export``
(the dynamo exporter; it needs ``onnx`` and ``onnxscript``) and returns the graph's bytes with
every parameter stripped out as external data named by its ``PolicyWeights`` key
(``encoder.cnns.image.net.0.weight``, ...), and the list of those names: the graph is a few
hundred kB whatever the model's size, and the robot binds each new version of the weights into
it (the weights travel as they always have; daydream/core/weights.py).

``actor.onnx_precision: int8`` makes the fully connected layers int8 (the convolutions, the
state, the distributions and everything else stay float32): each ``Gemm`` of a policy weight
W (out, in) becomes ONNX Runtime's ``DynamicQuantizeMatMul``, which quantizes its input per
tick and multiplies by int8 weights with one scale per output unit. The graph binds
``<key>.int8`` (in, out), ``<key>.scale`` and ``<key>.zero`` (out,) instead of ``<key>``; the
learner computes them from W with each version (``int8_weights``: round(W / s) with
s = max|W| / 127 per output unit). Why: a tick at batch 1 reads every weight once, so at
DayDreamer's UR5 size (31 MB of float32 weights) it is bound by memory, not arithmetic; int8
weights are a quarter of the bytes (bench/policy_step.py). Actions then differ from the
learner's torch policy by the rounding (tests/test_onnx_policy.py bounds it). The exporter's own
optimiser stays off: it merges initializers that are equal (every fresh LayerNorm weight is
all ones) and so would lose their names; ONNX Runtime optimises the graph itself when a
session is built.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import torch
from torch import nn

from daydream.agent.compiled import eager_copy
from daydream.agent.world_model import preprocess
from daydream.core.weights import ONNX_GRAPH_FORMAT, ONNX_GRAPH_KEY, ONNX_PARAMS_KEY


class PolicyStep(nn.Module):
    """Owns nothing new: one policy tick over the agent's encoder, RSSM and actor, with the state
    and the noise as explicit tensors (the table in the module docstring)."""

    def __init__(self, encoder: nn.Module, rssm: nn.Module, actor: nn.Module, images, vectors):
        super().__init__()
        # the attribute names are the PolicyWeights prefixes: parameters keep their keys
        self.encoder, self.rssm, self.actor = encoder, rssm, actor
        self.images, self.vectors = list(images), list(vectors)

    @property
    def sensors(self) -> list[str]:
        return self.images + self.vectors

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.sensors)
        obs = dict(zip(self.sensors, inputs[:n], strict=True))
        is_first, deter, stoch, prev_action, noise, explore = inputs[n:]
        embed = self.encoder(preprocess(obs, self.images))  # (1, E)
        post, _ = self.rssm.obs_step(
            {"deter": deter, "stoch": stoch}, prev_action, embed, is_first, sample=False
        )
        mode = post["stoch"]
        if self.rssm.classes:
            # dists.OneHotST.sample with its uniform draw given: the class index is the number
            # of cumulative probabilities below u (inverse CDF), one draw per variable
            probs = torch.softmax(post["logits"], -1)  # (1, S, K)
            index = (probs.cumsum(-1) < noise).sum(-1).clamp(max=probs.shape[-1] - 1)  # (1, S)
            classes = torch.arange(probs.shape[-1], device=probs.device)
            sample = (index[..., None] == classes).to(probs.dtype)  # (1, S, K) one-hot
            stats = (post["logits"],)
        else:
            sample = post["mean"] + post["std"] * noise  # rssm._sample: mean + std * eps
            stats = (post["mean"], post["std"])
        z = torch.where(explore.reshape(-1, *[1] * (mode.dim() - 1)) > 0.5, sample, mode)
        latent = {"deter": post["deter"], "stoch": z}
        dist = self.actor(self.rssm.feat(latent))
        head = (dist.probs,) if self.actor.discrete else (dist.mean, dist.std)
        return (post["deter"], z, *stats, *head)

    def names(self) -> tuple[list[str], list[str]]:
        """The graph's input and output names, in the order of ``forward``."""
        inputs = [f"obs.{k}" for k in self.sensors]
        inputs += ["is_first", "deter", "stoch", "prev_action", "noise", "explore"]
        stats = ["post.logits"] if self.rssm.classes else ["post.mean", "post.std"]
        head = ["action.probs"] if self.actor.discrete else ["action.mean", "action.std"]
        return inputs, ["next.deter", "next.stoch", *stats, *head]

    def example_inputs(self, obs_space, action_size: int) -> tuple[torch.Tensor, ...]:
        """Zero tensors of the graph's input shapes and dtypes (batch 1)."""
        rssm = self.rssm
        sensors = []
        for key in self.sensors:
            dtype = torch.uint8 if key in self.images else torch.float32
            sensors.append(torch.zeros(1, *obs_space[key].shape, dtype=dtype))
        stoch = (1, rssm.stoch, rssm.classes) if rssm.classes else (1, rssm.stoch)
        noise = (1, rssm.stoch, 1) if rssm.classes else (1, rssm.stoch)
        return (
            *sensors,
            torch.ones(1),
            torch.zeros(1, rssm.deter),
            torch.zeros(*stoch),
            torch.zeros(1, action_size),
            torch.zeros(*noise),
            torch.zeros(1),
        )


def policy_step(agent) -> PolicyStep:
    """A CPU copy of the agent's policy modules as a PolicyStep (the agent is left untouched)."""
    modules = [agent.wm.encoder, agent.wm.rssm, agent.behavior.actor]
    encoder, rssm, actor = (eager_copy(m).cpu().eval() for m in modules)
    return PolicyStep(encoder, rssm, actor, agent.wm.images, agent.wm.vectors).eval()


@contextlib.contextmanager
def _quiet_export():
    """torch.distributions' argument checks are data-dependent branches that torch.export
    cannot trace; the exporter's progress lines and warnings are noise in a learner's log."""
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_policy(agent) -> dict[str, np.ndarray]:
    """The ONNX graph of one policy tick of ``agent``, its parameters external (module docstring),
    as the two arrays that travel with the weights: ONNX_GRAPH_KEY, the graph's bytes, and
    ONNX_PARAMS_KEY, the names of the weights it binds ("\\n"-joined, utf-8).

    Takes a few seconds (DayDreamer's UR5 size: about 6 s on one CPU core); the learner does it
    once and sends the bytes with every weights version.
    """
    precision = str(agent.config.actor.onnx_precision)
    if precision not in ("float32", "int8"):
        raise ValueError(f"actor.onnx_precision must be float32 or int8, got {precision!r}")
    step = policy_step(agent)
    action_size = agent.act_space["action"].shape[0]
    inputs, outputs = step.names()
    args = step.example_inputs(agent.obs_space, action_size)
    with _quiet_export(), torch.no_grad():
        program = torch.onnx.export(
            step, args, dynamo=True, optimize=False, input_names=inputs, output_names=outputs,
            external_data=False, verbose=False,
        )  # fmt: skip
    model = program.model_proto
    params = {
        f"{name}.{key}"
        for name, module in (("encoder", step.encoder), ("rssm", step.rssm), ("actor", step.actor))
        for key in module.state_dict()
    }
    if precision == "int8":
        params |= _quantize_gemms(model, params)
    bound = _externalise(model, params)
    entry = model.metadata_props.add()
    entry.key, entry.value = "daydream.format", ONNX_GRAPH_FORMAT
    return {
        ONNX_GRAPH_KEY: np.frombuffer(model.SerializeToString(), np.uint8),
        ONNX_PARAMS_KEY: np.frombuffer("\n".join(bound).encode(), np.uint8),
    }


def _externalise(model, params: set[str]) -> list[str]:
    """Make every policy parameter in the graph an external initializer named by its
    PolicyWeights key; returns those names (the ones a tick does not use, such as the prior's
    output layers, are not in the graph)."""
    from onnx import TensorProto

    offset, names = 0, []
    for tensor in model.graph.initializer:
        if tensor.name not in params:
            continue  # a constant of the graph (shapes, init_std): stays inside
        length = len(tensor.raw_data)
        if not length:
            raise RuntimeError(f"the exporter stored parameter {tensor.name} without raw data")
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", "policy-weights"), ("offset", offset), ("length", length)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        offset += length
        names.append(tensor.name)
    return names


INT8_PARTS = (".int8", ".scale", ".zero")  # what an int8 layer binds instead of its weight


def _quantize_gemms(model, params: set[str]) -> set[str]:
    """Rewrite every ``Gemm`` of a policy weight (x W^T + b) as ``DynamicQuantizeMatMul`` on
    int8 weights (module docstring); returns the initializers it adds (placeholders of the
    right types and shapes, bound by the robot like any weight). A Gemm of another form stays."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    added: set[str] = set()
    replaced: set[str] = set()  # the float32 weights the int8 layers stand for
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (attrs.get("transA", 0), attrs.get("transB", 0), attrs.get("alpha", 1.0),
                 attrs.get("beta", 1.0)) == (0, 1, 1.0, 1.0)  # fmt: skip
        if node.op_type != "Gemm" or node.input[1] not in params or not plain:
            nodes.append(node)
            continue
        key = node.input[1]
        replaced.add(key)
        out, inp = (int(d) for d in inits[key].dims)
        parts = [key + suffix for suffix in INT8_PARTS]
        for name, shape, dtype in zip(parts, [(inp, out), (out,), (out,)],
                                      [np.int8, np.float32, np.int8], strict=True):  # fmt: skip
            model.graph.initializer.append(numpy_helper.from_array(np.ones(shape, dtype), name))
        added.update(parts)
        nodes.append(helper.make_node(
            "DynamicQuantizeMatMul", [node.input[0], *parts, *node.input[2:]], list(node.output),
            name=f"{node.name}_int8", domain="com.microsoft",
        ))  # fmt: skip
    if added:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        kept = [t for t in model.graph.initializer if t.name not in replaced]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return added


def quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Linear layer's weight W (out, in) as ``DynamicQuantizeMatMul`` takes it: int8 B (in, out)
    = round(W^T / s), the scale s (out,) = max|W| / 127 per output unit, the zero point (out,)
    all 0 (symmetric)."""
    w = np.asarray(weight, np.float32).T
    scale = np.maximum(np.abs(w).max(0), np.float32(1e-12)) / np.float32(127)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32), np.zeros(scale.shape, np.int8)


def int8_weights(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The int8 arrays the graph in ``arrays`` binds (``<key>.int8``, ``.scale``, ``.zero``),
    computed from the float32 weights in ``arrays``; nothing for a float32 graph."""
    names = np.asarray(arrays[ONNX_PARAMS_KEY], np.uint8).tobytes().decode().split("\n")
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name.endswith(INT8_PARTS[0]):
            key = name[: -len(INT8_PARTS[0])]
            parts = quantize_columns(arrays[key])
            out.update(zip((key + s for s in INT8_PARTS), parts, strict=True))
    return out
