"""Expert FFNs: a dense FFN, and E experts stored as stacked weights so every backend can share them.

Three expert shapes, as in the papers:
- ``"relu"``:   y = ReLU(x W1) W2                     (T5-style MLP: Switch Transformer, GShard; 2·d_model·d_ff weights)
- ``"gelu"``:   y = GELU(x W1) W2                     (GPT-style MLP; 2·d_model·d_ff weights)
- ``"swiglu"``: y = (SiLU(x W_gate) * (x W_up)) W2    (Llama/Mixtral/Qwen/DeepSeek; 3·d_model·d_ff weights)
For SwiGLU the gate and up projections are stored side by side in one weight ``W1 = [W_gate | W_up]``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_choice, check_hidden, check_index, check_non_negative_int, check_positive_int

ACTIVATIONS = ("gelu", "relu", "swiglu")


def first_width(d_ff: int, activation: str) -> int:
    """Columns of the first projection W1: ``2·d_ff`` for SwiGLU (gate and up side by side), else ``d_ff``."""
    return 2 * d_ff if activation == "swiglu" else d_ff


def activate(h: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply the expert activation to the first projection ``h: [n, d_ff]`` (``[n, 2·d_ff]`` for SwiGLU)."""
    if activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if activation == "gelu":
        return F.gelu(h)
    if activation == "relu":
        return F.relu(h)
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")


def ffn(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, activation: str) -> torch.Tensor:
    """One FFN: x: [n, d_model], w1: [d_model, d_ff or 2·d_ff], w2: [d_ff, d_model] -> [n, d_model]; activation
    ``"gelu"``, ``"relu"`` or ``"swiglu"`` (:func:`activate` refuses any other name)."""
    return activate(x @ w1, activation) @ w2


def _init_(w: torch.Tensor, fan_in: int) -> None:
    """Uniform(±1/sqrt(fan_in)) like nn.Linear, so activations keep their scale."""
    bound = 1 / math.sqrt(fan_in)
    nn.init.uniform_(w, -bound, bound)


class FFN(nn.Module):
    """A dense FFN with weights ``w1: [d_model, d_ff(·2)]`` and ``w2: [d_ff, d_model]``."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "swiglu"):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        check_choice("activation", activation, ACTIVATIONS)
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        self.w1 = nn.Parameter(torch.empty(d_model, first_width(d_ff, activation)))
        self.w2 = nn.Parameter(torch.empty(d_ff, d_model))
        _init_(self.w1, d_model)
        _init_(self.w2, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d_model] -> [..., d_model]."""
        return ffn(x, self.w1, self.w2, self.activation)


class SharedExpert(FFN):
    """The always-on shared expert(s) of an MoE layer: an :class:`FFN` of any width that every token runs, its
    output multiplied per token by ``sigmoid(x · w_gate)`` when ``gated`` (Qwen2-MoE's ``shared_expert_gate``, a
    ``d_model → 1`` linear map without bias); ungated, it is the FFN (DeepSeek's ``shared_experts``)."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "swiglu", gated: bool = False):
        super().__init__(d_model, d_ff, activation)
        self.gate = nn.Linear(d_model, 1, bias=False) if gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d_model] -> [..., d_model]."""
        y = super().forward(x)
        return y if self.gate is None else torch.sigmoid(self.gate(x)) * y


class Experts(nn.Module):
    """E expert FFNs with stacked weights ``w1: [E, d_model, d_ff(·2)]`` and ``w2: [E, d_ff, d_model]``.

    Stacking keeps every expert's weights in two tensors, the layout grouped GEMMs and kernels read. ``first``:
    the global id of expert 0 here, when these E are one rank's shard of a larger set (expert parallelism).
    """

    def __init__(self, E: int, d_model: int, d_ff: int, activation: str = "swiglu", first: int = 0):
        super().__init__()
        check_positive_int("E", E)
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        check_choice("activation", activation, ACTIVATIONS)
        check_non_negative_int("first", first)
        self.E, self.d_model, self.d_ff, self.activation, self.first = E, d_model, d_ff, activation, first
        self.w1 = nn.Parameter(torch.empty(E, d_model, first_width(d_ff, activation)))
        self.w2 = nn.Parameter(torch.empty(E, d_ff, d_model))
        _init_(self.w1, d_model)
        _init_(self.w2, d_ff)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Run expert ``e`` (in ``[0, E)``) on its tokens x: [n, d_model] -> [n, d_model]. Readable, for one expert;
        a backend running many takes :meth:`unbound` once instead (indexing ``w1[e]`` per expert costs a backward
        pass that fills and adds a zero gradient the size of all E experts, per index)."""
        e = check_index("e", e, self.E, "E")
        check_hidden("x", x, self.d_model, like=self.w1)
        return ffn(x, self.w1[e], self.w2[e], self.activation)

    def unbound(self) -> list:
        """Every expert's (w1, w2) as views: one backward node for all E instead of one per expert."""
        return list(zip(self.w1.unbind(0), self.w2.unbind(0), strict=True))
