import dataclasses
import sys

import pytest
import torch

from moe_course import FFN, MoE, MoEConfig, MoELayer, checks
from moe_course.experts import Experts, ffn


def layer_of(*args, **options) -> MoELayer:
    return MoELayer(MoEConfig(*args, **options))


def test_expert_matches_a_hand_written_swiglu():
    torch.manual_seed(0)
    experts = Experts(2, 8, 16, "swiglu")
    x = torch.randn(5, 8)
    gate, up = x @ experts.w1[1, :, :16], x @ experts.w1[1, :, 16:]
    expected = (torch.nn.functional.silu(gate) * up) @ experts.w2[1]
    torch.testing.assert_close(experts.expert(1, x), expected)


def test_layer_keeps_shape_and_records_routing():
    torch.manual_seed(0)
    layer = layer_of(16, 32, E=4, k=2)
    x = torch.randn(2, 3, 16)
    y = layer(x)
    assert y.shape == x.shape
    assert layer.last_routing.indices.shape == (6, 2)


@pytest.mark.parametrize("backend", ["loop", "vectorized", pytest.param("triton", marks=pytest.mark.triton)])
def test_empty_batch_returns_empty(backend):
    layer = layer_of(16, 32, E=4, k=2, backend=backend)
    assert layer(torch.randn(0, 16)).shape == (0, 16)
    assert layer(torch.randn(2, 0, 16)).shape == (2, 0, 16)


BOTH = ("grouped", "loop")  # the default backend and the reference


def same_layer(backend: str, *args, seed: int = 0, **options) -> MoELayer:
    """The layer of ``args`` and ``options`` with the weights of ``seed``, on ``backend``."""
    torch.manual_seed(seed)
    return layer_of(*args, backend=backend, **options)


def test_backends_agree_through_the_layer_and_train():
    x = torch.randn(40, 16)
    y_loop = same_layer("loop", 16, 32, E=8, k=2)(x)
    layer = same_layer("grouped", 16, 32, E=8, k=2)
    torch.testing.assert_close(layer(x), y_loop, rtol=1e-5, atol=1e-5)
    layer(x).pow(2).mean().backward()
    assert layer.router.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", BOTH)
def test_a_gated_shared_expert_of_its_own_width_is_qwen2_moes(backend):
    """y = Σ_j g_j · expert_j(x) + sigmoid(x · w_gate) · shared(x), the shared FFN 24 wide (routed ones: 8)."""
    layer = same_layer(backend, 16, 8, E=4, k=2, renormalize=False, n_shared=1, shared_d_ff=24, shared_gate=True)
    x = torch.randn(10, 16, dtype=torch.float64)
    layer = layer.double()
    r = layer.router(x)
    routed = torch.stack(
        [
            sum(
                w * layer.experts.expert(int(e), x[t : t + 1])[0]
                for e, w in zip(r.indices[t], r.weights[t], strict=True)
            )
            for t in range(10)
        ]
    )
    shared = ffn(x, layer.shared.w1, layer.shared.w2, "swiglu") * torch.sigmoid(x @ layer.shared.gate.weight.T)
    assert layer.shared.w1.shape == (16, 48) and layer.shared.gate.weight.shape == (1, 16)
    torch.testing.assert_close(layer(x), routed + shared)
    layer(x).sum().backward()
    assert layer.shared.gate.weight.grad.abs().sum() > 0


