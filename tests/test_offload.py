"""The offloaded MoE layer: the plain layer's outputs whatever its cache, and every expert request accounted for."""

import pytest
import torch

from moe_course.config import MoEConfig
from moe_course.layer import MoELayer
from moe_course.model import TinyLM, TinyLMConfig
from moe_course.serving.cache import POLICIES
from moe_course.serving.generate import generate
from moe_course.serving.offload import OffloadedMoE, measure_copy

E, D = 8, 16


def layer_of(k=2, seed=0, **options) -> MoELayer:
    torch.manual_seed(seed)
    return MoELayer(MoEConfig(D, 24, E=E, k=k, **options)).eval()


def calls(n=30, tokens=1, seed=1):
    """n inputs of ``tokens`` tokens each: decode steps (1 token) or small batches."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(tokens, D, generator=g) for _ in range(n)]


def steps_of(layer, xs):
    """The distinct experts each call needs: the future a Belady cache reads."""
    return [layer.router.route(x).indices.unique().tolist() for x in xs]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cache_size", [2, 3, E - 1, E, 2 * E])
def test_outputs_equal_the_plain_layers_and_requests_add_up(policy, cache_size):
    layer, xs = layer_of(), calls()
    steps = steps_of(layer, xs)
    offloaded = OffloadedMoE(layer_of(), cache_size, policy, future=steps if policy == "belady" else None)
    with torch.no_grad():
        for x in xs:
            torch.testing.assert_close(offloaded(x), layer(x), rtol=0, atol=1e-6)
    s = offloaded.stats
    assert s.hits + s.misses == s.requests == sum(map(len, steps))
    assert len(offloaded.fast) == min(cache_size, len({e for step in steps for e in step}))
    one_expert = sum(w.numel() * w.element_size() for w in offloaded.slow[0])
    assert s.bytes_moved == s.misses * one_expert and s.modelled_seconds == pytest.approx(s.bytes_moved / 32e9)
    assert s.measured_seconds is None  # no GPU: only the modelled time is reported
    if cache_size >= E:  # after warm-up nothing is loaded again: one miss per distinct expert
        assert s.misses == len({e for step in steps for e in step})


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_missing_experts_can_run_where_they_are_stored(policy):
    """on_miss="cpu": the fast tier holds the preloaded experts only; the others run in the slow tier, and only
    their tokens' activations cross (2 · rows · d_model · 4 bytes per call and expert)."""
    layer, xs = layer_of(), calls(tokens=2)
    offloaded = OffloadedMoE(layer_of(), 4, policy, on_miss="cpu")
    offloaded.preload([0, 1, 2, 3])
    preloaded_bytes = offloaded.stats.bytes_moved
    with torch.no_grad():
        for x in xs:
            torch.testing.assert_close(offloaded(x), layer(x), rtol=0, atol=1e-6)
    s = offloaded.stats
    assert sorted(offloaded.fast) == [0, 1, 2, 3] and s.misses == 4 + s.computed_where_stored
    assert s.hits + s.misses == 4 + sum(map(len, steps_of(layer, xs)))
    rows = sum(int((layer.router.route(x).indices >= 4).sum()) for x in xs)  # pairs on the experts left out
    assert s.bytes_moved - preloaded_bytes == 2 * rows * D * 4


def test_a_cache_of_one_expert_serves_a_top1_layer():
    layer, xs = layer_of(k=1, router="switch"), calls()
    offloaded = OffloadedMoE(layer_of(k=1, router="switch"), 1)
    with torch.no_grad():
        for x in xs:
            torch.testing.assert_close(offloaded(x), layer(x), rtol=0, atol=1e-6)
    assert offloaded.stats.requests == len(xs) and len(offloaded.fast) == 1


def test_batches_and_shared_experts():
    layer, xs = layer_of(n_shared=1), calls(10, tokens=3)
    offloaded = OffloadedMoE(layer_of(n_shared=1), E)
    with torch.no_grad():
        for x in xs:
            torch.testing.assert_close(offloaded(x), layer(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("cache_size", [1, 3])
def test_experts_that_do_not_fit_together_are_served_in_rounds(cache_size):
    """A batch of 6 tokens chooses more distinct experts than the cache holds: they go through it in rounds."""
    layer, xs = layer_of(), calls(8, tokens=6)
    offloaded = OffloadedMoE(layer_of(), cache_size)
    with torch.no_grad():
        for x in xs:
            torch.testing.assert_close(offloaded(x), layer(x), rtol=0, atol=1e-6)
    assert offloaded.stats.requests == sum(map(len, steps_of(layer, xs))) and len(offloaded.fast) == cache_size


def test_belady_loads_least():
    xs = calls(60)
    steps = steps_of(layer_of(), xs)
    misses = {}
    for policy in POLICIES:
        offloaded = OffloadedMoE(layer_of(), 3, policy, future=steps if policy == "belady" else None)
        with torch.no_grad():
            for x in xs:
                offloaded(x)
        misses[policy] = offloaded.stats.misses
    assert misses["belady"] <= min(misses["lru"], misses["lfu"])


def test_an_offloaded_model_generates_the_same_text():
    torch.manual_seed(0)
    model = TinyLM(TinyLMConfig(vocab_size=30, seq_len=40, moe=MoEConfig(32, 32, E=8, k=2))).eval()
    prompt = torch.tensor([1, 2, 3])
    resident, _ = generate(model, prompt, 30)
    for block in model.blocks:  # the prefill's experts go through the cache in rounds of 3
        block.ffn = OffloadedMoE(block.ffn, 3)
    offloaded, _ = generate(model, prompt, 30)
    assert torch.equal(offloaded, resident)
    assert all(block.ffn.stats.misses > 0 for block in model.blocks)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: OffloadedMoE(layer_of(), 0), "cache_size"),
        (lambda: OffloadedMoE(layer_of(), 4, "fifo"), "policy"),
        (lambda: OffloadedMoE(layer_of(), 4, "belady"), "future"),
        (lambda: OffloadedMoE(layer_of(capacity_factor=1.0), 4), "layer"),
        (lambda: OffloadedMoE(torch.nn.Linear(2, 2), 4), "layer"),
        (lambda: OffloadedMoE(layer_of(), 4, bandwidth=0), "bandwidth"),
        (lambda: OffloadedMoE(layer_of(), 4, on_miss="gpu"), "on_miss"),
        (lambda: measure_copy(0), "nbytes"),
        (lambda: measure_copy(1024, repeats=0), "repeats"),
        (lambda: measure_copy(1024, "cpu"), "device"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_gpu
def test_on_a_gpu_the_copies_are_measured_and_the_outputs_unchanged():
    layer, xs = layer_of(), calls()
    offloaded = OffloadedMoE(layer_of(), 3, device="cuda")
    with torch.no_grad():
        for x in xs:
            torch.testing.assert_close(offloaded(x.cuda()).cpu(), layer(x), rtol=1e-5, atol=1e-5)
    assert offloaded.stats.misses > 0 and offloaded.stats.measured_seconds > 0


@needs_gpu
def test_a_pinned_copy_is_timed_at_a_plausible_bandwidth():
    nbytes = 64 * 2**20
    seconds = measure_copy(nbytes)
    assert 1e9 < nbytes / seconds < 1e12  # bytes/s: between a slow link and far above any PCIe or NVLink-C2C
