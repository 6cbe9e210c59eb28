"""moe_course: the library behind the Mixture-of-Experts course. One concept per module:

- ``flops``    parameter and FLOP accounting (dense FFN, MoE FFN, whole models)
- ``routing``  every router (top-k, noisy top-k, Switch, expert choice, DeepSeek-V3's sigmoid + bias,
               DeepSeek-V2's group-limited), jitter
- ``experts``  expert FFNs (ReLU and GELU MLPs, SwiGLU) with stacked weights, the (gated) shared expert
- ``dispatch`` sort (token, slot) pairs by expert, permute and un-permute
- ``capacity`` expert capacity, which pairs are dropped (arrival, batch priority), padding waste
- ``kernels``  fused Triton expert kernels, forward and backward (Triton's interpreter without a GPU)
- ``backends`` the expert block computed four ways: loop (the reference), vectorized, grouped GEMM, Triton
- ``config``   ``MoEConfig``: one MoE layer's sizes and choices, validated once
- ``exchange`` where the experts live: all on this process (``LocalExchange``)
- ``parallel`` expert parallelism on torch.distributed: the all-to-all exchange, data parallelism around it,
               a launcher for CPU ranks
- ``layer``    ``MoELayer``, local or expert-parallel, and what each call did (``LayerStats``)
- ``factory``  ``MoE(...)``: a whole layer in one call
- ``presets``  the MoE block of each model the course cites (Switch, GShard, Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3)
- ``hf``       one MoE block of a Hugging Face checkpoint loaded into its preset
- ``load``     per-expert load, the balance coefficient, router entropy
- ``losses``   load balancing: Switch loss, sequence-wise loss, z-loss, the selection-bias update
- ``text``     the course corpus, a character tokenizer, batches
- ``model``    a tiny decoder-only language model with dense or MoE FFNs
- ``train``    its seeded training loop, with balancing, recording what the routers do
- ``serving``  decoding with a KV cache, routing traces, expert caches, offloading, prefetch, the memory model
- ``experiments`` the capstone's experiments (equal compute, specialization, precision, fine-tuning, the bill) and
               their results files
- ``env``      what this machine can run
- ``grading``  self-check a learner's assignment with nbgrader
- ``workspace`` the learner's copies of the lessons and exercises, which the course never tracks
- ``colab``    the course's public address and the Colab set-up cell of every notebook
- ``checks``   the argument checks the public functions share
"""

from .config import MoEConfig
from .experts import FFN, Experts
from .factory import MoE
from .layer import MoELayer
from .routing import Router, Routing, top_k_routing

__version__ = "0.1.0"
__all__ = ["FFN", "Experts", "MoE", "MoEConfig", "MoELayer", "Router", "Routing", "top_k_routing"]
