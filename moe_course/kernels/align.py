"""Routing metadata for the grouped GEMMs, computed on the device without a host synchronization.

The T·k (token, slot) pairs (pair ``p = t·k + j``) are sorted by expert, and each expert's segment is padded to a
multiple of ``BLOCK_M`` rows, so that every block of ``BLOCK_M`` rows belongs to exactly one expert and a kernel
program can load one expert's weights for its whole block (the layout of MegaBlocks and vLLM's fused MoE):

    rows      | e0 e0 e0 -- | e1 e1 e1 e1 | e1 -- -- -- | e3 -- -- -- |  unused ...
    block     |      0      |      1      |      2      |      3      |
    expert    |      0      |      1      |      1      |      3      |  -1

``--`` are padding rows (pair id ``T·k``, which no kernel reads or writes). The number of blocks is not known
without reading the counts back to the host, so the layout is sized for the worst case,
``T·k + min(E, T·k)·(BLOCK_M − 1)`` rows, and the blocks past the used ones have expert ``-1`` and return at once.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..dispatch import order_by_expert, pair_experts


@triton.jit
def _histogram_kernel(experts_ptr, counts_ptr, n, E, BLOCK: tl.constexpr):
    """counts[e] += 1 for every entry ``e < E`` of ``experts[:n]``; entries ``>= E`` (dropped pairs) are skipped."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < n
    e = tl.load(experts_ptr + offsets, mask=in_range, other=E)
    tl.atomic_add(counts_ptr + e, tl.full([BLOCK], 1, tl.int32), mask=in_range & (e < E))


def expert_counts(experts: torch.Tensor, E: int, block: int = 1024) -> torch.Tensor:
    """Pairs per expert: experts: [n] int64 (values >= E are not counted) -> counts: [E] int32."""
    counts = torch.zeros(E, dtype=torch.int32, device=experts.device)
    n = experts.numel()
    if n:
        _histogram_kernel[(triton.cdiv(n, block),)](experts, counts, n, E, BLOCK=block)
    return counts


@dataclass
class Alignment:
    """The padded expert-sorted layout of the pairs.

    sorted_pairs:   [R]      pair id of each row; padding rows and rows past the last block hold ``num_pairs``
    block_expert:   [R/BM]   expert of each block of ``block_m`` rows; -1 for unused blocks
    counts:         [E]      kept pairs per expert
    padded_offsets: [E+1]    expert e's rows start at ``padded_offsets[e]`` (a multiple of ``block_m``)
    """

    sorted_pairs: torch.Tensor
    block_expert: torch.Tensor
    counts: torch.Tensor
    padded_offsets: torch.Tensor
    block_m: int
    num_pairs: int
    k: int

    @property
    def num_blocks(self) -> int:
        return self.block_expert.numel()


def align(indices: torch.Tensor, E: int, block_m: int, keep: torch.Tensor | None = None) -> Alignment:
    """Sort the pairs of ``indices: [T, k]`` by expert into blocks of ``block_m`` rows; pairs with ``keep`` False
    are left out. Stable: within an expert, pairs stay in pair order."""
    T, k = indices.shape
    n, device = T * k, indices.device
    experts = pair_experts(indices, E, keep)
    counts = expert_counts(experts, E)
    s = order_by_expert(experts, E, counts)  # pairs by expert, dropped pairs (expert E) last
    padded_offsets = torch.zeros(E + 1, dtype=torch.int64, device=device)
    padded_offsets[1:] = torch.cumsum(triton.cdiv(counts, block_m) * block_m, dim=0)
    sorted_experts = experts[s.order]
    expert = sorted_experts.clamp(max=E - 1)
    rows = triton.cdiv(n + min(E, n) * (block_m - 1), block_m) * block_m
    destination = torch.where(sorted_experts < E, padded_offsets[expert] + s.ranks, rows)  # dropped: a spare row
    sorted_pairs = torch.full((rows + 1,), n, dtype=torch.int64, device=device)
    sorted_pairs[destination] = s.order
    block_start = torch.arange(0, rows, block_m, device=device)
    block_expert = torch.searchsorted(padded_offsets[1:], block_start, right=True)
    block_expert = torch.where(block_start < padded_offsets[E], block_expert, -1).to(torch.int32)
    return Alignment(sorted_pairs[:rows], block_expert, counts, padded_offsets, block_m, n, k)
