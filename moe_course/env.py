"""What this machine can run: versions, the GPU, how Triton kernels will execute, and the course's thread policy."""

import os
import platform
import subprocess
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec

import torch

# Torch's CPU threads for everything the course runs. Its matrices are small: a second thread gains nothing on a quiet
# machine, and beside any other busy process OpenMP's threads wait on each other. `benchmarks/bench_threads.py` on a
# 2-core AVX2 machine, one thread against two: 30 training steps 2.3 s / 2.4 s quiet, 2.2 s / 2.5 s beside a busy
# process; generating 48 characters 0.24 s / 0.24 s quiet, 0.24 s / 0.92 s beside it; lesson 02's loop backend at
# E = 64 18 ms / 17 ms quiet, 20 ms / 93 ms beside it. One thread also gives the same numbers whatever the core count.
THREADS = 1


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


@contextmanager
def torch_threads(n: int):
    """Run the block (or, as a decorator, the function) with ``n`` torch threads, then restore the caller's count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def use_course_threads() -> int:
    """Set torch's CPU thread count to the course's policy, :data:`THREADS`, for this process; returns it. Every
    lesson's and exercise's set-up cell calls it, so training, generation and the timing cells all run alike."""
    torch.set_num_threads(THREADS)
    return THREADS


def cpu_name() -> str:
    """The processor's model name (Linux: ``/proc/cpuinfo``; macOS: ``sysctl``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        done = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict:
    """What decides a CPU computation's numbers here: the processor, the kernel set PyTorch picked for it
    (``cpu_capability``: AVX512, AVX2, DEFAULT, ...; ``ATEN_CPU_CAPABILITY`` can lower it), torch's thread count,
    the platform and the library versions. Two machines that differ in any of these may train to other numbers."""
    return {
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": package_version("numpy"),
        "triton": package_version("triton") if has_triton() else None,
    }


def environment_report() -> dict:
    """:func:`machine`, the GPU (or None) and the Triton mode, as a dict."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report = machine()
    return report | {
        "gpu": gpu,
        "bf16_on_gpu": bool(gpu) and torch.cuda.is_bf16_supported(),
        "triton_mode": triton_mode() if report["triton"] else "unavailable",
    }
