"""Grouped GEMM kernels over the padded expert-sorted layout of :mod:`moe_course.kernels.align`.

Each program of the two row kernels owns one block of ``BLOCK_M`` rows (one expert, read from ``block_expert``)
and one tile of ``BLOCK_N`` output columns. Rows are pairs; ``pair // k`` is the pair's token, so the first
kernel **gathers** token rows straight from the unpermuted input and no permuted copy is ever written.

- ``up_kernel``:   h = x[token] @ W1[e]  and  a = act(h)           (SwiGLU: gate and up columns of one W1; GELU,
                   or ReLU with ``RELU=True``)
- ``down_kernel``: out[pair] = weight[pair] · (rows @ W[e])         (or atomically added into out[token])
- ``up_grad_kernel``: g = dy[token] @ W2[e]ᵀ, then the activation's backward and the router-weight gradient
- ``weight_grad_kernel``: dW[e] = Σ over expert e's rows of A[row]ᵀ B[row]

Weights are addressed through explicit strides, so the backward reuses ``down_kernel`` with W1ᵀ.
Accumulation is in fp32. ``UPCAST`` (the CPU interpreter) converts tiles to fp32 before ``tl.dot``, whose
reduced-precision paths the interpreter does not compute correctly; ``PRECISION`` is ``"ieee"`` for fp32 inputs,
so that a GPU does not silently round them to TF32 (``None``, Triton's default, for fp16 and bf16).
"""

import triton
import triton.language as tl

SQRT_HALF = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327


@triton.jit
def _act(h, RELU: tl.constexpr):
    """The activation of an ungated expert: ReLU, or GELU (exact, with erf)."""
    if RELU:
        a = tl.maximum(h, 0.0)
    else:
        a = 0.5 * h * (1.0 + tl.math.erf(h * SQRT_HALF))
    return a


@triton.jit
def _act_grad(h, RELU: tl.constexpr):
    """Its derivative; ReLU's is 0 at h = 0, as torch's."""
    if RELU:
        d = tl.where(h > 0.0, 1.0, 0.0)
    else:
        d = 0.5 * (1.0 + tl.math.erf(h * SQRT_HALF)) + h * INV_SQRT_2PI * tl.exp(-0.5 * h * h)
    return d


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _rows_times_weight(
    a_ptr, a_rows, a_ok, w, stride_wk, stride_wn, cols, col_ok, K, acc,
    BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """acc + A[a_rows, :K] @ W[:K, cols], one BLOCK_K slice at a time: A is row-major [·, K] (rows ``a_ok`` only,
    the others read as 0), W one expert's matrix addressed by its strides (a transposed W by swapped strides)."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_ptr + a_rows[:, None] * K + ks[None, :], mask=a_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & col_ok[None, :]
        b = tl.load(w + ks[:, None] * stride_wk + cols[None, :] * stride_wn, mask=w_mask, other=0.0)
        acc = _dot(a, b, acc, UPCAST, PRECISION)
    return acc


@triton.jit
def _block(block_expert_ptr, sorted_pairs_ptr, num_pairs, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's expert (-1: an unused block, nothing to do), its rows of the sorted layout, their pairs
    (``valid``: not padding) and its column tile."""
    e = tl.load(block_expert_ptr + tl.program_id(0))
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_pairs_ptr + rows)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return e, rows, pairs, pairs < num_pairs, cols, cols < n_cols


@triton.jit
def up_kernel(
    x_ptr, w1_ptr, h_ptr, a_ptr, sorted_pairs_ptr, block_expert_ptr, num_pairs, k, D, F,
    stride_we, stride_wk, stride_wn, GLU: tl.constexpr, SAVE_H: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    RELU: tl.constexpr = False,
):  # fmt: skip
    """x: [T, D] -> a: [R, F] (and h: [R, F or 2F] when SAVE_H); W1: [E, D, F or 2F] (SwiGLU: [gate | up])."""
    e, rows, pairs, valid, cols, col_ok = _block(block_expert_ptr, sorted_pairs_ptr, num_pairs, F, BLOCK_M, BLOCK_N)
    if e < 0:
        return
    tokens = pairs // k
    w = w1_ptr + e.to(tl.int64) * stride_we
    zeros = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    gate = _rows_times_weight(x_ptr, tokens, valid, w, stride_wk, stride_wn, cols, col_ok, D, zeros,
                              BLOCK_K, UPCAST, PRECISION)  # fmt: skip
    if GLU:  # the up projection: the columns F.. of W1 (the x tiles it reads again come from the cache)
        up = _rows_times_weight(x_ptr, tokens, valid, w, stride_wk, stride_wn, cols + F, col_ok, D, zeros,
                                BLOCK_K, UPCAST, PRECISION)  # fmt: skip
        act = gate * tl.sigmoid(gate) * up
    else:
        act = _act(gate, RELU)
    out = rows[:, None] * F + cols[None, :]
    tl.store(a_ptr + out, act.to(a_ptr.dtype.element_ty), mask=col_ok[None, :])
    if SAVE_H:
        width = 2 * F if GLU else F
        out = rows[:, None] * width + cols[None, :]
        tl.store(h_ptr + out, gate.to(h_ptr.dtype.element_ty), mask=col_ok[None, :])
        if GLU:
            tl.store(h_ptr + out + F, up.to(h_ptr.dtype.element_ty), mask=col_ok[None, :])


