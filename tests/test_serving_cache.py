import itertools
from functools import cache

import pytest
import torch

from moe_course.serving.cache import POLICIES, ExpertCache, simulate


def random_trace(steps, E, k, seed, skew=0.0):
    """[steps, k] distinct experts per step, sampled from softmax(skew · linspace(1, 0, E)): uniform at skew 0,
    a few favourite experts (as a trained router has) at skew 3."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(skew * torch.linspace(1, 0, E), -1).expand(steps, E)
    return torch.multinomial(probs, k, generator=g)


TRACES = [  # (E, k, steps, skew)
    (8, 2, 200, 0.0),
    (8, 2, 200, 3.0),
    (8, 1, 150, 0.0),
    (16, 4, 150, 4.0),
    (6, 3, 100, 1.0),
]


def sizes(E, k):
    return sorted({1, k, E - 1, E, 2 * E} - set(range(1, k)))  # a cache below k cannot hold one step: refused


def optimum(steps, cache_size):
    """The most hits any demand-loading policy gets: try every choice of victims at every miss. At a step, the
    misses must all come in, each one evicting (once the cache is full) any cached expert the step does not use."""

    @cache
    def best(t, cached):
        if t == len(steps):
            return 0
        step = set(steps[t])
        hits = len(step & cached)
        must_evict = max(0, len(cached | step) - cache_size)
        choices = itertools.combinations(sorted(cached - step), must_evict)
        return hits + max(best(t + 1, (cached - set(victims)) | step) for victims in choices)

    return best(0, frozenset())


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("E, k, steps, skew", TRACES)
def test_every_request_is_a_hit_or_a_miss_and_the_cache_never_overflows(E, k, steps, skew, policy):
    trace = random_trace(steps, E, k, seed=E + k, skew=skew)
    for cache_size in sizes(E, k):
        stats = simulate(trace, E, cache_size, policy)
        assert stats.requests == steps * k
        assert stats.hits + stats.misses == stats.requests
        assert stats.misses == sum(stats.misses_per_step) == len(stats.loads)
        assert stats.compulsory_misses == trace.unique().numel()
        # each eviction made room for a load into a full cache: the cache ends holding min(C, distinct) experts
        assert len(stats.loads) - len(stats.evictions) == min(cache_size, stats.compulsory_misses)
        assert stats.hit_rate == pytest.approx(stats.hits / stats.requests)


@pytest.mark.parametrize("policy", POLICIES)
def test_the_simulator_is_the_cache_step_by_step(policy):
    E, C = 8, 3
    trace = random_trace(60, E, 2, seed=5, skew=2.0)
    cache = ExpertCache(E, C, policy, future=trace if policy == "belady" else None)
    hits, loads, evictions = 0, [], []
    for step in trace:
        access = cache.request(step)
        assert set(access.hits) | set(access.misses) == set(step.tolist())
        assert set(step.tolist()) <= cache.cached and len(cache.cached) <= C
        assert not set(access.evicted) & set(step.tolist())  # no expert of the step is evicted for another
        hits, loads, evictions = hits + len(access.hits), loads + list(access.misses), evictions + list(access.evicted)
    stats = simulate(trace, E, C, policy)
    assert (stats.hits, stats.loads, stats.evictions) == (hits, tuple(loads), tuple(evictions))


@pytest.mark.parametrize("E, k, steps, skew", TRACES)
@pytest.mark.parametrize("seed", range(3))
def test_belady_hits_at_least_as_often_as_lru_and_lfu(E, k, steps, skew, seed):
    trace = random_trace(steps, E, k, seed, skew)
    for cache_size in sizes(E, k):
        hits = {policy: simulate(trace, E, cache_size, policy).hits for policy in POLICIES}
        assert hits["belady"] >= max(hits["lru"], hits["lfu"]), (cache_size, hits)


@pytest.mark.parametrize("E, k", [(3, 1), (4, 1), (4, 2), (3, 2)])
@pytest.mark.parametrize("seed", range(6))
def test_belady_is_the_optimum_on_tiny_traces(E, k, seed):
    g = torch.Generator().manual_seed(seed)
    steps = int(torch.randint(4, 9, (), generator=g))
    trace = random_trace(steps, E, k, seed, skew=float(seed % 3))
    for cache_size in range(k, E):
        steps_ = [tuple(step) for step in trace.tolist()]
        assert simulate(trace, E, cache_size, "belady").hits == optimum(steps_, cache_size), (trace, cache_size)


def test_the_brute_force_beats_lru_where_lru_is_worst():
    # 0 1 2 0 1 2 with room for 2: LRU always evicts the expert requested next; keeping the right one hits twice
    loop = [(0,), (1,), (2,)] * 2
    assert simulate(loop, 3, 2, "lru").hits == 0 and optimum(loop, 2) == 2


# The hand-worked trace, k = 1, E = 3, cache of 2 (cache contents after each step, * = hit):
#   step      0    1     2     3      4      5       6      7
#   expert    0    0     0     1      2      0       1      2
#   LRU      {0}  {0}*  {0}*  {0,1}  {1,2}  {2,0}   {0,1}  {1,2}     2 hits (evicts 0, 1, 2, 0: each the oldest)
#   LFU      {0}  {0}*  {0}*  {0,1}  {0,2}  {0,2}*  {0,1}  {0,2}     3 hits (0 has 3 uses: it stays)
#   Belady   {0}  {0}*  {0}*  {0,1}  {0,2}  {0,2}*  {2,1}  {2,1}*   4 hits (step 4: 1 is next used later than 0;
#                                                                     step 6: 0 is never used again)
# Evicting the most recently used instead of the least would give LRU 4 hits (it keeps 0 at step 4, ...).
HAND_TRACE = [[0], [0], [0], [1], [2], [0], [1], [2]]
HAND = {"lru": (2, (0, 1, 2, 0)), "lfu": (3, (1, 2, 1)), "belady": (4, (1, 0))}


@pytest.mark.parametrize("policy", POLICIES)
def test_a_hand_worked_trace_where_the_three_policies_differ(policy):
    stats = simulate(HAND_TRACE, E=3, cache_size=2, policy=policy)
    assert (stats.hits, stats.evictions) == HAND[policy]
    assert stats.misses == 8 - HAND[policy][0]


def test_lru_evicts_the_least_recently_used_not_the_most():
    # 0 1 0 2 1, cache of 2: when 2 comes in, expert 1 (last used at step 1) is older than 0 (step 2) and goes, so
    # step 4 misses; evicting the most recent (0) would make step 4 a hit
    stats = simulate([[0], [1], [0], [2], [1]], E=3, cache_size=2, policy="lru")
    assert (stats.hits, stats.evictions) == (1, (1, 0))


def test_lfu_ties_go_to_the_least_recently_used():
    # 0 1 1 0 2: 0 and 1 are both used twice, 1 last at step 2 and 0 at step 3: 1 goes
    stats = simulate([[0], [1], [1], [0], [2]], E=3, cache_size=2, policy="lfu")
    assert stats.evictions == (1,)
    stats = simulate([[0], [1], [0], [1], [2]], E=3, cache_size=2, policy="lfu")
    assert stats.evictions == (0,)


def test_lfu_counts_requests_across_evictions():
    # Expert 0 is used 3 times, then evicted by the step [1, 2] (cache of 2) and loaded again (evicting 1). At step
    # 6, 3 evicts 2 (2 uses), not 0 (4 uses); counts reset on eviction would give 0 one use and evict it instead.
    trace = [[0], [0], [0], [1, 2], [0], [2], [3], [0]]
    stats = simulate(trace, E=4, cache_size=2, policy="lfu")
    assert stats.evictions == (0, 1, 2) and stats.hits == 4


@pytest.mark.parametrize("C", [1, 2, 3, 5])
def test_a_cache_of_size_c_holds_exactly_c_experts(C):
    E = C + 1
    looping = [[e] for e in range(C)] * 4  # C experts in a loop: they all fit, only the first pass misses
    assert simulate(looping, E, C, "lru").misses == C
    # C + 1 experts in a loop: the LRU victim is always the next one requested, so every request misses
    assert simulate([[e] for e in range(C + 1)] * 4, E, C, "lru").hits == 0
    cache = ExpertCache(E, C)
    for e in range(C + 1):
        cache.request([e])
        assert len(cache.cached) == min(e + 1, C)


def test_a_cached_expert_is_a_hit():
    for policy in POLICIES:
        stats = simulate([[0, 1], [1, 0], [1, 2], [2, 1]], E=3, cache_size=3, policy=policy)
        assert stats.hits == 5 and stats.misses_per_step == (2, 0, 1, 0)
    access = ExpertCache(4, 2).request([3])
    assert access == ((), (3,), ())


def test_a_step_never_evicts_its_own_experts():
    # Belady at step 1 would evict 0 (never requested again) if it ignored that step 1 needs 0 now
    stats = simulate([[0, 1], [0, 2], [1, 2]], E=3, cache_size=2, policy="belady")
    assert stats.evictions == (1, 0) and stats.hits == 2
    # LFU at step 2 would evict 2 (1 use) as soon as it came in, to make room for 3
    cache = ExpertCache(4, 2, "lfu")
    for step in [[0, 1], [0, 1]]:
        cache.request(step)
    assert cache.request([2, 3]) == ((), (2, 3), (0, 1)) and cache.cached == {2, 3}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("skew", [0.0, 3.0])
def test_a_cache_of_e_or_more_experts_has_only_the_compulsory_misses(policy, skew):
    E, k = 8, 2
    trace = random_trace(100, E, k, seed=1, skew=skew)
    for cache_size in (E, E + 1, 2 * E):
        stats = simulate(trace, E, cache_size, policy)
        assert stats.misses == stats.compulsory_misses == trace.unique().numel() and stats.evictions == ()
        assert stats.holds_all
    assert not simulate(trace, E, E - 1, policy).holds_all


def test_a_trace_may_be_a_list_of_steps_of_any_size():
    trace = [[0, 1, 2], (3,), torch.tensor([1, 3]), []]  # e.g. the distinct experts of a batch per step
    stats = simulate(trace, E=4, cache_size=3)
    assert stats.requests == 6 and stats.hits == 2 and stats.misses_per_step == (3, 1, 0, 0)
    assert simulate([], E=4, cache_size=1).hit_rate == 0.0


def test_belady_reads_the_future_it_was_given():
    cache = ExpertCache(3, 1, "belady", future=[[0], [1]])
    cache.request([0])
    with pytest.raises(ValueError, match=r"^experts must be step 1"):
        cache.request([2])
    cache.request([1])
    with pytest.raises(ValueError, match=r"^experts must be step 2"):
        cache.request([0])  # past the end of the future


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: simulate([[0]], 2, 0), "cache_size"),
        (lambda: simulate([[0]], 2, 1.5), "cache_size"),
        (lambda: simulate([[0]], 0, 1), "E"),
        (lambda: simulate([[0]], 2, 1, "fifo"), "policy"),
        (lambda: simulate([[0], [2]], 2, 1), r"trace\[1\]\[0\]"),
        (lambda: simulate([[0], [-1]], 2, 1), r"trace\[1\]\[0\]"),
        (lambda: simulate(torch.tensor([[0, 2]]), 2, 2), r"trace\[0\]\[1\]"),
        (lambda: simulate([[1, 1]], 2, 2), r"trace\[0\]"),  # a step repeats an expert
        (lambda: simulate(torch.tensor([0, 1]), 2, 1), "trace"),  # 1-D: not [steps, k]
        (lambda: simulate(torch.tensor([[0.0]]), 2, 1), "trace"),
        (lambda: simulate([0, 1], 2, 1), r"trace\[0\]"),  # a step must be a sequence
        (lambda: simulate("01", 2, 1), "trace"),
        (lambda: simulate([[0, 1]], 2, 1), "cache_size"),  # the cache cannot hold the step's k = 2 experts
        (lambda: simulate([[True]], 2, 1), r"trace\[0\]\[0\]"),
        (lambda: ExpertCache(4, 2, "belady"), "future"),
        (lambda: ExpertCache(4, 2, "lru", future=[[0]]), "future"),
        (lambda: ExpertCache(4, 2, "belady", future=[[5]]), r"future\[0\]\[0\]"),
        (lambda: ExpertCache(4, 2).request([0, 4]), r"experts\[1\]"),
        (lambda: ExpertCache(4, 2).request([0, 1, 2]), "cache_size"),
        (lambda: ExpertCache(4, 2).request(3), "experts"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"^{name}(?![\w\[])"):
        call()
