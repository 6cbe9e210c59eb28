"""What this machine can run: versions, the GPU, and how Triton kernels will execute."""

import os
import platform
from importlib.util import find_spec

import torch


def has_triton() -> bool:
    """Whether Triton is installed: it is on Linux; it has no macOS build (lesson 06 needs Linux or Colab)."""
    return find_spec("triton") is not None


def triton_mode() -> str:
    """``"native"`` when a CUDA GPU is present, else ``"interpreter"`` (Triton runs kernels on the CPU
    through its interpreter, ``TRITON_INTERPRET=1``: correct but slow, ~10 ms per program instance)."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return "interpreter"
    return "native"


def environment_report() -> dict:
    """Python, torch and triton versions, the GPU (or None) and the Triton mode, as a dict."""
    triton_version = None
    if has_triton():
        import triton

        triton_version = triton.__version__
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "gpu": gpu,
        "bf16_on_gpu": bool(gpu) and torch.cuda.is_bf16_supported(),
        "triton_mode": triton_mode() if triton_version else "unavailable",
        "cpu_threads": torch.get_num_threads(),
    }
