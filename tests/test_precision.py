"""Router precision: the inputs the routers received, routing in another dtype, and the tokens that flip."""

import math

import pytest
import torch

from moe_course.config import MoEConfig
from moe_course.experiments.precision import PrecisionStats, route_in, router_inputs, routing_flips
from moe_course.model import TinyLM, TinyLMConfig
from moe_course.routing import Router, top_k_routing


def tiny_model(ffn="moe") -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(TinyLMConfig(vocab_size=20, seq_len=8, ffn=ffn, moe=MoEConfig(16, 16, E=4, k=2)))


def router_with_gate(weight, **options) -> Router:
    """A router whose gate is ``weight: [E, d_model]``: with the identity, the logits are the input itself."""
    E, d_model = len(weight), len(weight[0])
    router = Router(d_model, E, options.pop("k", 1), **options)
    with torch.no_grad():
        router.gate.weight.copy_(torch.tensor(weight))
    return router


def random_router(order="softmax_then_topk", seed=0) -> tuple:
    """A router of 8 experts, k = 2, and 4000 inputs for it."""
    torch.manual_seed(seed)
    return Router(32, 8, 2, order=order), torch.randn(4000, 32)


def test_router_inputs_are_what_each_router_received():
    model = tiny_model()
    idx = torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(1))
    inputs = router_inputs(model, idx)
    expected = []
    with torch.no_grad():  # the blocks by hand: the MoE layer's input is norm2 of the residual stream
        x = model.tok_emb(idx) + model.pos_emb(torch.arange(8))
        for block in model.blocks:
            x = x + block.attn(block.norm1(x))
            expected.append(block.norm2(x).reshape(24, 16))
            x = x + block.ffn(block.norm2(x))
    assert len(inputs) == 2
    for got, want in zip(inputs, expected, strict=True):
        assert got.dtype == torch.float32 and not got.requires_grad
        assert torch.equal(got, want)
    assert model.training


def test_router_inputs_clean_up_after_an_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="^idx"):
        router_inputs(model, torch.tensor([[25]]))  # out of the vocabulary: the model's forward refuses it
    assert model.training
    assert all(not layer._forward_pre_hooks for layer in model.moe_layers())


def test_route_in_float32_is_eval_time_top_k_of_the_gate():
    """Jitter is on in training: the routing must not use it, nor leave the router in evaluation mode."""
    torch.manual_seed(0)
    router, x = Router(32, 8, 2, jitter_eps=0.5), torch.randn(50, 32)
    expected = top_k_routing(x @ router.gate.weight.detach().T, 2)
    got = route_in(router, x, torch.float32)
    assert torch.equal(got.indices, expected.indices)
    torch.testing.assert_close(got.weights, expected.weights)
    assert router.training
    low = route_in(router, x, torch.bfloat16)
    assert {t.dtype for t in (low.logits, low.probs, low.weights)} == {torch.bfloat16}


def test_the_same_dtype_changes_nothing_and_float64_next_to_nothing():
    router, x = random_router()
    logit_scale = (x @ router.gate.weight.detach().T).std(dim=1, correction=0).mean().item()
    same = routing_flips(router, x, torch.float32)
    assert same == PrecisionStats(4000, 0, 0.0, 0.0, pytest.approx(logit_scale, rel=1e-5))
    finer = routing_flips(router, x, torch.float64)
    assert finer.flipped <= 1 and finer.weight_error < 1e-6
    assert routing_flips(router, x[:0]) == PrecisionStats(0, 0, 0.0, 0.0, 0.0)


