"""Fused Triton kernels for the MoE expert block, forward and backward.

- ``align``   routing metadata on the device: per-expert counts (a Triton histogram), the pairs sorted by expert
              and padded so that every block of ``BLOCK_M`` rows belongs to one expert
- ``gemm``    the grouped GEMM kernels: gather + first projection + activation, second projection + router
              weight + scatter, and their backward
- ``experts`` ``fused_experts``: argument checks, launches, and the ``torch.autograd.Function`` tying them together
- ``interpreter`` Triton's interpreter when Triton was imported before this package

Without a CUDA GPU the kernels run on the CPU through Triton's interpreter. Triton reads ``TRITON_INTERPRET``
when a kernel is *defined*, so it is set here, before the modules that define kernels are imported (a value the
learner set, such as ``0``, is kept). Triton's own library functions (``tl.zeros``, ``tl.sum``, ...) were defined
when ``triton`` was first imported, perhaps before this, by another library: they are switched to the interpreter
too. With a GPU, nothing is changed.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ..env import triton_mode  # noqa: E402
from .interpreter import interpret_triton_language  # noqa: E402

if not torch.cuda.is_available() and triton_mode() == "interpreter":  # read as Triton reads it, in any version
    interpret_triton_language()

from .align import Alignment, align, expert_counts  # noqa: E402
from .experts import fill_buffers, fused_experts  # noqa: E402

__all__ = ["Alignment", "align", "expert_counts", "fill_buffers", "fused_experts"]
