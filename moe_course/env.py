"""What this machine can run: versions, the GPU, and how Triton kernels will execute."""

import os
import platform
from importlib.util import find_spec

import torch


def has_triton() -> bool:
    """Whether Triton is installed: it is on Linux; it has no macOS build (lesson 06 needs Linux or Colab)."""
    return find_spec("triton") is not None


TRUE_VALUES = ("1", "true", "on", "yes", "y")  # what Triton reads as true (``getenv_bool``), in any case


def triton_mode() -> str:
    """How Triton kernels run here: ``"interpreter"`` (on the CPU through Triton's interpreter: correct but slow,
    ~10 ms per program instance) or ``"native"`` (compiled for the GPU). ``TRITON_INTERPRET`` decides, read as
    Triton reads it; unset, it means what importing :mod:`moe_course.kernels` sets: the interpreter exactly when
    there is no CUDA GPU. A ``TRITON_INTERPRET=0`` set by the learner is kept, so without a GPU that is
    ``"native"``, and kernels then fail to launch (Triton finds no driver)."""
    value = os.environ.get("TRITON_INTERPRET")
    if value is None:
        return "native" if torch.cuda.is_available() else "interpreter"
    return "interpreter" if value.lower() in TRUE_VALUES else "native"


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
