import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moe_course.config import MoEConfig
from moe_course.flops import (
    MIXTRAL_8X7B,
    ModelConfig,
    count_model_params,
    ffn_flops_per_token,
    ffn_params,
    ffn_share_of_layer,
    flop_matched_dense_d_ff,
    format_cost_table,
    forward_flops,
    moe_ffn_cost,
    moe_layer_cost,
    param_matched_dense_d_ff,
    per_token_time,
    training_flops,
)
from moe_course.layer import MoELayer
from moe_course.model import TinyLM, TinyLMConfig

D, F = 4096, 14336


def test_dense_row_matches_the_book():
    assert ffn_params(D, F) == 117_440_512
    assert ffn_flops_per_token(D, F) == 234_881_024
    assert ffn_params(D, F, gated=True) == 3 * D * F


@pytest.mark.parametrize(
    "E, k, stored, flops, active",
    [
        (8, 2, 939_524_096, 469_762_048, 234_881_024),
        (64, 2, 7_516_192_768, 469_762_048, 234_881_024),
        (256, 8, 30_064_771_072, 1_879_048_192, 939_524_096),
    ],
)
def test_moe_rows_match_the_book(E, k, stored, flops, active):
    c = moe_ffn_cost(D, F, E, k)
    assert (c.stored_params, c.flops_per_token, c.active_params) == (stored, flops, active)
    assert c.capacity_per_flop == E / k


def test_shared_experts_run_and_are_stored():
    plain, shared = moe_ffn_cost(D, F, 64, 2), moe_ffn_cost(D, F, 64, 2, s=2)
    one = ffn_params(D, F)
    assert shared.stored_params == plain.stored_params + 2 * one
    assert shared.active_params == 4 * one
    assert shared.flops_per_token == 2 * plain.flops_per_token


def test_table_prints_every_row_to_the_digit():
    table = format_cost_table(D, F, [(8, 2), (64, 2), (256, 8)])
    for number in ["117,440,512", "234,881,024", "30,064,771,072", "1,879,048,192", "939,524,096"]:
        assert number in table
    assert len(table.splitlines()) == 5


def test_ffn_is_two_thirds_of_a_layer():
    assert ffn_share_of_layer(1024, 4096) == pytest.approx(2 / 3)


def test_mixtral_counts():
    p = count_model_params(MIXTRAL_8X7B)
    assert p["total"] == pytest.approx(46.7e9, rel=0.005)
    assert p["active"] == pytest.approx(12.9e9, rel=0.005)
    assert p["total"] == sum(v for name, v in p.items() if name not in ("total", "active"))


def test_dense_model_has_no_router_and_all_params_active():
    cfg = ModelConfig(vocab_size=1000, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=256, E=1, k=1)
    p = count_model_params(cfg)
    assert p["router"] == 0
    assert p["active"] == p["total"]
    # full multi-head attention: 4·d² per layer
    assert p["attention"] == 2 * 4 * 64 * 64


def test_tied_embeddings_and_shared_experts():
    base = dict(vocab_size=1000, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, E=8, k=2)
    untied, tied = count_model_params(ModelConfig(**base)), count_model_params(ModelConfig(**base, tie_embeddings=True))
    assert untied["total"] - tied["total"] == 1000 * 64
    shared = count_model_params(ModelConfig(**base, s=1))
    assert shared["active"] - untied["active"] == 2 * 3 * 64 * 128


def test_matched_dense_sizes():
    assert flop_matched_dense_d_ff(F, k=2) == 2 * F
    assert flop_matched_dense_d_ff(F, k=2, s=1) == 3 * F
    assert param_matched_dense_d_ff(F, E=8) == 8 * F


