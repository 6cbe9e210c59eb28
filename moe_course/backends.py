"""Expert-block backends: the same function, ``y_t = Σ_j weights[t, j] · expert_{indices[t, j]}(x_t)`` over the
kept (token, slot) pairs, computed in different ways. ``loop`` is the readable reference the others are held to.

Every backend takes ``(x, indices, weights, keep, experts)``: x [T, d_model]; indices, weights [T, k] (expert ids
in ``[0, experts.E)``, router weights); keep [T, k] bool or None (all kept); an :class:`~moe_course.experts.Experts`.
It returns [T, d_model]. Backends trust their inputs: the layer (or the public function that calls one) checked
them once.
"""

import torch

from .dispatch import group_pairs, permute, unpermute_and_combine
from .experts import Experts, activate, ffn


def loop_moe(x, indices, weights, keep, experts: Experts) -> torch.Tensor:
    """Reference: for each expert, find its kept (token, slot) pairs, run it, and add the weighted outputs."""
    y = torch.zeros_like(x)
    chosen = indices if keep is None else indices.masked_fill(~keep, -1)  # -1: no expert's id
    for e, (w1, w2) in enumerate(experts.unbound()):
        token, slot = torch.where(chosen == e)
        if token.numel() == 0:
            continue  # an expert no token chose does no work
        out = ffn(x[token], w1, w2, experts.activation) * weights[token, slot].unsqueeze(-1).to(x.dtype)
        y.index_add_(0, token, out)
    return y


def vectorized_moe(x, indices, weights, keep, experts: Experts) -> torch.Tensor:
    """Sort the T·k (token, slot) pairs by expert, run each expert on its contiguous block, un-permute, combine.

    One gather and one scatter replace the loop's E masks and index-adds."""
    dispatch = group_pairs(indices, experts.E, keep)
    counts = dispatch.counts.tolist()
    blocks = torch.split(permute(x, dispatch), counts)
    # Only the experts with rows run: an idle one would add its own nodes to the backward pass, E of them in all.
    outputs = [
        ffn(block, w1, w2, experts.activation)
        for block, (w1, w2), n in zip(blocks, experts.unbound(), counts, strict=True)
        if n
    ]
    y_sorted = torch.cat(outputs) if outputs else x.new_zeros(0, x.shape[1])  # every pair dropped: nothing ran
    return unpermute_and_combine(y_sorted, dispatch, weights)


GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def grouped_mm_runs(x: torch.Tensor, experts: Experts) -> bool:
    """Whether ``torch._grouped_mm`` takes this call: a torch that has it, on the CPU (a CUDA GPU needs Hopper or
    newer and bf16), a dtype it supports, and every row of x, W1 and W2 16-byte aligned."""
    if not hasattr(torch, "_grouped_mm") or x.dtype not in GROUPED_DTYPES or experts.w1.dtype != x.dtype:
        return False
    if x.device.type == "cuda" and (x.dtype != torch.bfloat16 or torch.cuda.get_device_capability(x.device)[0] < 9):
        return False
    if x.device.type not in ("cpu", "cuda"):
        return False
    widths = (experts.d_model, experts.d_ff, experts.w1.shape[2])
    return all(w * x.element_size() % 16 == 0 for w in widths)


def grouped_moe(x, indices, weights, keep, experts: Experts) -> torch.Tensor:
    """The vectorized layout with each of the two expert GEMMs as one ``torch._grouped_mm`` over all experts'
    blocks; where that cannot run (see :func:`grouped_mm_runs`, e.g. float64), the vectorized backend.

    Two changes from the vectorized backend's combine, measured faster on a 2-core CPU (T=2048, E=128, d_ff=64,
    k=8: forward 33 -> 25 ms, forward + backward 89 -> 74 ms). The router weight scales the narrower of the
    activation rows [kept, d_ff] and the output rows [kept, d_model] (``(g·a) W2 = g·(a W2)``; at E=8, d_ff=512,
    scaling the output made forward + backward 3-6 ms faster, of about 75). And ``index_add_`` sums each token's
    rows straight into [T, d_model], with no [T·k, d_model] buffer to fill, scatter and sum. Its backward is a
    gather, so every gradient reaching ``_grouped_mm``'s backward is a fresh contiguous tensor (an index_select's, a
    product's), which its CPU kernel needs (16-byte aligned strides).

    The layer's default: on a CPU the fastest of the plain-PyTorch backends from E=64 up and at T=16 in
    ``benchmarks/bench_experts.py --cpu``, and level with the vectorized backend at E=8 with 512 rows per expert
    (``benchmarks/README.md``)."""
    if not grouped_mm_runs(x, experts):
        return vectorized_moe(x, indices, weights, keep, experts)
    dispatch = group_pairs(indices, experts.E, keep)
    kept = dispatch.num_kept  # dropped pairs sort last: only the first ``kept`` rows exist
    tokens = dispatch.token_ids[:kept]
    g = weights.reshape(-1).index_select(0, dispatch.order[:kept]).unsqueeze(-1).to(x.dtype)  # [kept, 1]
    ends = dispatch.offsets[1:].to(torch.int32)  # expert e's rows end at ends[e]; an idle expert's block is empty
    a = activate(torch._grouped_mm(x.index_select(0, tokens), experts.w1, offs=ends), experts.activation)
    if experts.d_ff <= experts.d_model:
        y_sorted = torch._grouped_mm(a * g, experts.w2, offs=ends)
    else:
        y_sorted = torch._grouped_mm(a, experts.w2, offs=ends) * g
    return torch.zeros_like(x).index_add_(0, tokens, y_sorted)


def triton_moe(x, indices, weights, keep, experts: Experts) -> torch.Tensor:
    """The fused Triton kernels (:mod:`moe_course.kernels`): gather, both GEMMs, activation and weighted combine.

    Imported on first use: importing the kernels picks Triton's interpreter on a machine without a GPU, and Triton
    is not installed where it has no wheels (macOS)."""
    from .kernels.experts import run_fused_experts

    return run_fused_experts(x.contiguous(), indices, weights, experts.w1, experts.w2, experts.activation, keep)


BACKENDS = {"loop": loop_moe, "vectorized": vectorized_moe, "grouped": grouped_moe, "triton": triton_moe}
DEFAULT_BACKEND = "grouped"  # the fastest on a CPU but for few experts with many rows each: see grouped_moe
