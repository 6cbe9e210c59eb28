"""Expert caches on routing traces: which of a layer's experts an offloaded MoE keeps in fast memory, and how many
loads each eviction policy costs.

An MoE served with offloading keeps ``cache_size`` of a layer's E experts in GPU memory and the rest in CPU memory.
Decoding, each token requests its k experts; a requested expert that is not cached is a **miss** and is loaded,
evicting one expert chosen by the policy when the cache is full. A **trace** is one layer's requests, step by step:
a ``[steps, k]`` integer tensor (``RoutingTrace.requests(layer)``), or a sequence of steps, each a sequence of
distinct expert ids (a step may then hold the distinct experts of a whole batch).

Every policy follows the same rules:
- cold start: the cache starts empty, so each expert's first request misses (a *compulsory* miss);
- demand loading: an expert is loaded only when it is requested and missing, and evicts one only when the cache is
  full, so a cache of size C holds min(C, experts seen so far);
- a step's experts run together: none of them is evicted to make room for another of the same step. A cache must
  hold one whole step, so a ``cache_size`` below a step's size is refused (``ValueError``); a ``cache_size`` of E
  or more is allowed: everything fits, and only the compulsory misses remain.

Policies (the victim is always a cached expert the current step does not request):
- ``"lru"``: the least recently used, as mixtral-offloading (Eliseev & Mazur 2023) does;
- ``"lfu"``: the least frequently used: the fewest requests since the trace began, counted across evictions (an
  expert the router favours stays favoured after it was evicted); ties go to the least recently used;
- ``"belady"``: MIN (Belady 1966): the expert whose next request lies furthest ahead, one never requested again
  being infinitely far. It is offline (it reads the future of the trace) and optimal: no demand-loading policy
  hits more often on the same trace. It bounds what any online policy can gain.
Ties that remain (experts last used in the same step, or next used in the same step, or never again) evict the
lowest expert id.
"""

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..checks import check_choice, check_index, check_positive_int, check_tensor

POLICIES = ("lru", "lfu", "belady")


class Access(NamedTuple):
    """What one step's request did, as expert ids in the order they were handled."""

    hits: tuple  # requested and cached
    misses: tuple  # requested and loaded
    evicted: tuple  # removed to make room: one per miss that found the cache full


class ExpertCache:
    """The ``cache_size`` experts of one layer held in fast memory, served step by step by ``request``.

    The simulator and an offloaded layer share it: each step, ``request(experts)`` says which experts were hits,
    which must be loaded, and which were evicted for them. ``policy="belady"`` needs the whole trace up front as
    ``future`` and then exactly its steps, in order.
    """

    def __init__(self, E: int, cache_size: int, policy: str = "lru", future=None):
        check_positive_int("E", E)
        check_positive_int("cache_size", cache_size)
        check_choice("policy", policy, POLICIES)
        if policy == "belady":
            if future is None:
                raise ValueError("future must be the whole trace for policy='belady', which reads it ahead")
            future = as_steps("future", future, E, cache_size)
        elif future is not None:
            raise ValueError(f"future is read by policy='belady' only, got policy={policy!r}")
        self.E, self.cache_size, self.policy, self.future = E, cache_size, policy, future
        self.served = 0  # steps served so far
        self._cached: set[int] = set()
        self._last_use = [-1] * E  # the step of each expert's latest request
        self._uses = [0] * E  # requests of each expert so far
        self._requested_at = None  # belady: the steps that request each expert, in order
        if future is not None:
            self._requested_at = [[] for _ in range(E)]
            for t, step in enumerate(future):
                for e in step:
                    self._requested_at[e].append(t)

    @property
    def cached(self) -> frozenset:
        """The experts in fast memory now."""
        return frozenset(self._cached)

    def request(self, experts, load: bool = True) -> Access:
        """Serve one step: ``experts`` (a sequence or 1-D integer tensor of distinct expert ids) are all needed now;
        ``load=False`` leaves the misses out of the cache (see :meth:`serve`)."""
        step = as_step("experts", experts, self.E, self.cache_size)
        if self.future is not None and (self.served >= len(self.future) or set(step) != set(self.future[self.served])):
            raise ValueError(
                f"experts must be step {self.served} of the future given to policy='belady' "
                f"({len(self.future)} steps), got {list(step)}"
            )
        return self.serve(step, load)

    def serve(self, step: tuple, load: bool = True) -> Access:
        """:meth:`request` without the checks, for a caller that checked its trace once (:func:`simulate`).
        ``load=False``: the misses are served elsewhere (computed where their weights are) and not cached."""
        t = self.served
        hits = tuple(e for e in step if e in self._cached)
        misses = tuple(e for e in step if e not in self._cached)
        for e in step:
            self._last_use[e], self._uses[e] = t, self._uses[e] + 1
        evicted = []
        for e in misses if load else ():
            if len(self._cached) == self.cache_size:
                victim = min(self._cached.difference(step), key=self._eviction_order)
                self._cached.remove(victim)
                evicted.append(victim)
            self._cached.add(e)
        self.served += 1
        return Access(hits, misses, tuple(evicted))

    def _eviction_order(self, e: int) -> tuple:
        """The policy's ranking of a cached expert: the smallest key is evicted first."""
        if self.policy == "lru":
            return self._last_use[e], e
        if self.policy == "lfu":
            return self._uses[e], self._last_use[e], e
        return -self._next_use(e), e

    def _next_use(self, e: int) -> float:
        """The step of expert e's next request after the current step (inf: never)."""
        requested_at = self._requested_at[e]
        i = bisect_right(requested_at, self.served)
        return requested_at[i] if i < len(requested_at) else math.inf


