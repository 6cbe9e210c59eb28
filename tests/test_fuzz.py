"""A table-driven fuzz of the public API: every bad input raises a ``ValueError`` whose message starts with the
argument's name as the caller typed it, and every finite valid input gives finite outputs and gradients, router
logits from −1e4 to +1e4 included."""

import re

import pytest
import torch

from moe_course import FFN, MoE, MoEConfig, MoELayer
from moe_course.capacity import capacity_keep, expert_capacity, padding_waste
from moe_course.dispatch import sort_by_expert
from moe_course.experts import Experts, ffn
from moe_course.flops import format_cost_table, moe_layer_cost, per_token_time
from moe_course.load import balance_coefficient, expert_load, router_entropy
from moe_course.losses import sequence_aux_loss, switch_aux_loss, update_bias, z_loss
from moe_course.model import TinyLM, TinyLMConfig
from moe_course.routing import (
    METHODS,
    Router,
    expert_choice_routing,
    group_limited_routing,
    jitter,
    noisy_top_k_routing,
    sigmoid_routing,
    switch_routing,
    top_k_routing,
)
from moe_course.train import TrainConfig, evaluate, train

NAN, INF = float("nan"), float("inf")
T, E, D = 6, 4, 16  # tokens, experts, d_model
Z = torch.randn(T, E, generator=torch.Generator().manual_seed(0))
INDICES = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [1, 3]])
PROBS = torch.softmax(Z, dim=-1)
X = torch.randn(T, D, generator=torch.Generator().manual_seed(1))
VOCAB = 11
LM = TinyLM(TinyLMConfig(VOCAB, seq_len=8, n_layers=1, n_heads=2, moe=MoEConfig(D, 16, E=E, k=2)))
IDS = torch.randint(VOCAB, (200,), generator=torch.Generator().manual_seed(2))
QUICK = TrainConfig(steps=2, batch_size=2, eval_batches=1, progress=False)


def layer(**options) -> MoELayer:
    return MoELayer(MoEConfig(D, 16, E=E, k=2, **options))