def test_bfloat16_rounding_reverses_two_logits_near_100():
    """Logits 100.3 and 100.4 = 100.2 + 0.2: bfloat16 (steps of 0.5 between 64 and 128) rounds the input to
    100.5, 100.0 and 0.2002, so the logits become 100.5 and 100.0 and the other expert wins. Near 1 (steps of
    1/128) the same difference of 0.1 survives."""
    gate = [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    router, x = router_with_gate(gate), torch.tensor([[100.3, 100.2, 0.2]])
    assert route_in(router, x, torch.float32).indices.tolist() == [[1]]
    low = route_in(router, x, torch.bfloat16)
    assert low.logits.tolist() == [[100.5, 100.0, 0.0]] and low.indices.tolist() == [[0]]
    assert routing_flips(router, x).flipped == 1
    assert routing_flips(router, x, torch.float32).flipped == 0
    assert routing_flips(router, torch.tensor([[1.3, 1.2, 0.2]])).flipped == 0


def test_a_different_order_of_the_same_experts_is_no_flip():
    gate = [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    router, x = router_with_gate(gate, k=2), torch.tensor([[100.3, 100.2, 0.2]])
    assert route_in(router, x, torch.float32).indices.tolist() == [[1, 0]]
    assert route_in(router, x, torch.bfloat16).indices.tolist() == [[0, 1]]
    stats = routing_flips(router, x)
    assert stats.flipped == 0
    # the weights did change: the largest probability error, from the logits by hand (bfloat16 rounds the
    # probabilities too, by less than 2**-8)
    exact = torch.tensor([100.3, 100.4, 0.0], dtype=torch.float64).softmax(dim=0)
    rounded = torch.tensor([100.5, 100.0, 0.0], dtype=torch.float64).softmax(dim=0)
    assert stats.weight_error == pytest.approx((exact - rounded).abs().max().item(), abs=2**-8)


def test_a_power_of_two_scale_keeps_the_flips_of_a_logit_choice_and_changes_the_weight_error():
    router, x = random_router(order="topk_then_softmax")
    base, larger, smaller = (routing_flips(router, x, scale=s) for s in (1.0, 4.0, 0.25))
    assert base.flipped > 0
    assert larger.flipped == base.flipped == smaller.flipped
    assert smaller.weight_error < base.weight_error < larger.weight_error
    assert larger.logit_scale == pytest.approx(4 * base.logit_scale, rel=1e-6)
    other = routing_flips(router, x, scale=3.0)  # a non-power of two rounds differently: any count is possible
    assert 0 <= other.flip_rate <= 1 and math.isfinite(other.weight_error)


def test_the_gate_alone_in_bfloat16_is_the_float32_routing_of_its_rounded_logits():
    """As Mixtral's reference code: the product in bfloat16, the softmax and the choice in float32."""
    router, x = random_router()
    routing = route_in(router, x, torch.bfloat16, part="gate")
    logits = (x.bfloat16() @ router.gate.weight.bfloat16().T).float()
    expected = top_k_routing(logits, 2)
    assert routing.logits.dtype == torch.float32
    assert torch.equal(routing.indices, expected.indices) and torch.equal(routing.weights, expected.weights)


def test_with_the_gate_alone_in_bfloat16_a_power_of_two_scale_keeps_the_flips_whatever_the_order():
    """Chosen from float32 probabilities of the rounded logits, the choice is the logits' own: only their rounding
    flips tokens, and a power of two rounds them all the same way."""
    router, x = random_router()
    base, larger, smaller = (routing_flips(router, x, scale=s, part="gate") for s in (1.0, 4.0, 0.25))
    assert base.flipped > 0
    assert larger.flipped == base.flipped == smaller.flipped
    assert smaller.weight_error < base.weight_error < larger.weight_error


def test_softmax_then_topk_in_bfloat16_chooses_from_probabilities_that_can_tie():
    """Logits 0.25 and 0.251953125 are neighbours in bfloat16; their probabilities 0.4995 and 0.5005 both round
    to 0.5, so the default order cannot tell the experts apart. Times 16 (4.0 and 4.03125) the probabilities
    0.4922 and 0.5078 are distinct: in this order a power-of-two scale changes what bfloat16 resolves."""
    x = torch.tensor([[0.25, 0.251953125]])
    small = route_in(router_with_gate([[1.0, 0.0], [0.0, 1.0]]), x, torch.bfloat16)
    assert small.logits[0, 0] < small.logits[0, 1] and small.probs[0, 0] == small.probs[0, 1]
    large = route_in(router_with_gate([[16.0, 0.0], [0.0, 16.0]]), x, torch.bfloat16)
    assert large.probs[0, 0] < large.probs[0, 1] and large.indices.tolist() == [[1]]


def test_the_router_is_left_unchanged():
    router, x = random_router()
    before = {name: t.clone() for name, t in router.state_dict().items()}
    routing_flips(router, x, scale=4.0)
    route_in(router, x, torch.bfloat16)
    after = router.state_dict()
    assert all(torch.equal(after[name], t) and after[name].dtype == torch.float32 for name, t in before.items())
    assert router.training


def test_bad_arguments_are_named():
    router, x = random_router()
    for scale in (0.0, -1.0, math.nan, math.inf, True, "2"):
        with pytest.raises(ValueError, match="^scale"):
            routing_flips(router, x, scale=scale)
    for dtype in (torch.int64, torch.bool, "bfloat16"):
        with pytest.raises(ValueError, match="^dtype"):
            routing_flips(router, x, dtype)
        with pytest.raises(ValueError, match="^dtype"):
            route_in(router, x, dtype)
    with pytest.raises(ValueError, match="^x"):
        routing_flips(router, x[:, :16])
    with pytest.raises(ValueError, match="^router"):
        route_in(torch.nn.Linear(32, 8), x, torch.bfloat16)
    with pytest.raises(ValueError, match="^model"):
        router_inputs(tiny_model(ffn="dense"), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="^part"):
        routing_flips(router, x, part="softmax")
