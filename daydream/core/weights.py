"""Policy weights as they travel from the learner to the robots: flat numpy arrays and a version.

    PolicyWeights(version, {"encoder.cnns.image.net.0.weight": array, ..., "actor.net...": array})

The keys are ``<module>.<state_dict key>`` of the policy's three modules (encoder, rssm, actor;
``daydream.agent.agent``). When the robots act with ONNX Runtime (``actor.backend: onnx``) the
learner adds two more arrays: ``ONNX_GRAPH_KEY``, the exported graph of one policy tick as uint8
bytes, whose parameters are external and named by the keys above, and ``ONNX_PARAMS_KEY``, the
names it binds (``daydream.agent.export``, ``daydream.runtime.onnx_policy``). Torch policies
ignore both.

No torch here: the robot side of the onnx backend imports this module and never torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the weights key that carries the exported ONNX graph (uint8 bytes) beside the parameters
ONNX_GRAPH_KEY = "onnx.graph"
#: the names of the weights the graph binds ("\n"-joined, utf-8 bytes as uint8): a tick does not
#: use every policy weight (the prior's output layers), and ONNX Runtime refuses unknown ones
ONNX_PARAMS_KEY = "onnx.params"
#: the graph's format, written into it by the learner and checked by the robot
ONNX_GRAPH_FORMAT = "daydream-policy-1"


@dataclass
class PolicyWeights:
    """The parameters the policy needs, as flat numpy arrays, with the learner's update count."""

    version: int
    arrays: dict[str, np.ndarray]
