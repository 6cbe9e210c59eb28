"""A tiny decoder-only transformer whose FFNs are dense or MoE: the course's language model to experiment on."""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_choice, check_positive_int
from .experts import FFN
from .layer import MoELayer


@dataclass
class TinyLMConfig:
    """Sizes of the model. With ``ffn="dense"`` each block has one FFN of width ``d_ff``; with ``ffn="moe"`` it
    has E experts of width ``d_ff`` routed top-k by ``router`` (``moe_options`` go to :class:`MoELayer`:
    ``n_shared``, ``capacity_factor``, router options)."""

    vocab_size: int
    seq_len: int = 64
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    ffn: str = "moe"
    E: int = 8
    k: int = 2
    router: str = "topk"
    activation: str = "swiglu"
    moe_options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads", "d_ff"):
            check_positive_int(name, getattr(self, name))
        check_choice("ffn", self.ffn, ("dense", "moe"))
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model={self.d_model}, got {self.n_heads}")


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, S, d_model] -> [B, S, d_model]; each position attends to itself and earlier ones."""
        B, S, d = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, S, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: TinyLMConfig):
        super().__init__()
        c = config
        self.norm1, self.norm2 = nn.RMSNorm(c.d_model), nn.RMSNorm(c.d_model)
        self.attn = CausalSelfAttention(c.d_model, c.n_heads)
        if c.ffn == "dense":
            self.ffn = FFN(c.d_model, c.d_ff, c.activation)
        else:
            self.ffn = MoELayer(c.d_model, c.d_ff, c.E, c.k, c.activation, router=c.router, **c.moe_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class TinyLM(nn.Module):
    """Token and position embeddings, ``n_layers`` blocks, a final norm, and an LM head tied to the embedding."""

    def __init__(self, config: TinyLMConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model)
        # small embeddings (GPT-2's 0.02): the tied LM head then starts near uniform over the vocabulary
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: [B, S] token ids, S <= seq_len -> logits [B, S, vocab_size]."""
        if idx.dim() != 2 or idx.shape[1] > self.config.seq_len:
            raise ValueError(f"idx must have shape [B, S] with S <= {self.config.seq_len}, got {tuple(idx.shape)}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.tok_emb.weight.T

    def moe_layers(self) -> list:
        """The MoE layers, first block first (empty for a dense model)."""
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoELayer)]