BAD = {
    # MoE(...): its own argument names, never MoEConfig's
    "MoE num_experts=0": (lambda: MoE(D, num_experts=0), "num_experts"),
    "MoE k > num_experts": (lambda: MoE(D, num_experts=4, k=5), "k"),
    "MoE d_ff=0": (lambda: MoE(D, d_ff=0), "d_ff"),
    "MoE expert='tanh'": (lambda: MoE(D, "tanh"), "expert"),
    "MoE option E": (lambda: MoE(D, E=4), "E"),
    "MoE unknown option": (lambda: MoE(D, experts=4), "experts"),
    "MoE ep_size=0": (lambda: MoE(D, ep_size=0), "ep_size"),
    "MoE backend list": (lambda: MoE(D, backend=["loop"]), "backend"),
    # MoEConfig: non-finite numbers, truthy non-bools, options of another router
    "capacity_factor=nan": (lambda: MoEConfig(D, 16, capacity_factor=NAN), "capacity_factor"),
    "capacity_factor=inf": (lambda: MoEConfig(D, 16, capacity_factor=INF), "capacity_factor"),
    "jitter_eps=nan": (lambda: MoEConfig(D, 16, jitter_eps=NAN), "jitter_eps"),
    "renormalize='no'": (lambda: MoEConfig(D, 16, renormalize="no"), "renormalize"),
    "n_groups for top-k": (lambda: MoEConfig(D, 16, n_groups=2), "n_groups"),
    "topk_groups for sigmoid": (lambda: MoEConfig(D, 16, router="sigmoid", topk_groups=1), "topk_groups"),
    "d_ff=0": (lambda: MoEConfig(D, 0), "d_ff"),
    # the layer and the router: x of another dtype, a meta tensor, not a tensor
    "layer x float64": (lambda: layer()(X.double()), "x"),
    "layer x meta": (lambda: layer()(X.to("meta")), "x"),
    "layer x int": (lambda: layer()(X.long()), "x"),
    "layer x list": (lambda: layer()(X.tolist()), "x"),
    "layer exchange": (lambda: MoELayer(MoEConfig(D, 16), "local"), "exchange"),
    "router x float64": (lambda: Router(D, E, 2)(X.double()), "x"),
    # routing functions
    "logits list": (lambda: top_k_routing(Z.tolist(), 2), "logits"),
    "logits no experts": (lambda: top_k_routing(torch.zeros(T, 0), 1), "logits"),
    "logits meta": (lambda: sigmoid_routing(Z.to("meta"), 2), "logits"),
    "bias nan": (lambda: top_k_routing(Z, 2, bias=torch.full((E,), NAN)), "bias"),
    "bias list": (lambda: sigmoid_routing(Z, 2, bias=[0.0] * E), "bias"),
    "renormalize=1": (lambda: top_k_routing(Z, 2, renormalize=1), "renormalize"),
    "noise_std=-1": (lambda: noisy_top_k_routing(Z, 2, -1.0), "noise_std"),
    "noise_std=nan": (lambda: noisy_top_k_routing(Z, 2, NAN), "noise_std"),
    "noise_std tensor < 0": (lambda: noisy_top_k_routing(Z, 2, torch.full((T, E), -1.0)), "noise_std"),
    "noise_std shape": (lambda: noisy_top_k_routing(Z, 2, torch.ones(3)), "noise_std"),
    "capacity 1.5": (lambda: expert_choice_routing(Z, 1.5), "capacity"),
    "n_groups=0": (lambda: group_limited_routing(Z, 2, 0, 1), "n_groups"),
    "jitter x list": (lambda: jitter([1.0], 0.1), "x"),
    "jitter eps=inf": (lambda: jitter(X, INF), "eps"),
    # losses
    "switch rows differ": (lambda: switch_aux_loss(PROBS, INDICES[:-1]), "indices"),
    "switch indices int32": (lambda: switch_aux_loss(PROBS, INDICES.int()), "indices"),
    "switch probs list": (lambda: switch_aux_loss(PROBS.tolist(), INDICES), "probs"),
    "sequence rows differ": (lambda: sequence_aux_loss(PROBS, INDICES[:3], 3), "indices"),
    "z_loss meta": (lambda: z_loss(Z.to("meta")), "logits"),
    "update_bias list": (lambda: update_bias([0.0] * E, torch.ones(E), 0.1), "bias"),
    "update_bias int bias": (lambda: update_bias(torch.zeros(E, dtype=torch.int64), torch.ones(E), 0.1), "bias"),
    "update_bias negative counts": (lambda: update_bias(torch.zeros(E), torch.tensor([1, -1, 0, 0]), 0.1), "counts"),
    "update_bias gamma=nan": (lambda: update_bias(torch.zeros(E), torch.ones(E), NAN), "gamma"),
    # capacity, dispatch, load
    "expert_capacity cf=nan": (lambda: expert_capacity(10, E, 2, NAN), "capacity_factor"),
    "expert_capacity cf=inf": (lambda: expert_capacity(10, E, 2, INF), "capacity_factor"),
    "capacity_keep probs list": (lambda: capacity_keep(INDICES, E, 2, "batch_priority", PROBS.tolist()), "probs"),
    "capacity_keep capacity 2.5": (lambda: capacity_keep(INDICES, E, 2.5), "capacity"),
    "capacity_keep E as float": (lambda: capacity_keep(INDICES, 4.0, 2), "E"),
    "padding_waste negative": (lambda: padding_waste(torch.tensor([3, -1])), "counts"),
    "padding_waste float": (lambda: padding_waste(torch.tensor([3.0, 1.5])), "counts"),
    "padding_waste list": (lambda: padding_waste([3, 1]), "counts"),
    "padding_waste capacity 2.5": (lambda: padding_waste(torch.tensor([2, 1]), 2.5), "capacity"),
    "sort keep int": (lambda: sort_by_expert(INDICES, E, keep=torch.ones(T, 2, dtype=torch.int64)), "keep"),
    "sort keep list": (lambda: sort_by_expert(INDICES, E, keep=[[True, True]] * T), "keep"),
    "sort indices meta": (lambda: sort_by_expert(INDICES.to("meta"), E), "indices"),
    "expert_load negative": (lambda: expert_load(torch.tensor([[-1, 0]]), E), "indices"),
    "balance negative": (lambda: balance_coefficient(torch.tensor([2, -1])), "counts"),
    "entropy list": (lambda: router_entropy(PROBS.tolist()), "probs"),
    # experts
    "expert -1": (lambda: Experts(E, D, 16).expert(-1, X), "e"),
    "expert E": (lambda: Experts(E, D, 16).expert(E, X), "e"),
    "expert x float64": (lambda: Experts(E, D, 16).expert(0, X.double()), "x"),
    "ffn tanh": (lambda: ffn(X, torch.ones(D, 16), torch.ones(16, D), "tanh"), "activation"),
    "FFN d_ff=0": (lambda: FFN(D, 0), "d_ff"),
    # the model, training and the FLOP accounting
    "idx out of vocabulary": (lambda: LM(torch.tensor([[VOCAB]])), "idx"),
    "idx negative": (lambda: LM(torch.tensor([[-1]])), "idx"),
    "idx float": (lambda: LM(torch.zeros(1, 4)), "idx"),
    "TinyLM config dict": (lambda: TinyLM({"vocab_size": VOCAB}), "config"),
    "eval_batches=0": (lambda: TrainConfig(eval_batches=0), "eval_batches"),
    "eval_every=-1": (lambda: TrainConfig(eval_every=-1), "eval_every"),
    "aux_weight=nan": (lambda: TrainConfig(aux_weight=NAN), "aux_weight"),
    "lr=0": (lambda: TrainConfig(lr=0), "lr"),
    "lr=inf": (lambda: TrainConfig(lr=INF), "lr"),
    "bias_gamma=-1": (lambda: TrainConfig(bias_gamma=-1.0), "bias_gamma"),
    "seed=2**70": (lambda: TrainConfig(seed=2**70), "seed"),
    "progress='yes'": (lambda: TrainConfig(progress="yes"), "progress"),
    "train_ids float": (lambda: train(LM, IDS.float(), IDS, QUICK), "train_ids"),
    "train_ids too short": (lambda: train(LM, IDS[:8], IDS, QUICK), "train_ids"),
    "val_ids out of vocabulary": (lambda: train(LM, IDS, IDS + VOCAB, QUICK), "val_ids"),
    "train config dict": (lambda: train(LM, IDS, IDS, {"steps": 2}), "config"),
    "evaluate n_batches=0": (lambda: evaluate(LM, IDS, 2, 0), "n_batches"),
    "per_token_time tau=nan": (lambda: per_token_time(2, NAN, 1.0), "tau"),
    "moe_layer_cost dict": (lambda: moe_layer_cost({"d_model": D}), "config"),
    "format_cost_table (E,)": (lambda: format_cost_table(D, 16, [(8,)]), "configs"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_raises_value_error_naming_the_argument(case):
    call, name = BAD[case]
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}\b"):
        call()


def test_a_dtype_mismatch_names_both_dtypes():
    with pytest.raises(ValueError, match=r"^x .*torch\.float32.*torch\.float64"):
        layer()(X.double())


def test_training_stops_at_the_step_whose_loss_is_not_finite():
    model = TinyLM(LM.config)
    calls = []

    def poison(module, args, output):  # the third forward pass (step 3) returns NaN
        calls.append(None)
        return output * NAN if len(calls) == 3 else output

    model.norm.register_forward_hook(poison)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(FloatingPointError, match=r"non-finite \(nan\) at step 3 of 5"):
        train(model, IDS, IDS, TrainConfig(steps=5, batch_size=2, progress=False))
    assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters())  # steps 1, 2 trained
    assert all(torch.isfinite(p).all() for p in model.parameters())  # step 3 did not touch the weights


