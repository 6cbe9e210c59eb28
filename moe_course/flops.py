"""Parameter and FLOP accounting for dense FFNs, MoE FFNs and whole models.

Conventions (as in the course text): a matrix multiply of a ``[1, m]`` row by an ``[m, n]`` weight costs
``2·m·n`` FLOPs (one multiply and one add per weight), so a layer costs ``2 × params`` FLOPs per token.
Biases, norms and the activation function are ignored in the FFN rows; the whole-model count includes norms.
"""

from dataclasses import dataclass

from .checks import check_non_negative_int, check_number, check_positive_int, check_top_k
from .config import MoEConfig


def ffn_params(d_model: int, d_ff: int, gated: bool = False) -> int:
    """Weights of one FFN: ``2·d_model·d_ff`` (up, down), or ``3·d_model·d_ff`` when ``gated`` (SwiGLU)."""
    check_positive_int("d_model", d_model)
    check_positive_int("d_ff", d_ff)
    return (3 if gated else 2) * d_model * d_ff


def ffn_flops_per_token(d_model: int, d_ff: int, gated: bool = False) -> int:
    """Forward FLOPs one token spends in one FFN: 2 per weight."""
    return 2 * ffn_params(d_model, d_ff, gated)


@dataclass(frozen=True)
class MoECost:
    """One row of the accounting table for an MoE FFN with E routed experts, top-k, and s shared experts."""

    E: int
    k: int
    s: int
    stored_params: int  # (E + s) experts held in memory
    flops_per_token: int  # (k + s) experts run per token, 2 FLOPs per weight
    active_params: int  # (k + s) experts' weights touched per token

    @property
    def capacity_per_flop(self) -> float:
        """Stored over active parameters: E/k when there are no shared experts."""
        return self.stored_params / self.active_params


def moe_ffn_cost(d_model: int, d_ff: int, E: int, k: int, s: int = 0, gated: bool = False) -> MoECost:
    """Stored parameters, FLOPs per token and active parameters of one MoE FFN (router excluded).

    Each of the E routed and s shared experts is an FFN of shape ``d_model × d_ff``; a token runs its k chosen
    experts plus all s shared ones.
    """
    check_top_k(k, E)
    check_non_negative_int("s", s)
    one = ffn_params(d_model, d_ff, gated)
    return MoECost(
        E=E, k=k, s=s, stored_params=(E + s) * one, flops_per_token=2 * (k + s) * one, active_params=(k + s) * one
    )


def shared_params(d_model: int, width: int, gated: bool, shared_gate: bool) -> int:
    """Weights of an MoE layer's shared FFN of hidden ``width`` (0: none), with its ``d_model → 1`` gate if any."""
    return (ffn_params(d_model, width, gated) if width else 0) + (d_model if shared_gate else 0)


def moe_layer_cost(config: MoEConfig) -> MoECost:
    """:func:`moe_ffn_cost` of an MoE layer's configuration (SwiGLU experts are gated), its shared FFN counted at
    its own width (``config.shared_width``) with its gate."""
    if not isinstance(config, MoEConfig):
        raise ValueError(f"config must be an MoEConfig, got {type(config).__name__}")
    c = config
    gated = c.activation == "swiglu"
    routed = moe_ffn_cost(c.d_model, c.d_ff, c.E, c.k, 0, gated)
    shared = shared_params(c.d_model, c.shared_width, gated, c.shared_gate)
    return MoECost(
        E=c.E,
        k=c.k,
        s=c.n_shared,
        stored_params=routed.stored_params + shared,
        flops_per_token=routed.flops_per_token + 2 * shared,
        active_params=routed.active_params + shared,
    )


def format_cost_table(d_model: int, d_ff: int, configs, gated: bool = False) -> str:
    """The course's table: a dense row, then one row per ``(E, k)`` or ``(E, k, s)`` in ``configs``."""
    one = ffn_params(d_model, d_ff, gated)
    lines = [f"{'config':<22}{'stored':>18}{'FLOPs/token':>18}{'active':>16}{'stored/active':>15}"]
    lines.append(f"{'dense':<22}{one:>18,}{2 * one:>18,}{one:>16,}{1.0:>15.1f}")
    for config in configs:
        if not isinstance(config, tuple) or len(config) not in (2, 3):
            raise ValueError(f"configs must hold (E, k) or (E, k, s) tuples, got {config!r}")
        c = moe_ffn_cost(d_model, d_ff, *config, gated=gated)
        name = f"E={c.E} top-{c.k}" + (f" +{c.s} shared" if c.s else "")
        lines.append(
            f"{name:<22}{c.stored_params:>18,}{c.flops_per_token:>18,}{c.active_params:>16,}{c.capacity_per_flop:>15.1f}"
        )
    return "\n".join(lines)


def ffn_share_of_layer(d_model: int, d_ff: int, gated: bool = False) -> float:
    """Fraction of a transformer layer's weights in its FFN, with full multi-head attention (4·d_model²)."""
    ffn = ffn_params(d_model, d_ff, gated)
    return ffn / (ffn + 4 * d_model * d_model)


def flop_matched_dense_d_ff(d_ff: int, k: int, s: int = 0) -> int:
    """Hidden size of the dense FFN that spends the same FLOPs per token as (k + s) experts of size d_ff."""
    check_positive_int("d_ff", d_ff)
    check_positive_int("k", k)
    check_non_negative_int("s", s)
    return (k + s) * d_ff