@dataclass(frozen=True)
class CacheStats:
    """One policy's outcome on one trace."""

    policy: str
    cache_size: int
    E: int
    requests: int  # expert requests in the trace (the sum of the steps' sizes)
    hits: int
    loads: tuple  # the experts loaded, in order: one per miss
    evictions: tuple  # the experts evicted, in order
    misses_per_step: tuple  # misses of each step, to plot the loads over time

    @property
    def misses(self) -> int:
        return len(self.loads)

    @property
    def hit_rate(self) -> float:
        """hits / requests (0.0 for a trace without requests)."""
        return self.hits / self.requests if self.requests else 0.0

    @property
    def holds_all(self) -> bool:
        """Whether the cache has room for all E experts (cache_size >= E): allowed, and then nothing is ever
        evicted, so it only measures the compulsory misses, not a policy."""
        return self.cache_size >= self.E

    @property
    def compulsory_misses(self) -> int:
        """The distinct experts requested: each one's first request misses whatever the policy and size (cold
        start). With cache_size >= E they are the only misses."""
        return len(set(self.loads))


def simulate(trace, E: int, cache_size: int, policy: str = "lru") -> CacheStats:
    """Replay ``trace`` (``[steps, k]`` integer tensor, or a sequence of steps of distinct expert ids in [0, E))
    on an empty :class:`ExpertCache` of ``cache_size`` experts under ``policy``."""
    check_positive_int("E", E)
    check_positive_int("cache_size", cache_size)
    check_choice("policy", policy, POLICIES)
    steps = as_steps("trace", trace, E, cache_size)
    cache = ExpertCache(E, cache_size, policy, future=steps if policy == "belady" else None)
    hits, loads, evictions, misses_per_step = 0, [], [], []
    for step in steps:
        access = cache.serve(step)
        hits += len(access.hits)
        loads += access.misses
        evictions += access.evicted
        misses_per_step.append(len(access.misses))
    requests = sum(map(len, steps))
    return CacheStats(policy, cache_size, E, requests, hits, tuple(loads), tuple(evictions), tuple(misses_per_step))


def as_steps(name: str, trace, E: int, cache_size: int) -> tuple:
    """Check a trace and return it as a tuple of steps, each a tuple of int expert ids."""
    if isinstance(trace, torch.Tensor):
        check_tensor(name, trace, ("steps", "k"), "integer")
        trace = trace.tolist()
    elif not isinstance(trace, (list, tuple)):
        raise ValueError(f"{name} must be a [steps, k] integer tensor or a list of steps, got {type(trace).__name__}")
    return tuple(as_step(f"{name}[{t}]", step, E, cache_size) for t, step in enumerate(trace))


def as_step(name: str, experts, E: int, cache_size: int) -> tuple:
    """Check one step, distinct expert ids in [0, E) that fit in the cache, and return them as a tuple of ints."""
    if isinstance(experts, torch.Tensor):
        check_tensor(name, experts, ("k",), "integer")
        experts = experts.tolist()
    elif not isinstance(experts, (list, tuple, range)):
        raise ValueError(f"{name} must be a sequence or 1-D integer tensor of expert ids, got {type(experts).__name__}")
    step = tuple(check_index(f"{name}[{j}]", e, E, "E") for j, e in enumerate(experts))
    if len(set(step)) != len(step):
        raise ValueError(f"{name} must hold distinct experts (a token picks k distinct ones), got {list(step)}")
    if len(step) > cache_size:
        raise ValueError(
            f"cache_size must hold a whole step (its experts run together), got cache_size={cache_size} for "
            f"{name} of {len(step)} experts"
        )
    return step
