"""moe_course: the library behind the Mixture-of-Experts course. One concept per module:

- ``flops``    parameter and FLOP accounting (dense FFN, MoE FFN, whole models)
- ``routing``  every router (top-k, noisy top-k, Switch, expert choice, sigmoid + bias, group-limited), jitter
- ``experts``  expert FFNs (GELU MLP, SwiGLU) with stacked weights
- ``dispatch`` sort (token, slot) pairs by expert, permute and un-permute
- ``capacity`` expert capacity, which pairs are dropped, padding waste
- ``kernels``  fused Triton expert kernels, forward and backward (Triton's interpreter without a GPU)
- ``parallel`` expert parallelism: the all-to-all layer on torch.distributed, a launcher for CPU ranks
- ``layer``    the MoE layer and its backends (loop, vectorized, triton), and the ``MoE`` constructor
- ``load``     per-expert load, the balance coefficient, router entropy
- ``losses``   load balancing: Switch loss, sequence-wise loss, z-loss, the selection-bias update
- ``text``     the course corpus, a character tokenizer, batches
- ``model``    a tiny decoder-only language model with dense or MoE FFNs
- ``train``    its seeded training loop, with balancing, recording what the routers do
- ``env``      what this machine can run
- ``grading``  self-check a learner's assignment with nbgrader
- ``workspace`` the learner's copies of the lessons and exercises, which the course never tracks
- ``colab``    the course's public address and the Colab set-up cell of every notebook
- ``checks``   the argument checks the public functions share
"""

from .experts import FFN, Experts
from .layer import MoE, MoELayer
from .routing import Router, Routing, top_k_routing

__version__ = "0.1.0"
__all__ = ["FFN", "Experts", "MoE", "MoELayer", "Router", "Routing", "top_k_routing"]
