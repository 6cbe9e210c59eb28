import pytest
import torch

from moe_course import FFN, MoE, MoELayer
from moe_course.experts import Experts, ffn
from moe_course.layer import loop_moe, vectorized_moe
from moe_course.routing import Routing, top_k_routing


def grads_of(backend, x, routing, experts):
    """Output and gradients w.r.t. x, both expert weights and the router weights."""
    x = x.clone().requires_grad_()
    weights = routing.weights.detach().clone().requires_grad_()
    r = Routing(routing.indices, weights, routing.probs, routing.logits)
    experts.zero_grad()
    y = backend(x, r, experts)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return [y.detach(), x.grad, experts.w1.grad.clone(), experts.w2.grad.clone(), weights.grad]


def assert_backends_agree(x, routing, experts):
    for ref, got in zip(
        grads_of(loop_moe, x, routing, experts), grads_of(vectorized_moe, x, routing, experts), strict=True
    ):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("T, E, k", [(1, 4, 1), (7, 4, 2), (33, 8, 2), (64, 16, 4), (5, 32, 8), (40, 8, 8)])
def test_vectorized_equals_loop(T, E, k, activation):
    torch.manual_seed(T * 100 + E * 10 + k)
    experts = Experts(E, 12, 20, activation)
    x = torch.randn(T, 12)
    routing = top_k_routing(torch.randn(T, E), k)
    if T * k < E:  # with fewer pairs than experts some expert must be idle: make sure the test has one
        assert int(torch.bincount(routing.indices.flatten(), minlength=E).eq(0).sum()) > 0
    assert_backends_agree(x, routing, experts)


def test_all_tokens_on_one_expert_and_idle_experts():
    torch.manual_seed(0)
    T, E, k = 20, 6, 2
    experts = Experts(E, 8, 16)
    indices = torch.tensor([[3, 5]] * T)
    routing = Routing(indices, torch.rand(T, k), torch.rand(T, E), torch.rand(T, E))
    assert_backends_agree(torch.randn(T, 8), routing, experts)
    assert experts.w1.grad[[0, 1, 2, 4]].abs().sum() == 0  # idle experts get no gradient


def test_expert_matches_a_hand_written_swiglu():
    torch.manual_seed(0)
    experts = Experts(2, 8, 16, "swiglu")
    x = torch.randn(5, 8)
    gate, up = x @ experts.w1[1, :, :16], x @ experts.w1[1, :, 16:]
    expected = (torch.nn.functional.silu(gate) * up) @ experts.w2[1]
    torch.testing.assert_close(experts.expert(1, x), expected)


def test_layer_keeps_shape_and_records_routing():
    torch.manual_seed(0)
    layer = MoELayer(16, 32, E=4, k=2)
    x = torch.randn(2, 3, 16)
    y = layer(x)
    assert y.shape == x.shape
    assert layer.last_routing.indices.shape == (6, 2)


@pytest.mark.parametrize("backend", ["loop", "vectorized", pytest.param("triton", marks=pytest.mark.triton)])
def test_empty_batch_returns_empty(backend):
    layer = MoELayer(16, 32, E=4, k=2, backend=backend)
    assert layer(torch.randn(0, 16)).shape == (0, 16)
    assert layer(torch.randn(2, 0, 16)).shape == (2, 0, 16)


def test_backends_agree_through_the_layer_and_train():
    torch.manual_seed(0)
    layer = MoELayer(16, 32, E=8, k=2, backend="loop")
    x = torch.randn(40, 16)
    y_loop = layer(x)
    layer.backend = "vectorized"
    torch.testing.assert_close(layer(x), y_loop, rtol=1e-5, atol=1e-5)
    layer(x).pow(2).mean().backward()
    assert layer.router.gate.weight.grad.abs().sum() > 0


