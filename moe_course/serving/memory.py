"""The memory and bandwidth model of MoE decoding: what must be resident, what a decode step reads, and whether the
step waits on memory or on compute.

Units: bytes, bytes/s (bandwidths), FLOP/s (peak rates), seconds. Only one MoE layer's expert weights are counted
(no attention, KV cache or activations), so the times are lower bounds. FLOPs follow :mod:`moe_course.flops`: 2 per
weight per token.

All E experts of a layer must be resident (any token may pick any of them), but a decode step of B tokens reads
only the experts its tokens picked: with k of E picked uniformly at random per token, E·(1 − (1 − k/E)^B) distinct
experts in expectation, about k·B for small batches and E for large ones. While B is small a decode step waits on
memory: it reads each touched expert's weights to spend only 2 FLOPs per weight per token on them. It turns
compute-bound when the FLOPs of B tokens' k experts take as long as reading the distinct experts' weights: for a
dense layer at B = bytes_per_param · peak_flops / (2 · bandwidth), for an MoE at about E/k times that batch.
"""

from dataclasses import dataclass

import torch

from ..checks import check_non_negative_int, check_number, check_positive_int, check_tensor, check_top_k
from ..flops import ffn_params


def expected_distinct_experts(E: int, k: int, B: int) -> float:
    """E·(1 − (1 − k/E)^B): the expected number of distinct experts a batch of B tokens touches when each token
    picks k distinct experts uniformly at random. One token misses a given expert with probability 1 − k/E, all B
    independently; a skewed router touches fewer (its tokens pile onto the same experts)."""
    check_top_k(k, E)
    check_non_negative_int("B", B)
    return distinct_of(E, k, B)


def distinct_of(E: int, k: int, B: int) -> float:
    """:func:`expected_distinct_experts` without the argument checks."""
    return E * (1 - (1 - k / E) ** B)


def distinct_experts(indices: torch.Tensor) -> int:
    """The distinct experts a routing touches: indices [B, k] -> the number of different ids in it."""
    check_tensor("indices", indices, ("B", "k"), "integer")
    return indices.unique().numel()


def expert_bytes(d_model: int, d_ff: int, bytes_per_param: float = 2, gated: bool = False) -> float:
    """Bytes of one expert's weights: :func:`~moe_course.flops.ffn_params` × ``bytes_per_param`` (2 for bf16, 0.5
    at 4 bits)."""
    check_number("bytes_per_param", bytes_per_param, positive=True)
    return ffn_params(d_model, d_ff, gated) * bytes_per_param


def resident_bytes(d_model: int, d_ff: int, E: int, bytes_per_param: float = 2, gated: bool = False) -> float:
    """Bytes one MoE layer keeps in memory to decode: all E experts, since any token may pick any of them."""
    check_positive_int("E", E)
    return E * expert_bytes(d_model, d_ff, bytes_per_param, gated)


def touched_bytes(
    d_model: int, d_ff: int, E: int, k: int, B: int, bytes_per_param: float = 2, gated: bool = False
) -> float:
    """Bytes one decode step of B tokens reads from one MoE layer: the expected distinct experts' weights."""
    return expected_distinct_experts(E, k, B) * expert_bytes(d_model, d_ff, bytes_per_param, gated)


@dataclass(frozen=True)
class DecodeTime:
    """Lower bounds on one MoE layer's decode step, in seconds."""

    memory_time: float  # touched bytes / memory bandwidth
    compute_time: float  # FLOPs / peak FLOP rate

    @property
    def time(self) -> float:
        """The step takes at least the longer of the two (they overlap at best)."""
        return max(self.memory_time, self.compute_time)

    @property
    def bound(self) -> str:
        """``"memory"`` or ``"compute"``: which one sets the time (memory on a tie)."""
        return "memory" if self.memory_time >= self.compute_time else "compute"


def decode_time_bound(
    d_model: int,
    d_ff: int,
    E: int,
    k: int,
    B: int,
    bandwidth: float,
    peak_flops: float,
    bytes_per_param: float = 2,
    gated: bool = False,
) -> DecodeTime:
    """Memory and compute time of one decode step of B tokens through one MoE layer's experts: reading the
    expected distinct experts' weights at ``bandwidth`` (bytes/s), and B tokens × k experts × 2 FLOPs per weight at
    ``peak_flops`` (FLOP/s)."""
    check_number("bandwidth", bandwidth, positive=True)
    check_number("peak_flops", peak_flops, positive=True)
    touched = touched_bytes(d_model, d_ff, E, k, B, bytes_per_param, gated)
    flops = 2 * ffn_params(d_model, d_ff, gated) * k * B
    return DecodeTime(memory_time=touched / bandwidth, compute_time=flops / peak_flops)


