"""Named presets: the MoE block of each model the course cites, with its routing, activation, shared expert and
scaling conventions, in one call: ``preset("deepseek_v3")``.

Each :class:`Preset` holds what the model fixes (``conventions``: router, renormalization, scaling, activation,
shared-expert gate, capacity) and its published sizes (``sizes``: d_model, d_ff, E, k, groups, shared experts,
from the paper or the released ``config.json``). :func:`preset_config` keeps the conventions and takes small sizes
by default (``tiny``, same structure), so every preset runs on a laptop; ``published=True`` gives the real sizes
(for the FLOP accounting: :func:`moe_course.flops.moe_layer_cost`), and any size can be overridden.

Where a preset simplifies the model, its ``note`` says how. ``balancing`` names how the model keeps its experts
loaded (a training choice, not part of the block): the losses and the bias update are in :mod:`moe_course.losses`.
"""

from dataclasses import dataclass

from .checks import check_bool, check_choice
from .config import MoEConfig
from .layer import MoELayer
from .routing import router_settings


@dataclass(frozen=True)
class Preset:
    """One model's MoE block. ``conventions`` and ``sizes`` are :class:`MoEConfig` fields."""

    model: str
    source: str
    conventions: dict
    sizes: dict
    tiny: dict
    balancing: str
    note: str = ""


PRESETS = {
    "switch": Preset(
        model="Switch Transformer (Switch-Base-128)",
        source="Fedus et al. 2021; Hugging Face SwitchTransformers",
        conventions=dict(router="switch", activation="relu", capacity_factor=1.25, jitter_eps=0.01),
        sizes=dict(d_model=768, d_ff=3072, E=128, k=1),
        tiny=dict(d_model=32, d_ff=64, E=8, k=1),
        balancing="Switch loss (α = 0.01)",
        note="capacity factor 1.25 in training (arrival order); a dropped token's MoE output is 0",
    ),
    "gshard": Preset(
        model="GShard (top-2 gating)",
        source="Lepikhin et al. 2020",
        conventions=dict(router="topk", activation="relu", capacity_factor=1.0),
        sizes=dict(d_model=1024, d_ff=8192, E=2048, k=2),
        tiny=dict(d_model=32, d_ff=64, E=8, k=2),
        balancing="auxiliary loss on the first choices",
        note="both top-2 pairs are dispatched (GShard sends the second one at random, with probability 2·g₂)",
    ),
    "mixtral": Preset(
        model="Mixtral 8x7B",
        source="Jiang et al. 2024; Hugging Face MixtralSparseMoeBlock",
        conventions=dict(router="topk", order="topk_then_softmax", activation="swiglu"),
        sizes=dict(d_model=4096, d_ff=14336, E=8, k=2),
        tiny=dict(d_model=32, d_ff=64, E=8, k=2),
        balancing="Switch loss (α = 0.02)",
    ),
    "qwen2_moe": Preset(
        model="Qwen2-57B-A14B",
        source="Qwen2 technical report; Hugging Face Qwen2MoeSparseMoeBlock",
        conventions=dict(router="topk", renormalize=False, activation="swiglu", shared_gate=True),
        sizes=dict(d_model=3584, d_ff=2560, E=64, k=8, n_shared=1, shared_d_ff=20480),
        tiny=dict(d_model=32, d_ff=16, E=8, k=4, n_shared=1, shared_d_ff=128),
        balancing="Switch loss (α = 0.001)",
    ),
    "qwen3_moe": Preset(
        model="Qwen3-30B-A3B",
        source="Qwen3 technical report; Hugging Face Qwen3MoeSparseMoeBlock",
        conventions=dict(router="topk", renormalize=True, activation="swiglu"),
        sizes=dict(d_model=2048, d_ff=768, E=128, k=8),
        tiny=dict(d_model=32, d_ff=16, E=16, k=4),
        balancing="Switch loss (α = 0.001), over the global batch",
    ),
    "deepseek_v2": Preset(
        model="DeepSeek-V2",
        source="DeepSeek-AI 2024; Hugging Face DeepseekV2MoE (group_limited_greedy)",
        conventions=dict(router="group_limited", renormalize=False, routed_scaling_factor=16.0, activation="swiglu"),
        sizes=dict(d_model=5120, d_ff=1536, E=160, k=6, n_groups=8, topk_groups=3, n_shared=2),
        tiny=dict(d_model=32, d_ff=16, E=16, k=3, n_groups=8, topk_groups=2, n_shared=2),
        balancing="expert-, device- and communication-level balance losses",
    ),
    "deepseek_v3": Preset(
        model="DeepSeek-V3",
        source="DeepSeek-AI 2024; inference/model.py Gate, Hugging Face DeepseekV3MoE (noaux_tc)",
        conventions=dict(router="sigmoid", renormalize=True, routed_scaling_factor=2.5, activation="swiglu"),
        sizes=dict(d_model=7168, d_ff=2048, E=256, k=8, n_groups=8, topk_groups=4, n_shared=1),
        tiny=dict(d_model=32, d_ff=16, E=16, k=4, n_groups=4, topk_groups=2, n_shared=1),
        balancing="selection-bias update (γ = 0.001) and sequence-wise loss (α = 0.0001)",
    ),
}


def preset_config(name: str, published: bool = False, **overrides) -> MoEConfig:
    """The :class:`MoEConfig` of preset ``name``: its conventions with its ``tiny`` sizes, or its published ones if
    ``published``; ``overrides`` replace any field (a size, ``backend``, ``capacity_factor=None`` for dropless)."""
    check_choice("name", name, PRESETS)
    check_bool("published", published)
    p = PRESETS[name]
    return MoEConfig(**{**p.conventions, **(p.sizes if published else p.tiny), **overrides})


def preset(name: str, published: bool = False, **overrides) -> MoELayer:
    """An :class:`MoELayer` built from :func:`preset_config` (fresh weights; see :mod:`moe_course.hf` to load a
    checkpoint's)."""
    return MoELayer(preset_config(name, published, **overrides))


def preset_table() -> str:
    """The presets as a Markdown table: model, router, k, renormalized?, scaling, shared experts, balancing."""
    rows = ["| preset | model | router | k of E | renormalized | scaling | shared experts | balancing |"]
    rows.append("|---|---|---|---|---|---|---|---|")
    for name, p in PRESETS.items():
        c = MoEConfig(**p.conventions, **p.sizes)
        settings = router_settings(c.E, c.k, c.router, **c.router_options())
        renormalized = "yes" if settings.get("renormalize", False) else "no"
        scaling = settings.get("routed_scaling_factor", 1.0)
        cells = [f"`{name}`", p.model, _router(c), f"{c.k} of {c.E}", renormalized, f"{scaling:g}", _shared(c)]
        rows.append("| " + " | ".join([*cells, p.balancing]) + " |")
    return "\n".join(rows)


def _router(c: MoEConfig) -> str:
    if c.router == "switch":
        return f"softmax top-1, capacity {c.capacity_factor:g}"
    if c.router == "sigmoid":
        return f"sigmoid + bias, best {c.topk_groups} of {c.n_groups} groups (top-2 sum)"
    if c.router == "group_limited":
        return f"softmax, best {c.topk_groups} of {c.n_groups} groups (max)"
    order = "top-k then softmax" if c.order == "topk_then_softmax" else "softmax then top-k"
    return order + (f", capacity {c.capacity_factor:g}" if c.capacity_factor else "")


def _shared(c: MoEConfig) -> str:
    if not c.n_shared:
        return "none"
    gate = ", sigmoid-gated" if c.shared_gate else ""
    return f"{c.n_shared} ({c.shared_width} wide{gate})"
