"""An MoE layer whose experts are offloaded: all E live in a slow tier, ``cache_size`` of them in a fast one.

This is how mixtral-offloading (Eliseev & Mazur 2023) fits Mixtral-8x7B on a consumer GPU: the experts stay in CPU
memory (pinned, so the GPU can copy from it directly), and each layer keeps a cache of a few experts on the GPU. At
every call the layer routes its tokens, asks its :class:`~moe_course.serving.cache.ExpertCache` for the distinct
experts they chose (one *step*), copies the missing ones in (evicting by the cache's policy), and runs each expert on
its tokens from the fast tier. Its output is the plain layer's: offloading changes where weights are, not what is
computed.

With ``on_miss="cpu"`` a missing expert is not copied: its tokens go to the slow tier and it runs there, on the CPU
(Fiddler, Kamahori et al. 2024), which beats moving the weights when few tokens need it and the CPU reads its memory
faster than the bus copies (:func:`~moe_course.serving.memory.missing_expert_cost`); only the tokens' activations
cross the bus.

On a GPU the fast tier is the GPU and copy times are measured. On a CPU-only machine the fast tier is a separate
set of tensors in the same memory: the copies really happen, and their time is *modelled* as bytes / bandwidth
(``OffloadStats.modelled_seconds``), the only time this module reports there.
"""

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..checks import check_choice, check_hidden, check_number, check_positive_int
from ..experts import ffn
from ..layer import MoELayer
from .cache import ExpertCache

PCIE4_X16 = 32e9  # bytes/s, the nominal one-way bandwidth of PCIe 4.0 x16 (PCIe 5.0 x16: 64e9)
ON_MISS = ("transfer", "cpu")


@dataclass
class OffloadStats:
    """What the layer's calls moved: expert requests served from the cache (``hits``) or not (``misses``: loaded, or
    run in the slow tier), ``bytes_moved`` (weights loaded, or the activations of the tokens sent to the slow tier),
    their modelled time at the layer's bandwidth, and on a GPU their measured time."""

    hits: int = 0
    misses: int = 0
    computed_where_stored: int = 0  # misses run in the slow tier (on_miss="cpu"), not loaded
    bytes_moved: int = 0
    modelled_seconds: float = 0.0
    measured_seconds: float | None = None
    evicted: list = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.hits + self.misses


