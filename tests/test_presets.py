"""Each preset computes what its model computes: routing against the published formulas written out here token by
token, the whole block on every backend against the loop, and the published sizes."""

import math
from pathlib import Path

import pytest
import torch

from moe_course.flops import moe_layer_cost
from moe_course.presets import PRESETS, preset, preset_config, preset_table
from tests.conftest import run_forward_backward
from tests.test_routers import assert_same_routing, deepseek_v2, deepseek_v3


def softmax(z):
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def top(scores, k):
    return sorted(range(len(scores)), key=lambda e: -scores[e])[:k]


def softmax_top_k(logits, k, renormalize):
    """Qwen2-MoE (renormalize=False), Qwen3-MoE and GShard (True): softmax over E, top k, maybe renormalized."""
    indices, weights = [], []
    for z in logits.tolist():
        p = softmax(z)
        chosen = top(p, k)
        total = sum(p[e] for e in chosen) if renormalize else 1.0
        indices.append(chosen)
        weights.append([p[e] / total for e in chosen])
    return indices, weights


def mixtral(logits, k):
    """Mixtral: top k of the logits, softmax over those k."""
    indices, weights = [], []
    for z in logits.tolist():
        chosen = top(z, k)
        indices.append(chosen)
        weights.append(softmax([z[e] for e in chosen]))
    return indices, weights


def published_routing(name, logits, bias, c):
    """The routing of preset ``name``'s model, from its published definition."""
    if name == "switch":
        return softmax_top_k(logits, 1, renormalize=False)
    if name in ("gshard", "qwen3_moe"):
        return softmax_top_k(logits, c.k, renormalize=True)
    if name == "qwen2_moe":
        return softmax_top_k(logits, c.k, renormalize=False)
    if name == "mixtral":
        return mixtral(logits, c.k)
    if name == "deepseek_v2":
        return deepseek_v2(logits, c.k, c.n_groups, c.topk_groups, c.routed_scaling_factor)
    return deepseek_v3(logits, c.k, bias, c.n_groups, c.topk_groups, True, c.routed_scaling_factor)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_routes_as_its_model(name):
    torch.manual_seed(0)
    layer = preset(name).double()
    bias = torch.randn(layer.config.E, dtype=torch.float64) * 0.1
    layer.router.bias.copy_(bias)  # DeepSeek-V3's correction bias (the softmax presets leave it at 0)
    if name != "deepseek_v3":
        layer.router.bias.zero_()
    layer.eval()  # no jitter
    x = torch.randn(64, layer.config.d_model, dtype=torch.float64)
    r = layer.router(x)
    assert_same_routing(r, *published_routing(name, r.logits, layer.router.bias, layer.config))


def test_the_group_limits_and_the_bias_change_deepseeks_choices():
    """On the inputs of the test above, the routing differs from plain top-k for many tokens: the test compares
    the parts of the definitions that matter."""
    for name in ("deepseek_v2", "deepseek_v3"):
        torch.manual_seed(0)
        layer = preset(name).double().eval()
        layer.router.bias.copy_(torch.randn(layer.config.E, dtype=torch.float64) * 0.1 if name == "deepseek_v3" else 0)
        x = torch.randn(64, layer.config.d_model, dtype=torch.float64)
        r = layer.router(x)
        plain, _ = softmax_top_k(r.logits, layer.config.k, True)
        assert sum(set(a) != set(b) for a, b in zip(plain, r.indices.tolist(), strict=True)) > 8


BACKENDS = ["loop", "vectorized", "grouped", pytest.param("triton", marks=pytest.mark.triton)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_block_runs_on_every_backend(name, backend):
    """Output and gradients (input and every parameter) of the block on ``backend`` equal the loop's, in fp32
    (in evaluation mode: Switch's router jitter draws noise in training)."""
    torch.manual_seed(1)
    reference = preset(name, backend="loop").eval()
    layer = preset(name, backend=backend).eval()
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(40, reference.config.d_model)
    got = run_forward_backward(layer, [x], list(layer.parameters()))
    want = run_forward_backward(reference, [x], list(reference.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_qwen2_moe_adds_its_gated_shared_expert():
    layer = preset("qwen2_moe")
    assert layer.shared.gate is not None and layer.shared.d_ff == 128 and layer.config.d_ff == 16
    assert preset("deepseek_v3").shared.gate is None


@pytest.mark.parametrize(
    "name, stored, active",
    [
        ("mixtral", 8 * 3 * 4096 * 14336, 2 * 3 * 4096 * 14336),
        ("deepseek_v3", (256 + 1) * 3 * 7168 * 2048, (8 + 1) * 3 * 7168 * 2048),
        ("qwen2_moe", 64 * 3 * 3584 * 2560 + 3 * 3584 * 20480 + 3584, 8 * 3 * 3584 * 2560 + 3 * 3584 * 20480 + 3584),
    ],
)
def test_published_sizes_give_the_published_block(name, stored, active):
    cost = moe_layer_cost(preset_config(name, published=True))
    assert (cost.stored_params, cost.active_params) == (stored, active)


def test_the_table_has_a_row_per_preset():
    table = preset_table().splitlines()
    assert len(table) == 2 + len(PRESETS)
    assert (
        "| `deepseek_v3` | DeepSeek-V3 | sigmoid + bias, best 4 of 8 groups (top-2 sum) | 8 of 256 | yes | 2.5 |"
        in ("\n".join(table))
    )


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: preset("deepseek_v4"), "name"),
        (lambda: preset("mixtral", published="yes"), "published"),
        (lambda: preset("mixtral", n_groups=2), "n_groups"),  # not an option of Mixtral's top-k router
        (lambda: preset("deepseek_v3", E=10), "n_groups"),  # 4 groups do not divide 10 experts
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


def test_the_readme_shows_the_table():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert preset_table() in readme, "README.md's preset table is stale: paste moe_course.presets.preset_table()"