def test_a_capacity_beyond_int64_keeps_every_pair():
    assert capacity_keep(INDICES, E, 2**70).all()
    assert capacity_keep(INDICES, E, 2**70, "batch_priority", PROBS).all()
    moe = layer(capacity_factor=1e30)  # a capacity of about 1e30 pairs per expert
    moe(X)
    assert moe.last_stats.dropped_pairs == 0


# Logits that push every router to its numerical limits: spread over [−1e4, 1e4], all at −1e4 (every sigmoid score
# and most probabilities underflow to 0), all at +1e4.
LOGITS = {
    "spread": torch.linspace(-1e4, 1e4, T * E)[torch.randperm(T * E, generator=torch.Generator().manual_seed(3))],
    "-1e4": -1e4 + torch.randn(T * E, generator=torch.Generator().manual_seed(4)),
    "+1e4": 1e4 + torch.randn(T * E, generator=torch.Generator().manual_seed(5)),
}
UNDERFLOWED = torch.tensor([0.0, 0.0, 2.0, 2.0])  # a selection bias that picks experts 2 and 3 whatever they score
ROUTERS = {
    "topk": lambda z: top_k_routing(z, 2),
    "topk bias": lambda z: top_k_routing(z, 2, bias=UNDERFLOWED),
    "topk not renormalized": lambda z: top_k_routing(z, 2, renormalize=False),
    "topk_then_softmax bias": lambda z: top_k_routing(z, 2, "topk_then_softmax", bias=3e4 * UNDERFLOWED),
    "noisy_topk": lambda z: noisy_top_k_routing(z, 2, 1.0, torch.Generator().manual_seed(0)),
    "switch": switch_routing,
    "expert_choice": lambda z: expert_choice_routing(z, 3),
    "sigmoid": lambda z: sigmoid_routing(z, 2),
    "sigmoid bias": lambda z: sigmoid_routing(z, 2, bias=UNDERFLOWED),
    "group_limited": lambda z: group_limited_routing(z, 2, n_groups=2, topk_groups=1, routed_scaling_factor=16.0),
    "group_limited renormalized": lambda z: group_limited_routing(z, 2, n_groups=2, topk_groups=1, renormalize=True),
    "sigmoid groups bias": lambda z: sigmoid_routing(z, 2, UNDERFLOWED, n_groups=2, topk_groups=1),
}
NOT_SUMMING_TO_1 = ("topk not renormalized", "switch", "expert_choice", "group_limited")