class OffloadedMoE(nn.Module):
    """``layer`` (a dropless token-choice :class:`MoELayer` built on the CPU) with its experts offloaded: all in CPU
    memory, ``cache_size`` of them in the fast tier ``device`` (a GPU; by default the CPU itself), evicted under
    ``policy`` (``"lru"``, ``"lfu"``, or ``"belady"`` with ``future``, the steps to come: see
    :class:`~moe_course.serving.cache.ExpertCache`). ``bandwidth``: bytes/s of the slow-to-fast copy, for the
    modelled time. ``on_miss``: ``"transfer"`` copies a missing expert in, ``"cpu"`` runs it in the slow tier. The
    layer's router and shared experts move to ``device`` and run there; its expert weights stay in the slow tier
    (pinned when there is a GPU)."""

    def __init__(
        self,
        layer: MoELayer,
        cache_size: int,
        policy: str = "lru",
        future=None,
        device: torch.device | str | None = None,
        bandwidth: float = PCIE4_X16,
        on_miss: str = "transfer",
    ):
        super().__init__()
        if not isinstance(layer, MoELayer) or not layer.exchange.local:
            raise ValueError("layer must be an MoELayer holding all its experts (not expert-parallel)")
        if layer.config.drops_pairs or layer.config.router == "expert_choice":
            raise ValueError("layer must be dropless and token-choice: a step's experts are its tokens' choices")
        check_number("bandwidth", bandwidth, positive=True)
        self.on_miss = check_choice("on_miss", on_miss, ON_MISS)
        if layer.experts.w1.device.type != "cpu":
            raise ValueError(
                f"layer must hold its experts in CPU memory (the slow tier), got {layer.experts.w1.device}"
            )
        self.layer, self.bandwidth = layer, bandwidth
        self.cache = ExpertCache(layer.config.E, cache_size, policy, future)
        self.device = torch.device("cpu" if device is None else device)
        layer.router.to(self.device)
        if layer.shared is not None:
            layer.shared.to(self.device)
        pin = torch.cuda.is_available()  # pinned host memory: the GPU copies from it directly, asynchronously
        self.slow = [(w1.detach().cpu(), w2.detach().cpu()) for w1, w2 in layer.experts.unbound()]
        if pin:
            self.slow = [(w1.pin_memory(), w2.pin_memory()) for w1, w2 in self.slow]
        self.fast: dict = {}  # expert id -> its (w1, w2) in the fast tier
        self.stats = OffloadStats(measured_seconds=0.0 if self.device.type == "cuda" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d_model] on the fast tier -> [..., d_model], equal to the plain layer's output. The distinct
        experts the tokens chose are one step of the cache; when there are more than ``cache_size`` of them (a long
        prompt's prefill), they are served in rounds of ``cache_size``, each a step (so a ``"belady"`` future must
        list the rounds)."""
        c = self.layer.config
        check_hidden("x", x, c.d_model, like=self.layer.router.gate.weight)
        tokens = x.reshape(-1, c.d_model)
        routing = self.layer.router.route(tokens)
        needed = routing.indices.unique().tolist()  # the distinct experts this call needs
        y = torch.zeros_like(tokens)
        for start in range(0, len(needed), self.cache.cache_size):  # in rounds, when they do not all fit at once
            y = self._round(needed[start : start + self.cache.cache_size], tokens, routing, y)
        if self.layer.shared is not None:
            y = y + self.layer.shared(tokens)
        self.layer.last_routing = routing
        return y.reshape(x.shape)

    def _round(self, step: list, tokens, routing, y) -> torch.Tensor:
        """Serve ``step``, experts that fit in the cache together: one request of the cache, then each expert on
        its tokens, added into y."""
        c = self.layer.config
        access = self.cache.request(step, load=self.on_miss == "transfer")
        self.stats.hits += len(access.hits)
        for e in access.evicted:
            del self.fast[e]
            self.stats.evicted.append(e)
        if self.on_miss == "transfer":
            for e in access.misses:
                self.fast[e] = self._load(e)
        for e in step:
            token, slot = torch.where(routing.indices == e)
            rows = tokens[token]
            if e in self.fast:
                out = ffn(rows, *self.fast[e], c.activation)
            else:  # computed where the weights are: the rows go to the slow tier and back
                out = ffn(rows.cpu(), *self.slow[e], c.activation).to(y.device)
                self._count(2 * rows.numel() * rows.element_size())
                self.stats.misses += 1
                self.stats.computed_where_stored += 1
            y = y.index_add(0, token, (out * routing.weights[token, slot].unsqueeze(-1)).to(y.dtype))
        return y

    def preload(self, experts) -> None:
        """Load ``experts`` (distinct ids, at most ``cache_size``) into the fast tier now, as one step of the cache:
        with ``on_miss="cpu"`` the fast tier holds only what was preloaded (Fiddler keeps the experts that fit on the
        GPU there and runs the others on the CPU). Counted in the stats like any load."""
        access = self.cache.request(experts)
        for e in access.evicted:
            del self.fast[e]
        for e in access.misses:
            self.fast[e] = self._load(e)

    def _load(self, e: int) -> tuple:
        """Copy expert e's weights from the slow tier into the fast one, counting bytes and time."""
        w1, w2 = self.slow[e]
        size = w1.numel() * w1.element_size() + w2.numel() * w2.element_size()
        start = time.perf_counter()
        weights = (w1.to(self.device, non_blocking=True, copy=True), w2.to(self.device, non_blocking=True, copy=True))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.stats.measured_seconds += time.perf_counter() - start
        self.stats.misses += 1
        self._count(size)
        return weights

    def _count(self, size: int) -> None:
        """``size`` bytes crossed between the tiers."""
        self.stats.bytes_moved += size
        self.stats.modelled_seconds += size / self.bandwidth


def measure_copy(nbytes: int, device: torch.device | str = "cuda", repeats: int = 5) -> float:
    """The median time in seconds, over ``repeats`` copies, to copy ``nbytes`` bytes from pinned host memory to the
    CUDA ``device``, as :class:`OffloadedMoE` loads an expert (a Mixtral expert: ``expert_bytes(4096, 14336)``). Needs
    a GPU: on a CPU-only machine copy times can only be modelled."""
    check_positive_int("nbytes", nbytes)
    check_positive_int("repeats", repeats)
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"device must be an available CUDA device to measure a copy, got {device}")
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target.copy_(host)  # once untimed: the first copy pays for setting up the transfer
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        target.copy_(host, non_blocking=True)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