@triton.jit
def down_kernel(
    in_ptr, w_ptr, weights_ptr, out_ptr, sorted_pairs_ptr, block_expert_ptr,
    num_pairs, k, K, N,
    stride_we, stride_wk, stride_wn,
    HAS_WEIGHTS: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """rows: [R, K] in the sorted layout, W: [E, K, N] (by strides) -> out[pair]: [T·k, N] (``ATOMIC``: the
    weighted rows are added into out[token]: [T, N] in fp32, the top-k sum fused)."""
    e, rows, pairs, valid, cols, col_ok = _block(block_expert_ptr, sorted_pairs_ptr, num_pairs, N, BLOCK_M, BLOCK_N)
    if e < 0:
        return
    w = w_ptr + e.to(tl.int64) * stride_we
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _rows_times_weight(in_ptr, rows, valid, w, stride_wk, stride_wn, cols, col_ok, K, acc,
                             BLOCK_K, UPCAST, PRECISION)  # fmt: skip
    if HAS_WEIGHTS:
        acc = acc * tl.load(weights_ptr + pairs, mask=valid, other=0.0).to(tl.float32)[:, None]
    mask = valid[:, None] & col_ok[None, :]
    if ATOMIC:
        tl.atomic_add(out_ptr + (pairs // k)[:, None] * N + cols[None, :], acc, mask=mask)
    else:
        tl.store(out_ptr + pairs[:, None] * N + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def up_grad_kernel(
    dy_ptr, w2_ptr, weights_ptr, h_ptr, dh_ptr, dweights_ptr, sorted_pairs_ptr, block_expert_ptr,
    num_pairs, k, D, F,
    GLU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    RELU: tl.constexpr = False,
):  # fmt: skip
    """g = dy[token] @ W2[e]ᵀ ([R, F]; W2: [E, F, D]), the gradient of the expert's output a before the router
    weight. Writes dh = act'(h) · weight · g ([R, F or 2F]) and this column tile's share of the router-weight
    gradient Σ_f g · a into dweights[pid_n, pair] ([F tiles, T·k], summed by the caller)."""
    e, rows, pairs, valid, cols, col_ok = _block(block_expert_ptr, sorted_pairs_ptr, num_pairs, F, BLOCK_M, BLOCK_N)
    if e < 0:
        return
    tokens = pairs // k
    w2 = w2_ptr + e.to(tl.int64) * F * D
    g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    g = _rows_times_weight(dy_ptr, tokens, valid, w2, 1, D, cols, col_ok, D, g, BLOCK_K, UPCAST, PRECISION)  # W2[e]ᵀ
    weight = tl.load(weights_ptr + pairs, mask=valid, other=0.0).to(tl.float32)[:, None]
    width = 2 * F if GLU else F
    h_offsets = rows[:, None] * width + cols[None, :]
    mask = col_ok[None, :]
    gate = tl.load(h_ptr + h_offsets, mask=mask, other=0.0).to(tl.float32)
    if GLU:
        up = tl.load(h_ptr + h_offsets + F, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(gate)
        silu = gate * sig
        a = silu * up
        da = weight * g
        d_gate = da * up * sig * (1.0 + gate * (1.0 - sig))  # silu'(gate) = sig · (1 + gate · (1 − sig))
        tl.store(dh_ptr + h_offsets, d_gate.to(dh_ptr.dtype.element_ty), mask=mask)
        tl.store(dh_ptr + h_offsets + F, (da * silu).to(dh_ptr.dtype.element_ty), mask=mask)
    else:
        a = _act(gate, RELU)
        tl.store(dh_ptr + h_offsets, (weight * g * _act_grad(gate, RELU)).to(dh_ptr.dtype.element_ty), mask=mask)
    share = tl.sum(tl.where(mask, g * a, 0.0), axis=1)
    tl.store(dweights_ptr + tl.program_id(1) * num_pairs + pairs, share, mask=valid)


@triton.jit
def weight_grad_kernel(
    a_ptr, b_ptr, weights_ptr, dw_ptr, sorted_pairs_ptr, counts_ptr, padded_offsets_ptr,
    num_pairs, k, K, N,
    GATHER_A: tl.constexpr, GATHER_B: tl.constexpr, SCALE_A: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dW[e] = Σ_rows A[row]ᵀ B[row] over expert e's rows -> dW: [E, K, N]. A row is read from the sorted layout
    ([R, K]) or, with ``GATHER_A``, from the token's row of a [T, K] tensor; likewise B. ``SCALE_A`` multiplies
    A's rows by the pair's router weight. An expert without rows gets a zero gradient."""
    e, pid_k, pid_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(padded_offsets_ptr + e)
    count = tl.load(counts_ptr + e)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok, col_ok = ks < K, cols < N
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, count, BLOCK_M):
        rows = start + r0 + tl.arange(0, BLOCK_M)
        row_ok = r0 + tl.arange(0, BLOCK_M) < count
        pairs = tl.load(sorted_pairs_ptr + rows, mask=row_ok, other=0)
        a_rows = pairs // k if GATHER_A else rows
        b_rows = pairs // k if GATHER_B else rows
        a = tl.load(a_ptr + a_rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if SCALE_A:
            weight = tl.load(weights_ptr + pairs, mask=row_ok, other=0.0)
            a = (a.to(tl.float32) * weight.to(tl.float32)[:, None]).to(a_ptr.dtype.element_ty)
        b = tl.load(b_ptr + b_rows[:, None] * N + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _dot(tl.trans(a), b, acc, UPCAST, PRECISION)
    out = dw_ptr + e.to(tl.int64) * K * N + ks[:, None] * N + cols[None, :]
    tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=k_ok[:, None] & col_ok[None, :])