def test_moe_constructor():
    torch.manual_seed(0)
    moe = MoE(hidden_size=16, num_experts=4, k=2)
    assert (moe.E, moe.k, moe.experts.d_ff, moe.experts.activation) == (4, 2, 64, "swiglu")
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
        (lambda: MoELayer(16, 32, E=4, k=5), "k"),
        (lambda: MoELayer(16, 32, E=4, k=0), "k"),
        (lambda: MoELayer(16, 32, E=4, k=2, backend="magic"), "backend"),
        (lambda: MoELayer(16, 32, E=4, k=2, activation="relu"), "activation"),
        (lambda: MoELayer(16, 32, E=4, k=2)(torch.randn(3, 15)), "x"),
        (lambda: MoELayer(16, 32, E=4, k=2)(torch.ones(3, 16, dtype=torch.int64)), "x"),
        (lambda: MoELayer(16, 32, E=4, k=2)([1.0] * 16), "x"),
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


@pytest.mark.parametrize("policy", ["arrival", "priority"])
def test_capacity_layer_accounts_for_every_pair(policy):
    torch.manual_seed(0)
    T, E, k = 64, 4, 2
    layer = MoELayer(16, 32, E, k, capacity_factor=0.5, drop_policy=policy)
    with torch.no_grad():
        layer.router.gate.weight[0] += 1.0  # a skewed router, so experts overflow
    x = torch.randn(T, 16)
    y = layer(x)
    stats, routing = layer.last_stats, layer.last_routing
    C = 16  # ceil(0.5 · 64 · 2 / 4)
    assert (stats["counts"] <= C).all()
    assert int(stats["counts"].sum()) + stats["dropped_pairs"] == T * k
    assert stats["dropped_pairs"] > 0
    # tokens with every pair dropped get exactly 0 from the layer: the residual carries them
    unprocessed = ~routing.keep.any(dim=1)
    assert int(unprocessed.sum()) == stats["unprocessed_tokens"]
    assert (y[unprocessed] == 0).all()
    layer.backend = "loop"
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)


def test_dropped_pairs_match_between_backends_with_gradients():
    torch.manual_seed(1)
    T, E, k = 30, 4, 2
    experts = Experts(E, 8, 16)
    routing = top_k_routing(torch.randn(T, E), k)
    routing.keep = torch.rand(T, k, generator=torch.Generator().manual_seed(0)) > 0.4
    assert_backends_agree(torch.randn(T, 8), routing, experts)


def test_shared_experts_run_on_every_token():
    torch.manual_seed(0)
    layer = MoELayer(16, 32, E=4, k=1, n_shared=2, capacity_factor=0.01)
    x = torch.randn(10, 16)
    y = layer(x)
    unprocessed = ~layer.last_routing.keep.any(dim=1)
    assert unprocessed.any()
    torch.testing.assert_close(y[unprocessed], layer.shared(x[unprocessed]))
    assert layer.shared.d_ff == 64


def test_expert_choice_layer_fills_every_expert():
    torch.manual_seed(0)
    layer = MoELayer(16, 32, E=4, k=2, router="expert_choice", capacity_factor=1.0)
    layer(torch.randn(20, 16))
    assert layer.last_stats["counts"].tolist() == [10, 10, 10, 10]  # ceil(1.0 · 20 · 2 / 4)
    assert layer.last_stats["dropped_pairs"] == 0


@pytest.mark.parametrize("router", ["noisy_topk", "switch", "sigmoid", "group_limited", "expert_choice"])
def test_every_router_through_both_backends(router):
    torch.manual_seed(0)
    options = {"n_groups": 2, "topk_groups": 1} if router == "group_limited" else {}
    layer = MoELayer(16, 32, E=4, k=1 if router == "switch" else 2, router=router, **options).eval()
    x = torch.randn(12, 16)
    y = layer(x)
    layer.backend = "loop"
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: MoELayer(16, 32, 4, 2, capacity_factor=0), "capacity_factor"),
        (lambda: MoELayer(16, 32, 4, 2, capacity_factor=1.0, drop_policy="lifo"), "drop_policy"),
        (lambda: MoELayer(16, 32, 4, 2, n_shared=-1), "n_shared"),
        (lambda: MoELayer(16, 32, 4, 2, router="group_limited", n_groups=3, topk_groups=1), "n_groups"),
    ],
)
def test_bad_layer_options_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()
