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

``torch.compile(..., dynamic=False)``: one graph per input shape (the learner's few: the batch,
the imagination starts, a policy call). The first update compiles (tens of seconds on a CPU
laptop); torch caches the code, so a restart is quicker. Where something does not compile (no
C++ compiler, an operator inductor lacks), dynamo's ``suppress_errors`` runs it eagerly with a
warning: the update is the same, only slower. Convolutions are left to oneDNN / cuDNN.

Only the learner compiles (``Agent.compile_update``); the robot's policy and the ONNX export
use the eager modules (``eager_copy``). Checkpoints and policy weights are unchanged: compiling
adds no parameters and renames none.
"""

from __future__ import annotations

import copy

from torch import nn

from daydream.agent.nets import MLP, NormGRUCell

STEP_METHODS = ("obs_step", "img_step")  # RSSM methods replaced by compiled ones
BEHAVIOR_METHODS = ("targets", "actor_loss", "critic_loss")  # and the behaviour's


def compile_networks(wm: nn.Module, behavior: nn.Module) -> int:
    """Compile the RSSM's steps and every MLP / GRU cell of ``wm`` and ``behavior`` in place;
    returns how many callables were compiled."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a part that does not compile runs eagerly
    count = 0
    rssm = wm.rssm
    for owner, names in ((rssm, STEP_METHODS), (behavior, BEHAVIOR_METHODS)):
        for name in names:
            setattr(owner, name, torch.compile(getattr(owner, name), dynamic=False))
            count += 1
    for module in [*wm.modules(), *behavior.modules()]:
        if isinstance(module, (MLP, NormGRUCell)):
            module.compile(dynamic=False)
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
