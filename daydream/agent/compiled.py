"""``train.compile``: torch.compile for the parts of an update that run once per time step.

An update walks the RSSM over the batch's T steps (``obs_step``) and over the imagination
horizon (``img_step``) one step at a time, and runs small MLPs (heads, actor, critic) on many
rows: at the small size that is many small matrix products with layer norms, activations and
gates between them, which eager torch runs as separate kernels. Compiled, inductor fuses the
element-wise work between the products (forward and backward). What is compiled:

    rssm.obs_step, rssm.img_step      the whole step (GRU, prior, posterior, sampling)
    behavior.targets, .actor_loss,     rewards, discounts, slow critic and lambda-returns over
      .critic_loss                     the imagined rollout; the actor's and critic's losses
    every MLP and NormGRUCell          heads, actor, critic, encoder and decoder MLPs

(Compiling ``behavior.imagine`` whole as well measured no faster on a CPU and took 2 minutes
to compile: its steps are compiled already.)

``torch.compile(..., dynamic=False, mode=train.compile_mode)``: one graph per input shape (the
learner's few: the batch, the imagination starts, a policy call). The first update compiles
(tens of seconds on a CPU laptop); torch caches the code, so a restart is quicker. Where
something does not compile (no C++ compiler, an operator inductor lacks), dynamo's
``suppress_errors`` runs it eagerly with a warning: the update is the same, only slower.
Convolutions are left to oneDNN / cuDNN.

``train.compile_mode``, torch.compile's mode: ``reduce-overhead`` (and ``max-autotune``) on CUDA
also record every compiled callable as a CUDA graph (torch's CUDA graph trees) and replay it:
the observe loop's T steps, the imagination's H steps and the MLPs launch one graph each instead
of dozens of small kernels, which is what an update at DayDreamer's size on a GPU waits on. The
graphs' outputs live in memory the next update's replays overwrite, so ``Agent.train`` marks
each update's start (``torch.compiler.cudagraph_mark_step_begin``) and nothing an update returns
is a graph's output (the RSSM's loops stack their steps, metrics are floats). On a CPU the modes
compile as ``default`` does (inductor records no graphs there).

Only the learner compiles (``Agent.compile_update``); the robot's policy and the ONNX export
use the eager modules (``eager_copy``). Checkpoints and policy weights are unchanged: compiling
adds no parameters and renames none.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from daydream.agent.nets import MLP, NormGRUCell

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
STEP_METHODS = ("obs_step", "img_step")  # RSSM methods replaced by compiled ones
BEHAVIOR_METHODS = ("targets", "actor_loss", "critic_loss")  # and the behaviour's


def check_mode(mode: str) -> str:
    """``train.compile_mode`` if torch.compile knows it; else ValueError, one line."""
    if mode not in MODES:
        raise ValueError(f"train.compile_mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def records_graphs(mode: str, device: torch.device) -> bool:
    """Whether ``mode`` records CUDA graphs of the compiled callables on ``device`` (as
    inductor's options for the mode say)."""
    from torch._inductor import list_mode_options

    return device.type == "cuda" and bool(list_mode_options(mode).get("triton.cudagraphs"))


def compile_networks(wm: nn.Module, behavior: nn.Module, mode: str = "default") -> int:
    """Compile the RSSM's steps and every MLP / GRU cell of ``wm`` and ``behavior`` in place,
    in torch.compile's ``mode``; returns how many callables were compiled."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a part that does not compile runs eagerly
    count = 0
    rssm = wm.rssm
    for owner, names in ((rssm, STEP_METHODS), (behavior, BEHAVIOR_METHODS)):
        for name in names:
            setattr(owner, name, torch.compile(getattr(owner, name), dynamic=False, mode=mode))
            count += 1
    for module in [*wm.modules(), *behavior.modules()]:
        if isinstance(module, (MLP, NormGRUCell)):
            module.compile(dynamic=False, mode=mode)
            count += 1
    return count


def eager_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose every part runs eagerly: the compiled RSSM steps and
    module calls of ``compile_networks`` would still point at the original's."""
    out = copy.deepcopy(module)
    for sub in out.modules():
        for name in (*STEP_METHODS, *BEHAVIOR_METHODS):
            vars(sub).pop(name, None)
        if getattr(sub, "_compiled_call_impl", None) is not None:
            sub._compiled_call_impl = None
    return out
