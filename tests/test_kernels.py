"""The Triton expert kernels against the loop reference: outputs and every gradient, on the CPU through Triton's
interpreter (GPU-only cases skip without one). Every buffer a kernel writes is filled with NaN first, so an
element it forgets to write fails the comparison."""

import pytest
import torch

import moe_course.kernels.experts as kernel_experts
from moe_course.backends import loop_moe
from moe_course.config import MoEConfig
from moe_course.experts import Experts
from moe_course.kernels import align, expert_counts, fill_buffers, fused_experts
from moe_course.layer import MoELayer
from moe_course.model import TinyLM, TinyLMConfig
from tests.conftest import make_indices, run_forward_backward

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"


@pytest.fixture(autouse=True)
def poisoned_buffers():
    with fill_buffers(float("nan")):
        yield


def run_both(T, k, E, D, F, activation, kind="uniform", drop=0.0, combine="reduce", dtype=torch.float32, seed=0):
    """(kernel results, float64 loop results): output, dx, dweights, dw1, dw2."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    experts = Experts(E, D, F, activation).double()
    x = torch.randn(T, D, generator=g, dtype=torch.float64)
    indices = make_indices(kind, T, k, E, g)
    weights = torch.rand(T, k, generator=g, dtype=torch.float64)
    keep = torch.rand(T, k, generator=g) >= drop if drop else None
    reference = run_forward_backward(
        lambda x, w: loop_moe(x, indices, w, keep, experts), [x, weights], [experts.w1, experts.w2], seed=seed
    )

    def kernels(x, w, w1, w2):
        move = None if keep is None else keep.to(DEVICE)
        return fused_experts(x, indices.to(DEVICE), w, w1, w2, activation, move, combine)

    on_device = [x.to(DEVICE, dtype), weights.to(DEVICE, torch.float32), experts.w1.to(DEVICE, dtype),
                 experts.w2.to(DEVICE, dtype)]  # fmt: skip
    got = run_forward_backward(kernels, on_device, seed=seed)
    return [t.double().cpu() for t in got], reference


def assert_close(got, reference, tol):
    for name, a, b in zip(("output", "dx", "dweights", "dw1", "dw2"), got, reference, strict=True):
        assert a.shape == b.shape, name
        assert not a.isnan().any(), f"{name}: unwritten (NaN) elements"
        assert torch.allclose(a, b, rtol=tol, atol=tol), f"{name}: max error {(a - b).abs().max():.2e}"


CASES = [  # T, k, E, D, F, activation, routing kind, drop probability, combine
    (37, 2, 4, 24, 40, "swiglu", "uniform", 0.0, "reduce"),  # T and D not multiples of any block
    (37, 2, 4, 24, 40, "gelu", "uniform", 0.0, "reduce"),
    (37, 2, 4, 24, 40, "swiglu", "uniform", 0.0, "atomic"),
    (1, 2, 4, 24, 40, "swiglu", "uniform", 0.0, "reduce"),  # one token
    (29, 1, 4, 20, 24, "swiglu", "uniform", 0.0, "reduce"),  # k = 1
    (33, 2, 4, 24, 16, "gelu", "one_expert", 0.0, "reduce"),  # every token on one expert
    (37, 2, 4, 24, 40, "relu", "uniform", 0.0, "reduce"),  # ReLU (Switch, GShard)
    (24, 2, 8, 24, 16, "swiglu", "half_idle", 0.0, "reduce"),  # experts with zero tokens
    (40, 2, 4, 24, 24, "swiglu", "uniform", 0.4, "reduce"),  # pairs dropped by a capacity limit
    (16, 8, 64, 24, 16, "swiglu", "uniform", 0.0, "reduce"),  # k = 8, E = 64
    (70, 2, 2, 72, 80, "swiglu", "uniform", 0.0, "reduce"),  # full tiles and a partial one in every dimension
]


@pytest.mark.parametrize("T, k, E, D, F, activation, kind, drop, combine", CASES)
def test_kernels_match_the_loop_in_fp32(T, k, E, D, F, activation, kind, drop, combine):
    got, reference = run_both(T, k, E, D, F, activation, kind, drop, combine)
    assert_close(got, reference, 1e-4)


def test_kernels_in_fp16():
    got, reference = run_both(37, 2, 4, 24, 40, "swiglu", dtype=torch.float16)
    assert_close(got, reference, 2e-2)


def test_alignment_holds_every_kept_pair_once_in_single_expert_blocks():
    g = torch.Generator().manual_seed(1)
    T, k, E, block_m = 45, 2, 6, 8
    indices = make_indices("half_idle", T, k, E, g)
    keep = torch.rand(T, k, generator=g) > 0.2
    a = align(indices, E, block_m, keep)
    n = T * k
    assert a.sorted_pairs.numel() == a.num_blocks * block_m >= n
    real = a.sorted_pairs[a.sorted_pairs < n]
    assert sorted(real.tolist()) == keep.reshape(-1).nonzero().flatten().tolist()  # each kept pair exactly once
    assert torch.equal(a.counts.long(), torch.bincount(indices[keep], minlength=E))
    assert bool((a.padded_offsets % block_m == 0).all())
    experts_of_rows = indices.reshape(-1)[a.sorted_pairs.clamp(max=n - 1)]
    for b, e in enumerate(a.block_expert.tolist()):
        rows = a.sorted_pairs[b * block_m : (b + 1) * block_m]
        if e < 0:
            assert bool((rows == n).all()) and b * block_m >= int(a.padded_offsets[-1])
        else:
            assert bool((experts_of_rows[b * block_m : (b + 1) * block_m][rows < n] == e).all())
    # stable: an expert's pairs in pair order
    for e in range(E):
        start = int(a.padded_offsets[e])
        segment = a.sorted_pairs[start : start + int(a.counts[e])]
        assert torch.equal(segment, segment.sort().values)


def test_expert_counts_skip_dropped_entries():
    experts = torch.tensor([0, 3, 3, 5, 1, 3, 5, 9, 2])  # 5 and 9 stand for dropped pairs when E = 5
    assert expert_counts(experts, 5).tolist() == [1, 1, 1, 3, 0]
    assert expert_counts(torch.zeros(0, dtype=torch.int64), 3).tolist() == [0, 0, 0]


def test_the_triton_backend_trains_like_the_vectorized_one():
    x = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(0))
    losses = {}
    for backend in ("vectorized", "triton"):
        torch.manual_seed(0)
        moe = MoEConfig(d_model=24, d_ff=16, E=4, k=2, backend=backend)
        model = TinyLM(TinyLMConfig(vocab_size=11, seq_len=8, n_heads=2, moe=moe))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        losses[backend] = []
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[backend].append(loss.item())
    assert losses["triton"] == pytest.approx(losses["vectorized"], rel=1e-4)
    assert losses["triton"][-1] < losses["triton"][0]


def test_layer_backend_with_capacity_and_shared_experts():
    layers = {}
    for backend in ("vectorized", "triton"):
        torch.manual_seed(0)
        layers[backend] = MoELayer(MoEConfig(24, 16, 4, 2, n_shared=1, capacity_factor=0.75, backend=backend))
    x = torch.randn(3, 10, 24)
    assert torch.allclose(layers["triton"](x), layers["vectorized"](x), atol=1e-5)
    assert layers["triton"].last_stats.dropped_pairs > 0


def valid_call():
    E, D, F, T, k = 4, 8, 16, 5, 2
    return dict(
        x=torch.randn(T, D),
        indices=torch.randint(0, E, (T, k)),
        weights=torch.rand(T, k),
        w1=torch.randn(E, D, 2 * F),
        w2=torch.randn(E, F, D),
    )


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(w1=torch.randn(4, 8, 16)), "w1"),  # GELU-sized W1 for SwiGLU
        (dict(w2=torch.randn(4, 16, 9)), "w2"),
        (dict(x=torch.randn(8, 5).T), "x"),  # not contiguous
        (dict(x=torch.randn(5, 8, dtype=torch.float64)), "x"),  # unsupported dtype
        (dict(w2=torch.randn(4, 16, 8, device="meta")), "w2"),  # wrong device
        (dict(indices=torch.full((5, 2), 4)), "indices"),
        (dict(weights=torch.rand(5, 3)), "weights"),
        (dict(keep=torch.ones(5, 2)), "keep"),
        (dict(activation="tanh"), "activation"),
        (dict(combine="sum"), "combine"),
    ],
)
def test_bad_calls_are_named_before_any_launch(change, name, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("a kernel was launched")

    monkeypatch.setattr(kernel_experts, "align", no_launch)
    monkeypatch.setattr(kernel_experts, "run_fused_experts", no_launch)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        fused_experts(**{**valid_call(), **change})


@pytest.mark.skipif(GPU, reason="the CPU interpreter has no bf16")
def test_bf16_is_refused_on_the_cpu():
    call = valid_call()
    with pytest.raises(ValueError, match="dtype"):
        fused_experts(**{**call, "x": call["x"].bfloat16()})


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("T, k, E, D, F", [(512, 2, 8, 256, 512), (1000, 8, 64, 200, 96), (3, 6, 64, 128, 64)])
@pytest.mark.parametrize("combine", ["reduce", "atomic"])
def test_gpu_bf16_and_larger_shapes(T, k, E, D, F, combine):
    got, reference = run_both(T, k, E, D, F, "swiglu", combine=combine, dtype=torch.bfloat16)
    for name, a, b in zip(("output", "dx", "dweights", "dw1", "dw2"), got, reference, strict=True):
        scale = b.abs().max().clamp_min(1e-6)
        assert (a - b).abs().max() / scale < 3e-2, name


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_gpu_fp32_is_exact_not_tf32():
    got, reference = run_both(256, 2, 8, 128, 256, "swiglu")
    assert_close(got, reference, 1e-4)


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_the_layer_on_the_triton_backend_never_synchronizes_the_host():
    """Routing, capacity, alignment and kernels stay on the device: no host synchronization, forward or backward."""
    layer = MoELayer(MoEConfig(256, 512, 8, 2, capacity_factor=1.0, backend="triton")).cuda()
    x = torch.randn(4, 64, 256, device="cuda", requires_grad=True)
    layer(x)  # the first call compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