def test_per_token_time():
    assert per_token_time(2, tau=1.0, c=3.0) == 8.0
    with pytest.raises(ValueError, match=r"\btau\b"):
        per_token_time(2, tau=-1.0, c=1.0)
    with pytest.raises(ValueError, match=r"\bc\b"):
        per_token_time(2, tau=1.0, c="fast")


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: moe_ffn_cost(D, F, E=8, k=9), "k"),
        (lambda: moe_ffn_cost(D, F, E=8, k=0), "k"),
        (lambda: moe_ffn_cost(D, F, E=0, k=1), "E"),
        (lambda: moe_ffn_cost(D, F, E=8, k=2, s=-1), "s"),
        (lambda: ffn_params(0, F), "d_model"),
        (lambda: ffn_params(D, 2.5), "d_ff"),
        (lambda: ModelConfig(100, 64, 2, n_heads=4, n_kv_heads=3, d_ff=128, E=8, k=2), "n_kv_heads"),
        (lambda: ModelConfig(100, 64, 2, n_heads=5, n_kv_heads=5, d_ff=128, E=8, k=2), "n_heads"),
        (lambda: flop_matched_dense_d_ff(0, k=2), "d_ff"),
        (lambda: param_matched_dense_d_ff(128, E=0), "E"),
        (lambda: forward_flops(MIXTRAL_8X7B, 0), "seq_len"),
        (lambda: training_flops(MIXTRAL_8X7B, 64, -1), "sequences"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


@pytest.mark.parametrize("activation, n_shared", [("swiglu", 0), ("gelu", 2)])
def test_the_cost_of_a_layer_config_is_the_built_layer_s(activation, n_shared):
    config = MoEConfig(d_model=16, d_ff=24, E=8, k=2, activation=activation, n_shared=n_shared)
    layer = MoELayer(config)
    cost = moe_layer_cost(config)
    ffn_weights = [p for name, p in layer.named_parameters() if not name.startswith("router")]
    assert cost.stored_params == sum(p.numel() for p in ffn_weights)
    one_expert = sum(p.numel() for p in layer.experts.parameters()) // config.E
    assert cost.active_params == (config.k + n_shared) * one_expert
    assert cost.flops_per_token == 2 * cost.active_params


def test_a_gated_shared_expert_of_its_own_width_is_counted_as_built():
    """Qwen2-MoE's block: one shared expert 3 times as wide as a routed one, with its d_model → 1 gate."""
    config = MoEConfig(d_model=16, d_ff=8, E=8, k=2, n_shared=1, shared_d_ff=24, shared_gate=True)
    layer = MoELayer(config)
    cost = moe_layer_cost(config)
    assert cost.stored_params == sum(p.numel() for name, p in layer.named_parameters() if not name.startswith("router"))
    shared = sum(p.numel() for p in layer.shared.parameters())
    assert shared == 3 * 16 * 24 + 16
    assert cost.active_params == 2 * 3 * 16 * 8 + shared and cost.flops_per_token == 2 * cost.active_params
    base = dict(vocab_size=100, d_model=16, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=8, E=8, k=2, s=1)
    parts = count_model_params(ModelConfig(**base, shared_d_ff=24, shared_gate=True))
    assert parts["experts"] == 2 * (8 * 3 * 16 * 8 + shared)


def causal_attention_flops(n_layers: int, n_heads: int, head_dim: int, S: int) -> int:
    """Position by position: the token at i scores i + 1 keys and sums i + 1 values, 2 FLOPs per product."""
    return n_layers * n_heads * sum(2 * 2 * (i + 1) * head_dim for i in range(S))


@pytest.mark.parametrize("ffn, shared", [("moe", 0), ("moe", 1), ("dense", 0)])
def test_forward_and_training_flops_are_what_torch_counts(ffn, shared):
    """torch's FLOP counter sees every matrix product of a real forward and backward (not attention's scores on a
    CPU): ours must equal its count plus causal attention, with the router and the tied LM head included."""
    moe = MoEConfig(32, 24, E=4, k=2, backend="loop", n_shared=shared)
    config = TinyLMConfig(vocab_size=30, seq_len=16, n_layers=2, n_heads=4, ffn=ffn, moe=moe)
    torch.manual_seed(0)
    model = TinyLM(config)
    S, sequences = 16, 3
    idx = torch.randint(30, (sequences, S))
    with FlopCounterMode(display=False) as forward:
        loss = model(idx).square().mean()
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    attention = causal_attention_flops(2, 4, 8, S)
    c = config.model_config()
    assert forward_flops(c, S) * sequences == forward.get_total_flops() + attention * sequences
    counted = forward.get_total_flops() + backward.get_total_flops()
    assert training_flops(c, S, sequences) == counted + 3 * attention * sequences


def test_the_router_s_flops_are_counted():
    base = dict(vocab_size=100, d_model=16, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=8, E=8, k=2)
    one_gate, two_gates = ModelConfig(**base), ModelConfig(**base, router_gates=2)
    assert forward_flops(two_gates, 10) - forward_flops(one_gate, 10) == 2 * 16 * 8 * 2 * 10
