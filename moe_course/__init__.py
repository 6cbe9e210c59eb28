"""moe_course: the library behind the Mixture-of-Experts course. One concept per module:

- ``flops``    parameter and FLOP accounting (dense FFN, MoE FFN, whole models)
- ``routing``  the top-k router
- ``experts``  expert FFNs (GELU MLP, SwiGLU) with stacked weights
- ``dispatch`` sort (token, slot) pairs by expert, permute and un-permute
- ``layer``    the MoE layer and its backends (loop, vectorized), and the ``MoE`` constructor
- ``load``     per-expert load and the balance coefficient
- ``env``      what this machine can run
- ``grading``  self-check a learner's assignment with nbgrader
"""

from .experts import FFN, Experts
from .layer import MoE, MoELayer
from .routing import Router, Routing, top_k_routing

__version__ = "0.1.0"
__all__ = ["FFN", "Experts", "MoE", "MoELayer", "Router", "Routing", "top_k_routing"]