def param_matched_dense_d_ff(d_ff: int, E: int, s: int = 0) -> int:
    """Hidden size of the dense FFN that stores as many weights as (E + s) experts of size d_ff."""
    check_positive_int("d_ff", d_ff)
    check_positive_int("E", E)
    check_non_negative_int("s", s)
    return (E + s) * d_ff


def per_token_time(k: int, tau: float, c: float) -> float:
    """Time per token when each of its k experts costs compute ``c`` and communication ``tau``: k·(c + tau)."""
    check_positive_int("k", k)
    check_number("tau", tau)
    check_number("c", c)
    return k * (c + tau)


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer with MoE FFNs (set E=1, k=1 for a dense model).

    Attention uses grouped-query heads: ``n_heads`` query heads and ``n_kv_heads`` key/value heads of size
    ``head_dim`` (default ``d_model // n_heads``). Every layer has two RMSNorms; one more sits before the LM head.
    ``n_positions``: learned position embeddings (0 for rotary ones, which have no weights). ``router_gates``:
    ``d_model × E`` matrices per router (2 for noisy top-k's learned noise gate). The ``s`` shared experts are one
    FFN of width ``shared_d_ff`` (default ``s · d_ff``), with a ``d_model → 1`` gate if ``shared_gate``.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    E: int
    k: int
    s: int = 0
    shared_d_ff: int | None = None
    shared_gate: bool = False
    gated: bool = True
    tie_embeddings: bool = False
    head_dim: int | None = None
    n_positions: int = 0
    router_gates: int = 1

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
            check_positive_int(name, getattr(self, name))
        check_top_k(self.k, self.E)
        check_non_negative_int("s", self.s)
        if self.shared_d_ff is not None:
            check_positive_int("shared_d_ff", self.shared_d_ff)
        if not self.s and (self.shared_d_ff is not None or self.shared_gate):
            raise ValueError("shared_d_ff and shared_gate describe the shared experts: they need s >= 1")
        check_non_negative_int("n_positions", self.n_positions)
        check_positive_int("router_gates", self.router_gates)
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads must divide d_model when head_dim is not given, got {self.n_heads}, {self.d_model}"
            )
        if self.head_dim is not None:
            check_positive_int("head_dim", self.head_dim)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads must divide n_heads, got n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}"
            )


MIXTRAL_8X7B = ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336, E=8, k=2)


def count_model_params(config: ModelConfig) -> dict:
    """Parameters of a whole model, by part, with the ``total`` stored and the ``active`` per token.

    The router (``d_model × E`` per layer) is counted only for MoE models (E > 1).
    """
    c = config
    head_dim = c.head_dim or c.d_model // c.n_heads
    embedding = c.vocab_size * c.d_model
    lm_head = 0 if c.tie_embeddings else embedding
    attention = c.d_model * head_dim * (2 * c.n_heads + 2 * c.n_kv_heads)  # q and o, k and v
    norms = 2 * c.d_model
    router = c.router_gates * c.d_model * c.E if c.E > 1 else 0
    expert = ffn_params(c.d_model, c.d_ff, c.gated)
    shared = shared_params(c.d_model, c.shared_d_ff or c.s * c.d_ff, c.gated, c.shared_gate)
    per_layer_fixed = attention + norms + router
    parts = {
        "embedding": embedding,
        "positions": c.n_positions * c.d_model,
        "attention": c.n_layers * attention,
        "norms": c.n_layers * norms + c.d_model,
        "router": c.n_layers * router,
        "experts": c.n_layers * (c.E * expert + shared),
        "lm_head": lm_head,
    }
    parts["total"] = sum(parts.values())
    fixed = embedding + parts["positions"] + lm_head + c.d_model
    parts["active"] = fixed + c.n_layers * (per_layer_fixed + c.k * expert + shared)
    return parts


def forward_flops(config: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs of the whole model on one sequence of ``seq_len`` tokens with causal attention.

    Per token, 2 FLOPs per weight it multiplies: the attention projections, the router(s), its k experts and the
    shared ones, and the LM head (computed even when tied to the embedding; the embedding and position lookups and
    the norms multiply nothing). Attention itself, per layer and head: the token at position i scores its query
    against i + 1 keys and sums as many values, 2 · 2 · (i + 1) · head_dim FLOPs, so a sequence costs
    ``4 · n_heads · head_dim · S(S+1)/2`` per layer (the causal mask's zeros are not counted; softmax is ignored).
    """
    check_positive_int("seq_len", seq_len)
    c = config
    parts = count_model_params(c)
    multiplied = parts["active"] - parts["embedding"] - parts["positions"] - parts["norms"] - parts["lm_head"]
    multiplied += c.vocab_size * c.d_model  # the LM head, tied or not
    head_dim = c.head_dim or c.d_model // c.n_heads
    attention = c.n_layers * 4 * c.n_heads * head_dim * seq_len * (seq_len + 1) // 2
    return 2 * multiplied * seq_len + attention


def training_flops(config: ModelConfig, seq_len: int, sequences: int) -> int:
    """FLOPs of training on ``sequences`` sequences of ``seq_len`` tokens: the forward pass, and a backward pass that
    costs twice as much (the gradients of the activations and of the weights, each a product as large as the
    forward's), so 3 × :func:`forward_flops` per sequence."""
    check_non_negative_int("sequences", sequences)
    return 3 * forward_flops(config, seq_len) * sequences
