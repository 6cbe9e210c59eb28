"""``fused_experts``: the MoE expert block on Triton kernels, forward and backward.

    y_t = Σ_j weights[t, j] · FFN_{indices[t, j]}(x_t)      over the kept (token, slot) pairs

Forward: :func:`~moe_course.kernels.align.align` sorts the pairs into expert blocks; ``up_kernel`` gathers the
token rows and applies W1 and the activation; ``down_kernel`` applies W2 and the router weight and writes each
pair's row back in pair order, and a sum over the k slots finishes the combine (``combine="reduce"``,
deterministic), or adds the rows into their token atomically (``combine="atomic"``, the sum fused).
Backward: ``up_grad_kernel`` (gradient through W2, the activation and the router weight), ``down_kernel`` again
with W1ᵀ for the input gradient, and ``weight_grad_kernel`` for W1 and W2.
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import triton

from ..checks import check_choice, check_expert_indices
from ..env import triton_mode
from ..experts import ACTIVATIONS, first_width
from .align import Alignment, align
from .gemm import down_kernel, up_grad_kernel, up_kernel, weight_grad_kernel

COMBINES = ("reduce", "atomic")
INTERPRETED = triton_mode() == "interpreter"
DTYPES = (torch.float32, torch.float16) if INTERPRETED else (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Blocks:
    """Tile sizes and launch options of every kernel of one call."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3


def choose_blocks(rows_per_expert: float) -> Blocks:
    """Tiles from the average rows an expert receives, T·k/E: small blocks when experts get few tokens (less
    padding), large ones when they get many (more reuse of each weight tile). The interpreter pays per program
    (~10 ms each), not per element, so it gets the tiles that make the fewest programs. ``block_m`` fixes the
    padding, so it is chosen before the routing metadata is built."""
    if INTERPRETED:
        return Blocks(32, 64, 64)
    if rows_per_expert <= 16:
        return Blocks(16, 64, 64)
    if rows_per_expert <= 128:
        return Blocks(32, 64, 64)
    return Blocks(64, 128, 64, num_warps=8)


_FILL: list = []  # the value :func:`fill_buffers` puts in every new buffer, while it is in effect


@contextmanager
def fill_buffers(value: float):
    """Inside the block, every buffer a kernel writes starts filled with ``value`` instead of uninitialized
    memory: with NaN, an element a kernel forgets to write shows up in its output (a test's poison)."""
    _FILL.append(value)
    try:
        yield
    finally:
        _FILL.pop()