def test_moe_constructor():
    torch.manual_seed(0)
    moe = MoE(hidden_size=16, num_experts=4, k=2)
    assert (moe.config.E, moe.config.k, moe.experts.d_ff, moe.experts.activation) == (4, 2, 64, "swiglu")
    template = FFN(16, 24, "gelu")
    moe = MoE(16, template, num_experts=8, k=1)
    assert (moe.experts.d_ff, moe.experts.activation) == (24, "gelu")
    x = torch.randn(3, 16)
    torch.testing.assert_close(template(x), ffn(x, template.w1, template.w2, "gelu"))
    switch = MoE(16, num_experts=4, k=1, renormalize=False)
    switch(x).sum().backward()
    assert switch.router.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: layer_of(16, 32, E=4, k=5), "k"),
        (lambda: layer_of(16, 32, E=4, k=0), "k"),
        (lambda: layer_of(16, 32, E=4, k=2, backend="magic"), "backend"),
        (lambda: layer_of(16, 32, E=4, k=2, activation="tanh"), "activation"),
        (lambda: layer_of(16, 32, E=4, k=2)(torch.randn(3, 15)), "x"),
        (lambda: layer_of(16, 32, E=4, k=2)(torch.ones(3, 16, dtype=torch.int64)), "x"),
        (lambda: layer_of(16, 32, E=4, k=2)([1.0] * 16), "x"),
        (lambda: MoE(16, FFN(8, 32), num_experts=4), "expert"),
        (lambda: MoE(16, 3, num_experts=4), "expert"),
        (lambda: MoE(0, num_experts=4), "hidden_size"),
        (lambda: MoE(16, num_experts=4, k=6), "k"),
        (lambda: MoE(16, num_experts=4, order="topk_then_softmax", renormalize=False), "renormalize"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


@pytest.mark.parametrize("policy", ["arrival", "batch_priority"])
def test_capacity_layer_accounts_for_every_pair(policy):
    T, E, k = 64, 4, 2
    layers = [same_layer(backend, 16, 32, E, k, capacity_factor=0.5, drop_policy=policy) for backend in BOTH]
    for layer in layers:
        with torch.no_grad():
            layer.router.gate.weight[0] += 1.0  # a skewed router, so experts overflow
    x = torch.randn(T, 16)
    y = layers[0](x)
    layer = layers[0]
    stats, routing = layer.last_stats, layer.last_routing
    C = 16  # ceil(0.5 · 64 · 2 / 4)
    assert (stats.counts <= C).all()
    assert int(stats.counts.sum()) + stats.dropped_pairs == T * k
    assert stats.dropped_pairs > 0
    # tokens with every pair dropped get exactly 0 from the layer: the residual carries them
    unprocessed = ~routing.keep.any(dim=1)
    assert int(unprocessed.sum()) == stats.unprocessed_tokens
    assert (y[unprocessed] == 0).all()
    torch.testing.assert_close(layers[1](x), y, rtol=1e-5, atol=1e-5)


def test_shared_experts_run_on_every_token():
    torch.manual_seed(0)
    layer = layer_of(16, 32, E=4, k=1, n_shared=2, capacity_factor=0.01)
    x = torch.randn(10, 16)
    y = layer(x)
    unprocessed = ~layer.last_routing.keep.any(dim=1)
    assert unprocessed.any()
    torch.testing.assert_close(y[unprocessed], layer.shared(x[unprocessed]))
    assert layer.shared.d_ff == 64


def test_expert_choice_layer_fills_every_expert():
    torch.manual_seed(0)
    layer = layer_of(16, 32, E=4, k=2, router="expert_choice", capacity_factor=1.0)
    layer(torch.randn(20, 16))
    assert layer.last_stats.counts.tolist() == [10, 10, 10, 10]  # ceil(1.0 · 20 · 2 / 4)
    assert layer.last_stats.dropped_pairs == 0


@pytest.mark.parametrize("router", ["noisy_topk", "switch", "sigmoid", "group_limited", "expert_choice"])
def test_every_router_through_both_backends(router):
    options = {"n_groups": 2, "topk_groups": 1} if router == "group_limited" else {}
    k = 1 if router == "switch" else 2
    x = torch.randn(12, 16)
    y, y_loop = [same_layer(backend, 16, 32, E=4, k=k, router=router, **options).eval()(x) for backend in BOTH]
    torch.testing.assert_close(y, y_loop, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: layer_of(16, 32, 4, 2, capacity_factor=0), "capacity_factor"),
        (lambda: layer_of(16, 32, 4, 2, capacity_factor=1.0, drop_policy="lifo"), "drop_policy"),
        (lambda: layer_of(16, 32, 4, 2, shared_d_ff=64), "shared_d_ff"),  # no shared expert to size
        (lambda: layer_of(16, 32, 4, 2, shared_gate=True), "shared_gate"),
        (lambda: layer_of(16, 32, 4, 2, n_shared=1, shared_d_ff=0), "shared_d_ff"),
        (lambda: layer_of(16, 32, 4, 2, n_shared=1, shared_gate=1), "shared_gate"),
        (lambda: layer_of(16, 32, 4, 2, n_shared=-1), "n_shared"),
        (lambda: layer_of(16, 32, 4, 2, router="group_limited", n_groups=3, topk_groups=1), "n_groups"),
    ],
)
def test_bad_layer_options_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


def calls_into(module_file: str, fn) -> int:
    """How many Python function calls ``fn()`` makes into functions defined in ``module_file``."""
    calls = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == module_file:
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return len(calls)


@pytest.mark.parametrize("router", ["topk", "sigmoid", "expert_choice"])
def test_a_forward_checks_its_input_once(router):
    """Arguments are checked at the public boundary: the layer checks x, its configuration was checked when it was
    built, and everything inside runs unchecked."""
    layer = layer_of(16, 32, E=4, k=2, router=router, capacity_factor=1.0, n_shared=1)
    x = torch.randn(10, 16)
    assert calls_into(checks.__file__, lambda: layer(x)) == 1  # check_hidden("x", ...)
    assert calls_into(checks.__file__, lambda: layer.router(x)) == 1  # the router alone checks its input too


def test_statistics_are_computed_when_read():
    layer = layer_of(16, 32, E=4, k=2, capacity_factor=0.5)
    layer(torch.randn(30, 16))
    stats = layer.last_stats
    assert "dropped_pairs" not in vars(stats)  # not computed by the forward pass (it would synchronize a GPU)
    assert int(stats.counts.sum()) + stats.dropped_pairs == 30 * 2
    assert "dropped_pairs" in vars(stats)
    assert stats.traffic is None  # nothing was exchanged


def test_the_config_is_frozen_and_validated_once():
    config = MoEConfig(16, 32, E=4, k=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.k = 3
    assert MoELayer(config).config is config
    with pytest.raises(ValueError, match="config"):
        MoELayer({"d_model": 16})
    with pytest.raises(ValueError, match="jitter_eps"):
        MoEConfig(16, 32, jitter_eps=-1.0)
    with pytest.raises(ValueError, match="router"):
        MoEConfig(16, 32, router="magic")