def assert_finite(*tensors):
    for t in tensors:
        assert torch.isfinite(t).all(), t


@pytest.mark.parametrize("logits", LOGITS)
@pytest.mark.parametrize("router", ROUTERS)
def test_every_router_is_finite_for_finite_logits(router, logits):
    z = LOGITS[logits].view(T, E).clone().requires_grad_()
    r = ROUTERS[router](z)
    loss = r.weights.sum() + r.probs.sum() + switch_aux_loss(r.probs, r.indices) + z_loss(r.logits)
    loss.backward()
    assert_finite(r.weights, r.probs, loss, z.grad)
    if router.endswith("bias"):  # the bias chose experts 2 and 3 even where their scores underflowed to 0
        assert (r.indices.sort(dim=-1).values == torch.tensor([2, 3])).all()
    if router not in NOT_SUMMING_TO_1:  # the weights of a token sum to 1
        torch.testing.assert_close(r.weights.sum(dim=-1), torch.ones(T))


def layer_with_logits(router: str, backend: str, logits: str) -> tuple:
    """An MoE layer whose router gives logits of ``logits``'s kind on the returned x, with a bias for experts 2 and
    3: ``"saturated"`` puts half the tokens at about −1e4 for every expert and the others at about +1e4."""
    torch.manual_seed(0)
    options = {"n_groups": 2, "topk_groups": 1} if router == "group_limited" else {}
    moe = MoELayer(MoEConfig(D, 16, E=E, k=1 if router == "switch" else 2, router=router, backend=backend, **options))
    moe.router.bias.copy_(UNDERFLOWED)
    x = torch.randn(2 * T, D)
    with torch.no_grad():
        if logits == "saturated":
            x[:, 0] = torch.tensor([1.0, -1.0]).repeat(T)
            moe.router.gate.weight.normal_(std=0.1)
            moe.router.gate.weight[:, 0] = -1e4
        else:
            moe.router.gate.weight.mul_(1e4 / moe.router.gate(x).abs().max())
    return moe, x


@pytest.mark.parametrize("logits", ["spread", "saturated"])
@pytest.mark.parametrize("backend", ["loop", "vectorized", "grouped"])
@pytest.mark.parametrize("router", METHODS)
def test_every_layer_is_finite_for_finite_logits(router, backend, logits):
    moe, x = layer_with_logits(router, backend, logits)
    x.requires_grad_()
    y = moe(x)
    assert moe.last_routing.logits.abs().max() > 0.9e4  # the router really was at its limits
    y.pow(2).sum().backward()
    assert_finite(y, x.grad, *(p.grad for p in moe.parameters() if p.grad is not None))
