"""Fused Triton kernels for the MoE expert block, forward and backward.

- ``align``   routing metadata on the device: per-expert counts (a Triton histogram), the pairs sorted by expert
              and padded so that every block of ``BLOCK_M`` rows belongs to one expert
- ``gemm``    the grouped GEMM kernels: gather + first projection + activation, second projection + router
              weight + scatter, and their backward
- ``experts`` ``fused_experts``: argument checks, launches, and the ``torch.autograd.Function`` tying them together

Without a CUDA GPU the kernels run on the CPU through Triton's interpreter. Triton reads ``TRITON_INTERPRET``
when a kernel is *defined*, so it is set here, before the modules that define kernels are imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .align import Alignment, align, expert_counts  # noqa: E402
from .experts import fill_buffers, fused_experts  # noqa: E402

__all__ = ["Alignment", "align", "expert_counts", "fill_buffers", "fused_experts"]
