"""Loading a Hugging Face MoE block: state dicts built here in each model's naming (nothing is downloaded) load
into the matching preset and reproduce a forward pass computed here from the state dict directly."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from moe_course.hf import LOADABLE, load_hf_block, strip_prefix
from tests.test_presets import published_routing

D, F_EXPERT, E = 16, 8, 8
SETTINGS = {  # the routing settings of each model's config.json, for 8 experts
    "switch": {},
    "mixtral": {"num_experts_per_tok": 2},
    "qwen2_moe": {"num_experts_per_tok": 4, "norm_topk_prob": False},
    "qwen3_moe": {"num_experts_per_tok": 4, "norm_topk_prob": True},
    "deepseek_v2": {"num_experts_per_tok": 3, "n_group": 4, "topk_group": 2, "routed_scaling_factor": 16.0},
    "deepseek_v3": {"num_experts_per_tok": 3, "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5},
}
SHARED_WIDTH = {"qwen2_moe": 24, "deepseek_v2": 2 * F_EXPERT, "deepseek_v3": F_EXPERT}


def linear(out_features, in_features, g):
    return torch.randn(out_features, in_features, generator=g) / in_features**0.5


def hf_state_dict(name: str, fused: bool = False, seed: int = 0) -> dict:
    """One block's weights in the naming of ``name``'s Hugging Face implementation."""
    g = torch.Generator().manual_seed(seed)
    sd = {"router.classifier.weight" if name == "switch" else "gate.weight": linear(E, D, g)}
    if name == "deepseek_v3":
        sd["gate.e_score_correction_bias"] = 0.1 * torch.randn(E, generator=g)
    if fused:
        sd["experts.gate_up_proj"] = torch.stack([linear(2 * F_EXPERT, D, g) for _ in range(E)])
        sd["experts.down_proj"] = torch.stack([linear(D, F_EXPERT, g) for _ in range(E)])
    for e in range(E if not fused else 0):
        if name == "switch":
            sd |= {f"experts.expert_{e}.wi.weight": linear(F_EXPERT, D, g)}
            sd |= {f"experts.expert_{e}.wo.weight": linear(D, F_EXPERT, g)}
            continue
        names = ("w1", "w3", "w2") if name == "mixtral" else ("gate_proj", "up_proj", "down_proj")
        shapes = ((F_EXPERT, D), (F_EXPERT, D), (D, F_EXPERT))
        sd |= {f"experts.{e}.{n}.weight": linear(*shape, g) for n, shape in zip(names, shapes, strict=True)}
    if name in SHARED_WIDTH:
        width, prefix = SHARED_WIDTH[name], "shared_expert." if name == "qwen2_moe" else "shared_experts."
        shapes = {"gate_proj": (width, D), "up_proj": (width, D), "down_proj": (D, width)}
        sd |= {f"{prefix}{n}.weight": linear(*shape, g) for n, shape in shapes.items()}
    if name == "qwen2_moe":
        sd["shared_expert_gate.weight"] = linear(1, D, g)
    return sd


def swiglu(x, gate, up, down):
    return (F.silu(x @ gate.T) * (x @ up.T)) @ down.T


def expert(name, sd, e, x):
    """Expert e of the state dict on x, as the model's implementation computes it."""
    if "experts.gate_up_proj" in sd:
        gate, up = sd["experts.gate_up_proj"][e].chunk(2, dim=0)
        return swiglu(x, gate, up, sd["experts.down_proj"][e])
    if name == "switch":
        return F.relu(x @ sd[f"experts.expert_{e}.wi.weight"].T) @ sd[f"experts.expert_{e}.wo.weight"].T
    names = ("w1", "w3", "w2") if name == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    return swiglu(x, *(sd[f"experts.{e}.{n}.weight"] for n in names))


