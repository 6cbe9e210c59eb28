"""pytest for the whole course: tests/, and the notebooks of notebooks/ and solutions/ (nbval).

Triton has no build for macOS. There, the tests and notebooks that need it are not collected, and the run says so
in its header; everything else runs. The header also says whether grading confines submissions (Landlock; the tests
of that confinement skip where it is missing). On Linux Triton is part of the install (tests/test_env.py checks it).
"""

import os

# Every test and notebook runs on PyTorch's generic CPU kernels unless told otherwise (e.g. ATEN_CPU_CAPABILITY=avx2):
# the lessons' outputs were made with the AVX2 or AVX-512 kernels (`make lessons` records which), so a checked output
# that only one kind of CPU reproduces fails. Set before torch is first imported, so this process and every kernel
# and worker it starts use it.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "default")

import pytest  # noqa: E402
import torch  # noqa: E402

from moe_course.env import has_triton  # noqa: E402

TRITON_ONLY = [
    "tests/test_kernels.py",
    "tests/test_benchmarks.py",
    "notebooks/06_kernels.ipynb",
    "solutions/06_kernels",
]
collect_ignore = [] if has_triton() else TRITON_ONLY


def pytest_configure(config):
    config.addinivalue_line("markers", "triton: needs Triton (skipped where it has no build: macOS)")


def pytest_report_header(config):
    from moe_course.grading_sandbox import abi

    landlock = abi()
    capability = os.environ["ATEN_CPU_CAPABILITY"]
    kernels = f"CPU kernels: {torch.backends.cpu.get_cpu_capability()} (ATEN_CPU_CAPABILITY={capability})"
    lines = [
        f"Landlock ABI {landlock}: grading confines submissions" if landlock else "no Landlock: grading unconfined",
        kernels,
    ]
    if not has_triton():
        lines.append(f"Triton is not installed (no build for this platform): skipping {', '.join(TRITON_ONLY)}")
    return lines


def pytest_collection_modifyitems(items):
    if not has_triton():
        for item in items:
            if item.get_closest_marker("triton"):
                item.add_marker(pytest.mark.skip(reason="needs Triton, which has no build for this platform"))