def _empty(shape: tuple, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Every buffer a kernel writes comes from here."""
    buffer = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    return buffer.fill_(_FILL[-1]) if _FILL else buffer


def _activation(activation: str) -> dict:
    """The kernels' activation flags: GLU for SwiGLU (gate and up columns), RELU for ReLU, neither for GELU."""
    return dict(GLU=activation == "swiglu", RELU=activation == "relu")


def _launch_options(x: torch.Tensor, blocks: Blocks) -> dict:
    return dict(
        BLOCK_M=blocks.block_m,
        BLOCK_N=blocks.block_n,
        BLOCK_K=blocks.block_k,
        UPCAST=INTERPRETED,
        PRECISION="ieee" if INTERPRETED or x.dtype == torch.float32 else None,  # None: Triton's default
        num_warps=blocks.num_warps,
        num_stages=blocks.num_stages,
    )


def _down(rows, w, w_strides, weights, alignment, kept, T, N, combine, blocks) -> torch.Tensor:
    """out_t = Σ_j weight · rows[pair] @ W[e] over t's kept pairs: rows [R, K] (sorted layout) -> [T, N].
    ``weights`` None applies no router weight."""
    options = dict(HAS_WEIGHTS=weights is not None, ATOMIC=combine == "atomic", **_launch_options(rows, blocks))
    grid = (alignment.num_blocks, triton.cdiv(N, blocks.block_n))
    args = (alignment.sorted_pairs, alignment.block_expert, alignment.num_pairs, alignment.k, rows.shape[1], N)
    if combine == "atomic":
        out = torch.zeros(T, N, dtype=torch.float32, device=rows.device)  # atomics add into zeros
        down_kernel[grid](rows, w, weights, out, *args, *w_strides, **options)
        return out.to(rows.dtype)
    out = _empty((alignment.num_pairs, N), rows)
    down_kernel[grid](rows, w, weights, out, *args, *w_strides, **options)
    return torch.where(kept[:, None], out, 0).view(T, alignment.k, N).sum(dim=1)  # dropped pairs were not written


class FusedExperts(torch.autograd.Function):
    """Autograd for the kernels: gradients for x, the router weights, W1 and W2."""

    @staticmethod
    def forward(ctx, x, weights, w1, w2, alignment: Alignment, kept, activation: str, combine: str, blocks: Blocks):
        T, D = x.shape
        F = w2.shape[1]
        R = alignment.sorted_pairs.numel()
        save = any(ctx.needs_input_grad[:4])
        a = _empty((R, F), x)
        h = _empty((R, w1.shape[2]), x) if save else a  # pre-activations, kept for the backward
        up_kernel[(alignment.num_blocks, triton.cdiv(F, blocks.block_n))](
            x, w1, h, a, alignment.sorted_pairs, alignment.block_expert, alignment.num_pairs, alignment.k, D, F,
            *w1.stride(), **_activation(activation), SAVE_H=save, **_launch_options(x, blocks),
        )  # fmt: skip
        y = _down(a, w2, w2.stride(), weights, alignment, kept, T, D, combine, blocks)
        ctx.save_for_backward(x, weights, w1, w2, h, a, kept)
        ctx.alignment, ctx.activation, ctx.blocks = alignment, activation, blocks
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weights, w1, w2, h, a, kept = ctx.saved_tensors
        alignment, blocks = ctx.alignment, ctx.blocks
        (T, D), (E, F, W1N) = x.shape, (w2.shape[0], w2.shape[1], w1.shape[2])
        n, k = alignment.num_pairs, alignment.k
        dy = dy.contiguous()
        options = _launch_options(x, blocks)
        meta = (alignment.sorted_pairs, alignment.block_expert, n, k)
        f_tiles = triton.cdiv(F, blocks.block_n)
        dh = _empty(h.shape, x)
        shares = _empty((f_tiles, n), x, torch.float32)  # each F tile's part of Σ_f g·a per pair
        up_grad_kernel[(alignment.num_blocks, f_tiles)](
            dy, w2, weights, h, dh, shares, *meta, D, F, **_activation(ctx.activation), **options
        )
        dweights = torch.where(kept, shares.sum(dim=0), 0).view(T, k).to(weights.dtype)
        w1_transposed = (w1.stride(0), w1.stride(2), w1.stride(1))  # W1[e]ᵀ: [W1N, D]
        dx = _down(dh, w1, w1_transposed, None, alignment, kept, T, D, "reduce", blocks)
        by_expert = (alignment.sorted_pairs, alignment.counts, alignment.padded_offsets, n, k)
        dw1 = _empty(w1.shape, w1)
        weight_grad_kernel[(E, triton.cdiv(D, blocks.block_k), triton.cdiv(W1N, blocks.block_n))](
            x, dh, weights, dw1, *by_expert, D, W1N, GATHER_A=True, GATHER_B=False, SCALE_A=False, **options
        )
        dw2 = _empty(w2.shape, w2)
        weight_grad_kernel[(E, triton.cdiv(F, blocks.block_k), triton.cdiv(D, blocks.block_n))](
            a, dy, weights, dw2, *by_expert, F, D, GATHER_A=False, GATHER_B=True, SCALE_A=True, **options
        )
        return dx, dweights, dw1, dw2, None, None, None, None, None


def check_kernel_inputs(x, indices, weights, w1, w2, activation, keep) -> None:
    """Every problem a launch would hit, as a ``ValueError`` naming the argument, before anything runs."""
    check_choice("activation", activation, ACTIVATIONS)
    tensors = {"x": x, "indices": indices, "weights": weights, "w1": w1, "w2": w2}
    if keep is not None:
        tensors["keep"] = keep
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    device = "cpu" if INTERPRETED else "cuda"
    for name, t in tensors.items():
        if t.device.type != device:
            mode = "the Triton interpreter (no GPU)" if INTERPRETED else "Triton on the GPU"
            raise ValueError(f"{name} must be on the {device} device for {mode}, got {t.device}")
    if x.dim() != 2:
        raise ValueError(f"x must have shape [T, d_model], got {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"x must have one of the dtypes {[str(d) for d in DTYPES]} here, got {x.dtype}")
    T, D = x.shape
    if w2.dim() != 3 or w2.shape[2] != D:
        raise ValueError(f"w2 must have shape [E, d_ff, d_model={D}], got {tuple(w2.shape)}")
    E, F = w2.shape[0], w2.shape[1]
    width = first_width(F, activation)
    if tuple(w1.shape) != (E, D, width):
        raise ValueError(f"w1 must have shape [E, d_model, {'2·' if width != F else ''}d_ff] = {(E, D, width)}, "
                         f"got {tuple(w1.shape)}")  # fmt: skip
    for name in ("w1", "w2"):
        if tensors[name].dtype != x.dtype:
            raise ValueError(f"{name} must have the dtype of x ({x.dtype}), got {tensors[name].dtype}")
    for name in ("x", "w1", "w2"):
        if not tensors[name].is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    check_expert_indices(indices, E)
    if indices.shape[0] != T:
        raise ValueError(f"indices must have one row per token of x ({T}), got {indices.shape[0]}")
    if weights.shape != indices.shape or not weights.is_floating_point():
        raise ValueError(f"weights must be a floating-point tensor of shape {tuple(indices.shape)}, "
                         f"got {weights.dtype} {tuple(weights.shape)}")  # fmt: skip
    if keep is not None and (keep.shape != indices.shape or keep.dtype != torch.bool):
        raise ValueError(f"keep must be a bool tensor of shape {tuple(indices.shape)}, got {keep.dtype} "
                         f"{tuple(keep.shape)}")  # fmt: skip


def fused_experts(
    x: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    activation: str = "swiglu",
    keep: torch.Tensor | None = None,
    combine: str = "reduce",
) -> torch.Tensor:
    """The MoE expert block on Triton kernels, differentiable in x, weights, w1 and w2.

    x: [T, d_model]; indices, weights: [T, k] (expert ids, router weights); w1: [E, d_model, d_ff] (GELU) or
    [E, d_model, 2·d_ff] (SwiGLU, gate then up); w2: [E, d_ff, d_model]; keep: [T, k] bool or None (pairs
    dropped by a capacity limit contribute nothing). Returns [T, d_model].
    The metadata and the kernels need no host synchronization; the argument checks do (two, to see that every
    expert id lies in [0, E): an id out of range would read and write outside the weights).
    """
    check_kernel_inputs(x, indices, weights, w1, w2, activation, keep)
    check_choice("combine", combine, COMBINES)
    return run_fused_experts(x, indices, weights, w1, w2, activation, keep, combine)


def run_fused_experts(x, indices, weights, w1, w2, activation, keep=None, combine="reduce") -> torch.Tensor:
    """:func:`fused_experts` without the argument checks, and so without a host synchronization (the MoE layer's
    ``triton`` backend; its router makes ids in range)."""
    T, k = indices.shape
    E = w1.shape[0]
    if T * k == 0:
        return x * 0  # no pairs, no work (and still a graph back to x)
    blocks = choose_blocks(T * k / E)
    alignment = align(indices, E, blocks.block_m, keep)
    kept = torch.ones(T * k, dtype=torch.bool, device=x.device) if keep is None else keep.reshape(-1)
    return FusedExperts.apply(x, weights.contiguous(), w1, w2, alignment, kept, activation, combine, blocks)
