"""Load one MoE block of a Hugging Face checkpoint into the matching preset: ``load_hf_block("qwen2_moe",
state_dict, config)``, then run it on any backend, the Triton kernels included.

``state_dict`` is one layer's MoE block, its keys relative to the block (``model.layers.3.mlp.`` stripped), in the
naming of the model's Hugging Face implementation:

- router: ``gate.weight`` [E, d_model] (Switch: ``router.classifier.weight``); DeepSeek-V3 adds
  ``gate.e_score_correction_bias`` [E], the selection bias;
- experts, one module each: ``experts.{e}.gate_proj`` / ``up_proj`` / ``down_proj`` ``.weight`` (Qwen, DeepSeek),
  ``experts.{e}.w1`` (gate) / ``w3`` (up) / ``w2`` (down) ``.weight`` (Mixtral), ``experts.expert_{e}.wi`` /
  ``wo`` ``.weight`` (Switch, ReLU); or fused, as recent transformers store them: ``experts.gate_up_proj``
  [E, 2·d_ff, d_model] (gate rows first) and ``experts.down_proj`` [E, d_model, d_ff];
- shared experts: ``shared_expert.*`` and ``shared_expert_gate.weight`` [1, d_model] (Qwen2-MoE),
  ``shared_experts.*`` (DeepSeek), each with ``gate_proj`` / ``up_proj`` / ``down_proj``.

The sizes come from the tensors; the routing settings from ``config``, the model's ``config.json`` as a dict
(``num_experts_per_tok``, ``n_group``, ``topk_group``, ``routed_scaling_factor``, ``norm_topk_prob``), else from the
preset's published ones. A Linear weight is ``[out, in]``; the library stores ``x @ W`` layouts, so each is
transposed on the way in. Nothing is downloaded: read a checkpoint with ``safetensors`` yourself.
"""

import torch

from .checks import check_choice
from .layer import MoELayer
from .presets import PRESETS, preset_config

LOADABLE = ("switch", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3")  # gshard: no checkpoint
CONFIG_KEYS = {  # config.json key -> MoEConfig field
    "num_experts_per_tok": "k",
    "n_group": "n_groups",
    "topk_group": "topk_groups",
    "routed_scaling_factor": "routed_scaling_factor",
    "norm_topk_prob": "renormalize",
}
# one expert's gate, up and down projections, by naming
EXPERT_NAMES = {"switch": ("wi", None, "wo"), "mixtral": ("w1", "w3", "w2")}
GLU_NAMES = ("gate_proj", "up_proj", "down_proj")


def load_hf_block(name: str, state_dict: dict, config: dict | None = None, **overrides) -> MoELayer:
    """The MoE block of preset ``name`` with the weights of ``state_dict`` (see the module); ``overrides``: other
    :class:`~moe_course.config.MoEConfig` fields (``backend="triton"``, ``capacity_factor=None``)."""
    check_choice("name", name, LOADABLE)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError("state_dict must be a dict of tensors (one MoE block's, keys relative to the block)")
    gate = _take(state_dict, "router.classifier.weight" if name == "switch" else "gate.weight")
    w1, w2 = _experts(name, state_dict, gate.shape[0])
    shared = _shared(state_dict)
    sizes = dict(d_model=gate.shape[1], d_ff=w2.shape[1], E=gate.shape[0])
    sizes |= _shared_sizes(name, shared, sizes["d_ff"])
    from_config = {CONFIG_KEYS[key]: value for key, value in (config or {}).items() if key in CONFIG_KEYS}
    published = {
        key: PRESETS[name].sizes[key] for key in ("k", "n_groups", "topk_groups") if key in PRESETS[name].sizes
    }
    layer = MoELayer(preset_config(name, **{**published, **sizes, **from_config, **overrides}))
    with torch.no_grad():
        layer.router.gate.weight.copy_(gate)
        if "gate.e_score_correction_bias" in state_dict:
            layer.router.bias.copy_(state_dict["gate.e_score_correction_bias"])
        layer.experts.w1.copy_(w1)
        layer.experts.w2.copy_(w2)
        if shared:
            layer.shared.w1.copy_(torch.cat([shared["gate"].T, shared["up"].T], dim=1))
            layer.shared.w2.copy_(shared["down"].T)
            if layer.shared.gate is not None:
                layer.shared.gate.weight.copy_(_take(state_dict, "shared_expert_gate.weight"))
    return layer


def _take(state_dict: dict, key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"state_dict has no {key!r} (keys: {sorted(state_dict)[:8]}...)")
    return state_dict[key]


def _experts(name: str, state_dict: dict, E: int) -> tuple:
    """Stacked ``w1: [E, d_model, 2·d_ff or d_ff]``, ``w2: [E, d_ff, d_model]`` from per-expert or fused weights."""
    if "experts.gate_up_proj" in state_dict:
        return state_dict["experts.gate_up_proj"].transpose(1, 2), _take(state_dict, "experts.down_proj").transpose(
            1, 2
        )
    gate_name, up_name, down_name = EXPERT_NAMES.get(name, GLU_NAMES)
    prefix = "experts.expert_{e}." if name == "switch" else "experts.{e}."
    w1, w2 = [], []
    for e in range(E):
        gate, *up = [_take(state_dict, f"{prefix.format(e=e)}{proj}.weight") for proj in (gate_name, up_name) if proj]
        w1.append(torch.cat([gate.T, *(w.T for w in up)], dim=1))
        w2.append(_take(state_dict, f"{prefix.format(e=e)}{down_name}.weight").T)
    return torch.stack(w1), torch.stack(w2)


def _shared(state_dict: dict) -> dict:
    """``{"gate", "up", "down"}`` weights of the shared expert(s), if the block has any."""
    for prefix in ("shared_expert.", "shared_experts."):
        if any(key.startswith(prefix) for key in state_dict):
            return {part: _take(state_dict, f"{prefix}{part}_proj.weight") for part in ("gate", "up", "down")}
    return {}


def _shared_sizes(name: str, shared: dict, d_ff: int) -> dict:
    """Qwen2-MoE: one shared expert of its own width; DeepSeek: ``n_shared`` experts of ``d_ff``, one FFN."""
    if not shared:
        return {}
    width = shared["down"].shape[1]
    if name == "qwen2_moe":
        return dict(n_shared=1, shared_d_ff=width)
    if width % d_ff:
        raise ValueError(f"the shared experts' width {width} must be a multiple of d_ff={d_ff} (n_shared experts)")
    return dict(n_shared=width // d_ff)


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    """The entries of a whole model's ``state_dict`` under ``prefix`` (e.g. ``"model.layers.3.mlp."``), with the
    prefix removed: one block's state dict for :func:`load_hf_block`."""
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