def compute_bound_batch(E: int, k: int, bandwidth: float, peak_flops: float, bytes_per_param: float = 2) -> int:
    """The smallest batch B whose decode step is compute-bound (compute time >= memory time).

    With P weights per expert: 2·P·k·B / peak_flops >= distinct(B)·P·bytes_per_param / bandwidth. P cancels, so the
    answer depends on the routing (E, k) and the chip's ratio peak_flops / bandwidth only. The left side grows
    linearly in B and distinct(B) ever slower, so past the crossing every larger batch is compute-bound too. A dense
    layer (k = E) crosses at bytes_per_param · peak_flops / (2 · bandwidth); an MoE, reading up to E experts for the
    k each token uses, at about E/k times that.
    """
    check_top_k(k, E)
    check_number("bandwidth", bandwidth, positive=True)
    check_number("peak_flops", peak_flops, positive=True)
    check_number("bytes_per_param", bytes_per_param, positive=True)

    def compute_bound(B: int) -> bool:
        return 2 * k * B * bandwidth >= bytes_per_param * peak_flops * distinct_of(E, k, B)

    hi = 1
    while not compute_bound(hi):
        hi *= 2
    lo = hi // 2 + 1 if hi > 1 else 1  # compute_bound(lo - 1) is False, compute_bound(hi) True
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if compute_bound(mid) else (mid + 1, hi)
    return hi


@dataclass(frozen=True)
class MissCost:
    """Two ways to serve a missing expert (Fiddler, Kamahori et al. 2024), in seconds."""

    transfer_time: float  # copy its weights to the GPU: bytes / PCIe bandwidth
    cpu_time: float  # run it where its weights are: max(2 · params · tokens / CPU FLOP rate, bytes / CPU bandwidth)
    crossover_tokens: float  # the CPU is cheaper for fewer tokens than this, the transfer from it on (0: never the CPU)

    @property
    def cheaper(self) -> str:
        """``"cpu"`` or ``"transfer"`` (the transfer on a tie)."""
        return "cpu" if self.cpu_time < self.transfer_time else "transfer"


def missing_expert_cost(
    d_model: int,
    d_ff: int,
    tokens: int,
    pcie_bandwidth: float,
    cpu_flops: float,
    cpu_bandwidth: float,
    bytes_per_param: float = 2,
    gated: bool = False,
) -> MissCost:
    """Transfer versus CPU compute for an expert missing from the GPU that ``tokens`` tokens need.

    The transfer copies the expert's bytes over PCIe (``pcie_bandwidth``, bytes/s) and costs the same for 1 token as
    for 1000. The CPU's time is a roofline: it reads the expert's bytes from its memory once per call
    (``cpu_bandwidth``, bytes/s) and spends 2 FLOPs per weight per token (``cpu_flops``, FLOP/s), so it takes
    max(2 · params · tokens / cpu_flops, bytes / cpu_bandwidth): bandwidth-bound up to
    bytes_per_param · cpu_flops / (2 · cpu_bandwidth) tokens, compute-bound beyond.

    ``crossover_tokens`` (the CPU is cheaper for fewer tokens, the transfer from there on) does not depend on the
    expert's size:

    - cpu_bandwidth > pcie_bandwidth: bytes_per_param · cpu_flops / (2 · pcie_bandwidth), the token count at which
      the CPU's FLOPs take as long as the copy (reading the weights takes the CPU less time than copying them);
    - cpu_bandwidth ≤ pcie_bandwidth: 0, no crossover. Reading the weights from CPU memory alone takes at least as
      long as copying them, so the CPU is never cheaper (at equal bandwidths the two tie up to the CPU's ridge, and
      a tie goes to the transfer).

    So decoding, with a token or a few per expert, runs it on a CPU whose memory outpaces PCIe; a long prefill copies
    it. The GPU's own compute after a transfer is left out (it is small next to the copy).
    """
    check_positive_int("tokens", tokens)
    check_number("pcie_bandwidth", pcie_bandwidth, positive=True)
    check_number("cpu_flops", cpu_flops, positive=True)
    check_number("cpu_bandwidth", cpu_bandwidth, positive=True)
    size = expert_bytes(d_model, d_ff, bytes_per_param, gated)
    flops = 2 * ffn_params(d_model, d_ff, gated) * tokens
    crosses = cpu_bandwidth > pcie_bandwidth
    return MissCost(
        transfer_time=size / pcie_bandwidth,
        cpu_time=max(flops / cpu_flops, size / cpu_bandwidth),
        crossover_tokens=bytes_per_param * cpu_flops / (2 * pcie_bandwidth) if crosses else 0.0,
    )
