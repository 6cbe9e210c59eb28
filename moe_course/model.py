"""A tiny decoder-only transformer whose FFNs are dense or MoE: the course's language model to experiment on."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_choice, check_ids, check_positive_int
from .config import MoEConfig
from .experts import FFN
from .flops import ModelConfig
from .layer import MoELayer


@dataclass(frozen=True)
class TinyLMConfig:
    """Sizes of the model. ``moe`` is the configuration of every block's MoE FFN (d_model, d_ff, E, k, router, ...,
    :class:`~moe_course.config.MoEConfig`); with ``ffn="dense"`` each block has one dense FFN of ``moe``'s
    ``d_ff`` and activation instead."""

    vocab_size: int
    seq_len: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn: str = "moe"
    moe: MoEConfig = MoEConfig(d_model=128, d_ff=128)

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "n_layers", "n_heads"):
            check_positive_int(name, getattr(self, name))
        check_choice("ffn", self.ffn, ("dense", "moe"))
        if not isinstance(self.moe, MoEConfig):
            raise ValueError(f"moe must be an MoEConfig, got {type(self.moe).__name__}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model={self.d_model}, got {self.n_heads}")

    @property
    def d_model(self) -> int:
        return self.moe.d_model

    def model_config(self) -> ModelConfig:
        """This model for the FLOP accounting (:func:`moe_course.flops.count_model_params`): full multi-head
        attention, tied embeddings, learned positions; a dense model counts as E = k = 1."""
        m = self.moe
        moe = self.ffn == "moe"
        E, k, s = (m.E, m.k, m.n_shared) if moe else (1, 1, 0)
        shared = dict(shared_d_ff=m.shared_d_ff, shared_gate=m.shared_gate) if moe else {}
        return ModelConfig(
            vocab_size=self.vocab_size, d_model=m.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_heads, d_ff=m.d_ff, E=E, k=k, s=s, **shared, gated=m.activation == "swiglu",
            tie_embeddings=True, n_positions=self.seq_len, router_gates=2 if m.router == "noisy_topk" else 1,
        )  # fmt: skip


class KVCache:
    """The keys and values every layer computed for the positions seen so far, so that decoding a new token attends to
    them without recomputing them: per layer ``[B, n_heads, S_past, head_dim]`` each. ``length`` = S_past."""

    def __init__(self, n_layers: int):
        self.keys: list = [None] * n_layers
        self.values: list = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple:
        """Append the new positions' k, v ``[B, n_heads, S_new, head_dim]`` to ``layer``'s; return all of them."""
        if self.keys[layer] is not None:
            k, v = torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x: [B, S, d_model] -> [B, S, d_model]; each position attends to itself and earlier ones, those of
        ``cache`` included (the new keys and values are added to it, as ``layer``'s)."""
        B, S, d = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        past = k.shape[2] - S
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new position i (absolute past + i) sees keys 0 .. past + i
            visible = torch.ones(S, past + S, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        return self.out(y.transpose(1, 2).reshape(B, S, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: TinyLMConfig, exchange=None):
        super().__init__()
        c, m = config, config.moe
        self.norm1, self.norm2 = nn.RMSNorm(m.d_model), nn.RMSNorm(m.d_model)
        self.attn = CausalSelfAttention(m.d_model, c.n_heads)
        self.ffn = FFN(m.d_model, m.d_ff, m.activation) if c.ffn == "dense" else MoELayer(m, exchange)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache, layer)
        return x + self.ffn(self.norm2(x))


class TinyLM(nn.Module):
    """Token and position embeddings, ``n_layers`` blocks, a final norm, and an LM head tied to the embedding.
    ``exchange``: where the MoE layers' experts live (see :class:`~moe_course.layer.MoELayer`; all here by
    default)."""

    def __init__(self, config: TinyLMConfig, exchange=None):
        super().__init__()
        if not isinstance(config, TinyLMConfig):
            raise ValueError(f"config must be a TinyLMConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config, exchange) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model)
        # small embeddings (GPT-2's 0.02): the tied LM head then starts near uniform over the vocabulary
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx: [B, S] token ids in [0, vocab_size), on the model's device -> logits [B, S, vocab_size].

        With a ``cache`` (:meth:`new_cache`), idx are the positions after those the cache holds (prefill the prompt,
        then one token at a time): their logits equal the full forward's on the whole sequence (with dropless
        token-choice routers; a capacity limit or expert choice decides over the tokens of each call), and the cache
        grows by S. Positions are learned, so the cache and idx together hold at most ``seq_len`` tokens."""
        check_ids("idx", idx, ("B", "S"), "int32 or int64", self.config.vocab_size, "vocab_size")
        if cache is not None and not isinstance(cache, KVCache):
            raise ValueError(f"cache must be a KVCache (model.new_cache()) or None, got {type(cache).__name__}")
        start = 0 if cache is None else cache.length
        if start + idx.shape[1] > self.config.seq_len:
            raise ValueError(
                f"idx must have shape [B, S] with {start} cached + S <= seq_len={self.config.seq_len} positions, "
                f"got {tuple(idx.shape)}"
            )
        if idx.device != self.tok_emb.weight.device:
            raise ValueError(f"idx must be on the model's device {self.tok_emb.weight.device}, got {idx.device}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(start, start + idx.shape[1], device=idx.device))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        return self.norm(x) @ self.tok_emb.weight.T

    def new_cache(self) -> KVCache:
        """An empty :class:`KVCache` for incremental decoding with this model."""
        return KVCache(self.config.n_layers)

    def moe_layers(self) -> list:
        """The MoE layers, first block first (empty for a dense model)."""
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoELayer)]
