"""The triton backend works whatever imported Triton first: the learner, or torch's Triton integration
(``torch._inductor``, which ``torch.compile`` loads). Triton builds ``tl.zeros``, ``tl.sum``, ... when it is first
imported, interpreted or compiled by ``TRITON_INTERPRET`` at that moment, so each case needs a fresh process: a
subprocess that imports something first, then moe_course, and runs the triton backend against the loop one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_course.env import has_triton

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not has_triton(), reason="Triton is not installed (it has no build for this platform)"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's import order; a GPU runs Triton natively"),
]

ROOT = Path(__file__).resolve().parent.parent

LAYERS = """
import torch
import moe_course
from moe_course.env import environment_report

assert environment_report()["triton_mode"] == "interpreter", environment_report()
torch.manual_seed(0)
layers = {b: moe_course.MoE(32, "swiglu", num_experts=4, k=2, d_ff=16, backend=b) for b in ("triton", "loop")}
layers["loop"].load_state_dict(layers["triton"].state_dict())
x = torch.randn(6, 32)
results = {}
for backend, layer in layers.items():
    xb = x.clone().requires_grad_()
    y = layer(xb)
    y.square().sum().backward()
    results[backend] = [y.detach(), xb.grad, *(p.grad for p in layer.parameters())]
for got, expected in zip(results["triton"], results["loop"], strict=True):
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()
"""

# A learner's kernel defined after moe_course: Triton's own jit functions as functions and as tensor methods
LEARNER_KERNEL = """
import triton.language as tl

@triton.jit
def row_sums(x_ptr, out_ptr, N: tl.constexpr):
    row = tl.program_id(0)
    x = tl.load(x_ptr + row * N + tl.arange(0, N)) + tl.zeros((N,), dtype=tl.float32)
    tl.store(out_ptr + row, x.sum(axis=0) + tl.sum(tl.sigmoid(x) * 0, axis=0) + tl.cdiv(N, N) - 1)

x = torch.randn(3, 8)
out = torch.empty(3)
row_sums[(3,)](x, out, N=8)
assert torch.allclose(out, x.sum(1), atol=1e-5)
"""

FIRST = {
    "triton": "import triton",
    "triton_language_after_torch": "import torch\nimport triton.language",
    "torch_inductor": "import torch._inductor",
    "interpret_set_late": "import os\nimport triton\nos.environ['TRITON_INTERPRET'] = '1'",
}


def run_script(tmp_path, source: str) -> subprocess.CompletedProcess:
    """Run ``source`` from a file (Triton reads a kernel's source) in a fresh Python with TRITON_INTERPRET unset,
    as in a learner's new session (this process set it when it imported moe_course.kernels)."""
    script = tmp_path / "script.py"
    script.write_text(source + "\nprint('OK')\n")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("first", FIRST)
def test_triton_backend_after_triton_was_imported(tmp_path, first):
    result = run_script(tmp_path, FIRST[first] + "\n" + LAYERS)
    assert result.returncode == 0 and result.stdout.endswith("OK\n"), result.stderr[-3000:]


def test_learner_kernels_after_triton_was_imported(tmp_path):
    result = run_script(tmp_path, "import triton\n" + LAYERS + LEARNER_KERNEL)
    assert result.returncode == 0 and result.stdout.endswith("OK\n"), result.stderr[-3000:]
