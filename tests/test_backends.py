"""The plain-PyTorch backends of the expert block (moe_course/backends.py) against the loop: outputs and gradients,
the grouped GEMM's fallback, and a backward pass that does not grow with the number of idle experts."""

import copy
from collections import Counter

import pytest
import torch

from moe_course.backends import BACKENDS, DEFAULT_BACKEND, grouped_mm_runs, grouped_moe, loop_moe, vectorized_moe
from moe_course.experts import Experts
from tests.conftest import run_forward_backward

PLAIN = ("loop", "vectorized", "grouped")
D_MODEL, D_FF = 16, 24  # rows of 64, 96 and 192 bytes in float32: torch._grouped_mm takes them
# The grouped backend scales the narrower of the activation [n, d_ff] and the output [n, d_model]: test both.
WIDTHS = (D_FF, D_MODEL // 2)


def make_case(case: str, seed: int = 0) -> dict:
    """Routing for ``case``: indices, weights, keep and dy, with E=6 experts of which 4 and 5 are never chosen."""
    g = torch.Generator().manual_seed(seed)
    T, k = {"k=1": (17, 1), "T=1": (1, 2), "T=0": (0, 2)}.get(case, (23, 2))
    indices = torch.stack([torch.randperm(4, generator=g)[:k] for _ in range(T)]) if T else torch.zeros(0, k)
    keep = None
    if case in ("keep", "k=1", "T=1"):
        keep = torch.rand(T, k, generator=g) < 0.7
    elif case == "all dropped":
        keep = torch.zeros(T, k, dtype=torch.bool)
    return dict(
        indices=indices.long(),
        weights=torch.rand(T, k, generator=g, dtype=torch.float64),
        keep=keep,
        x=torch.randn(T, D_MODEL, generator=g, dtype=torch.float64),
        dy=torch.randn(T, D_MODEL, generator=g, dtype=torch.float64),
    )


def run(backend, case: dict, dtype, experts64: Experts, dy=None) -> list:
    """[y, dx, dweights, dw1, dw2] of ``backend`` in ``dtype``, on copies of the case's float64 tensors and of
    ``experts64`` (the output's gradient: ``dy``, by default the case's)."""
    experts = copy.deepcopy(experts64).to(dtype)
    inputs = [case["x"].to(dtype), case["weights"].to(dtype)]

    def step(x, weights):
        return backend(x, case["indices"], weights, case["keep"], experts)

    return run_forward_backward(step, inputs, [experts.w1, experts.w2], case["dy"] if dy is None else dy)


def relative_errors(got: list, want: list) -> list:
    return [((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(got, want, strict=True)]


@pytest.mark.parametrize("case", ["keep", "no keep", "k=1", "T=1", "T=0", "all dropped"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("name", PLAIN)
@pytest.mark.parametrize("d_ff", WIDTHS)
def test_every_backend_equals_the_float64_loop(d_ff, name, dtype, tolerance, case):
    torch.manual_seed(0)
    experts64 = Experts(6, D_MODEL, d_ff).double()
    data = make_case(case)
    want = run(loop_moe, data, torch.float64, experts64)
    got = run(BACKENDS[name], data, dtype, experts64)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert max(relative_errors(got, want)) < tolerance
    if case == "keep":  # the case this test is about: idle experts 4 and 5, dropped pairs
        assert not want[3][4:].any() and not want[4][4:].any()
        assert (~data["keep"]).any() and want[3][:4].any()


def test_grouped_runs_the_grouped_gemm_where_it_can_and_falls_back_where_it_cannot():
    x32 = torch.zeros(3, D_MODEL)
    assert grouped_mm_runs(x32, Experts(6, D_MODEL, D_FF))
    assert not grouped_mm_runs(x32.double(), Experts(6, D_MODEL, D_FF).double())  # no float64 kernel
    assert not grouped_mm_runs(x32, Experts(6, D_MODEL, 5))  # rows of 20 bytes: not 16-byte aligned
    assert not grouped_mm_runs(x32.half(), Experts(6, D_MODEL, D_FF))  # weights of another dtype
    torch.manual_seed(0)
    for dtype, d_ff in ((torch.float64, D_FF), (torch.float32, 5)):
        experts = Experts(6, D_MODEL, d_ff).to(dtype)
        data = make_case("keep")
        results = [run(backend, data, dtype, experts) for backend in (grouped_moe, vectorized_moe)]
        for got, want in zip(*results, strict=True):
            assert torch.equal(got, want)  # the vectorized backend itself, to the bit


def test_grouped_gemm_of_unaligned_rows_would_fail():
    """What the fallback avoids: ``torch._grouped_mm`` refuses rows that are not a multiple of 16 bytes."""
    with pytest.raises(RuntimeError):
        torch._grouped_mm(torch.randn(4, 5), torch.randn(2, 5, 8), offs=torch.tensor([1, 4], dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_grouped_in_half_precision_matches_the_float64_loop(dtype):
    torch.manual_seed(0)
    experts64 = Experts(6, D_MODEL, D_FF).double()
    data = make_case("keep")
    assert grouped_mm_runs(data["x"].to(dtype), copy.deepcopy(experts64).to(dtype))
    want = run(loop_moe, data, torch.float64, experts64)
    assert max(relative_errors(run(grouped_moe, data, dtype, experts64), want)) < 2e-2


@pytest.mark.parametrize("layout", ["expanded", "transposed"])
@pytest.mark.parametrize("d_ff", WIDTHS)
def test_grouped_backward_takes_any_upstream_gradient(d_ff, layout):
    """``y.sum().backward()`` sends an expanded gradient (strides 0), a transposed one has strides that are not
    16-byte aligned: ``_grouped_mm``'s backward on the CPU takes neither, so the backend must hand it its own."""
    torch.manual_seed(0)
    experts64 = Experts(6, D_MODEL, d_ff).double()
    data = make_case("keep")
    dy = torch.ones(1, 1).expand(23, D_MODEL) if layout == "expanded" else torch.randn(D_MODEL, 23).t()
    assert not dy.is_contiguous()
    got = run(grouped_moe, data, torch.float32, experts64, dy)
    want = run(loop_moe, data, torch.float64, experts64, dy.double())
    assert max(relative_errors(got, want)) < 1e-5


def graph_nodes(y: torch.Tensor) -> Counter:
    """The autograd nodes the backward pass from ``y`` runs, counted by kind (``MmBackward0``, ...)."""
    seen, todo = set(), [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return Counter(node.name() for node in seen)


@pytest.mark.parametrize("name", PLAIN)
def test_backward_does_not_grow_with_idle_experts(name):
    """Two experts touched out of 16 or out of 128: the same backward pass, node for node (so the same matrix
    multiplies). The weight gradients are [E, ...] tensors, written once whatever the backend."""
    nodes = {}
    for E in (16, 128):
        torch.manual_seed(0)
        experts = Experts(E, D_MODEL, D_FF)
        x = torch.randn(8, D_MODEL, requires_grad=True)
        weights = torch.rand(8, 2, requires_grad=True)
        indices = torch.tensor([[0, 1], [1, 0]]).repeat(4, 1)
        y = BACKENDS[name](x, indices, weights, None, experts)
        nodes[E] = graph_nodes(y)
        y.backward(torch.randn(8, D_MODEL))
        assert not experts.w1.grad[2:].any() and experts.w1.grad[:2].all()
    assert nodes[16] == nodes[128]
    assert nodes[16]["GroupedMmBackward0" if name == "grouped" else "MmBackward0"] == (2 if name == "grouped" else 4)


def test_the_default_backend_is_a_backend():
    assert DEFAULT_BACKEND in BACKENDS