def hf_forward(name, sd, x):
    """The block's output from the state dict alone: the published routing, each token's experts, the shared part."""
    logits = x @ (sd["router.classifier.weight"] if name == "switch" else sd["gate.weight"]).T
    s = SETTINGS[name]
    c = SimpleNamespace(
        k=s.get("num_experts_per_tok", 1), n_groups=s.get("n_group"), topk_groups=s.get("topk_group"),
        routed_scaling_factor=s.get("routed_scaling_factor", 1.0),
    )  # fmt: skip
    bias = sd.get("gate.e_score_correction_bias", torch.zeros(E)).double()
    indices, weights = published_routing(name, logits, bias, c)
    y = torch.stack(
        [
            sum(w * expert(name, sd, e, x[t]) for e, w in zip(ix, ws, strict=True))
            for t, (ix, ws) in enumerate(zip(indices, weights, strict=True))
        ]
    )
    if name in SHARED_WIDTH:
        prefix = "shared_expert." if name == "qwen2_moe" else "shared_experts."
        shared = swiglu(x, *(sd[f"{prefix}{n}_proj.weight"] for n in ("gate", "up", "down")))
        if name == "qwen2_moe":
            shared = torch.sigmoid(x @ sd["shared_expert_gate.weight"].T) * shared
        y = y + shared
    return y


BACKENDS = ["loop", "grouped", pytest.param("triton", marks=pytest.mark.triton)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", LOADABLE)
def test_a_loaded_block_computes_the_models_forward(name, backend):
    sd = {key: value.double() for key, value in hf_state_dict(name).items()}
    layer = load_hf_block(name, sd, SETTINGS[name], capacity_factor=None, backend=backend).double().eval()
    x = torch.randn(24, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tolerance = 1e-5 if backend == "triton" else 1e-10  # the interpreter computes in float32
    torch.testing.assert_close(layer(x), hf_forward(name, sd, x), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
def test_fused_expert_weights_load_as_per_expert_ones(name):
    sd = {key: value.double() for key, value in hf_state_dict(name, fused=True).items()}
    layer = load_hf_block(name, sd, SETTINGS[name]).double()
    x = torch.randn(24, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(layer(x), hf_forward(name, sd, x))


def test_sizes_come_from_the_tensors_and_settings_from_the_config():
    layer = load_hf_block("deepseek_v2", hf_state_dict("deepseek_v2"), SETTINGS["deepseek_v2"])
    c = layer.config
    assert (c.d_model, c.d_ff, c.E, c.k, c.n_groups, c.topk_groups, c.n_shared) == (D, F_EXPERT, E, 3, 4, 2, 2)
    assert c.routed_scaling_factor == 16.0 and c.router == "group_limited"
    qwen = load_hf_block("qwen2_moe", hf_state_dict("qwen2_moe"), SETTINGS["qwen2_moe"]).config
    assert (qwen.n_shared, qwen.shared_d_ff, qwen.shared_gate, qwen.renormalize) == (1, 24, True, False)


def test_a_block_of_a_whole_model_state_dict():
    whole = {f"model.layers.3.mlp.{key}": value for key, value in hf_state_dict("qwen3_moe").items()}
    whole["model.embed_tokens.weight"] = torch.zeros(10, D)
    block = strip_prefix(whole, "model.layers.3.mlp.")
    assert set(block) == set(hf_state_dict("qwen3_moe"))
    assert load_hf_block("qwen3_moe", block, SETTINGS["qwen3_moe"]).config.E == E


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: load_hf_block("gshard", hf_state_dict("mixtral")), "name"),
        (lambda: load_hf_block("mixtral", [1, 2]), "state_dict"),
        (lambda: load_hf_block("mixtral", hf_state_dict("qwen3_moe")), "experts.0.w1.weight"),
        (lambda: load_hf_block("switch", hf_state_dict("mixtral")), "router.classifier.weight"),
        (
            lambda: load_hf_block("deepseek_v3", hf_state_dict("deepseek_v3"), {"n_group": 3, "topk_group": 2}),
            "n_groups",
        ),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
