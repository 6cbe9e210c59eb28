"""Lessons 03 and 04's training runs: the tiny language model trained without balancing, with each balancing
method of lesson 04, and with expert choice routing, from the same initial weights on the same batches.

Each run records per step the language-model loss, the Switch and z losses, every MoE layer's router entropy and
per-expert counts, then the validation loss; and, on held-out sequences, how each layer routes them: the batch- and
sequence-level Switch losses and how many experts each token got. ``python -m moe_course.experiments balancing``
writes ``data/results/balancing.json``, which the lessons read (a lesson can also call :func:`run_balancing`).
"""

import time
from dataclasses import dataclass

import torch

from ..checks import check_positive_int
from ..config import MoEConfig
from ..losses import sequence_aux_loss, switch_aux_loss
from ..model import TinyLM, TinyLMConfig
from ..text import get_batch
from ..train import TrainConfig, check_seed, train
from .pool import run_all
from .scaling import BLOCK, corpus_ids

# name -> (the MoE block's router, the TrainConfig options); lesson 03 reads "none" and "expert choice"
RUNS = {
    "none": ("topk", dict(balance="none")),
    "aux 0.01": ("topk", dict(balance="aux", aux_weight=0.01)),
    "z+aux": ("topk", dict(balance="z+aux", aux_weight=0.01, z_weight=0.001)),
    "bias": ("topk", dict(balance="bias", bias_gamma=0.001)),
    "aux 0.1": ("topk", dict(balance="aux", aux_weight=0.1)),
    "expert choice": ("expert_choice", dict(balance="none")),
}
MAX_EXPERTS = 4  # held-out tokens are counted by how many experts they got: 0, 1, ..., 4 or more


@dataclass(frozen=True)
class BalancingSettings:
    """``steps`` of batches of ``batch_size`` windows from ``seed`` (initial weights and batches, the same for every
    run); the routing is then read on ``held_out`` sequences of the held-out text drawn with ``held_out_seed``."""

    steps: int = 300
    batch_size: int = 16
    seed: int = 0
    held_out: int = 16
    held_out_seed: int = 1

    def __post_init__(self):
        for name in ("steps", "batch_size", "held_out"):
            check_positive_int(name, getattr(self, name))
        check_seed("seed", self.seed)
        check_seed("held_out_seed", self.held_out_seed)


QUICK = BalancingSettings(steps=5, batch_size=4, held_out=2)


def model_config(vocab_size: int, router: str) -> TinyLMConfig:
    """The lessons' 2-layer TinyLM with the course's MoE block (E = 8, k = 2) and ``router``."""
    return TinyLMConfig(vocab_size, moe=MoEConfig(BLOCK.d_model, BLOCK.d_ff, router=router))


@torch.no_grad()
def held_out_routing(model: TinyLM, x: torch.Tensor) -> dict:
    """Per MoE layer, on the held-out windows ``x`` [B, seq_len]: the Switch loss over the batch and per sequence,
    and how many held-out tokens got 0, 1, ..., MAX_EXPERTS or more experts."""
    model.eval()
    model(x)
    result = {"switch_aux": [], "sequence_aux": [], "experts_per_token": []}
    for layer in model.moe_layers():
        r = layer.last_routing
        result["switch_aux"].append(switch_aux_loss(r.probs, r.indices).item())
        result["sequence_aux"].append(sequence_aux_loss(r.probs, r.indices, model.config.seq_len).item())
        per_token = r.kept().sum(dim=1).clamp(max=MAX_EXPERTS)
        result["experts_per_token"].append(torch.bincount(per_token, minlength=MAX_EXPERTS + 1).tolist())
    return result


def rounded(values: list) -> list:
    """``values`` (numbers, or lists of them) to 5 decimals."""
    return [rounded(v) if isinstance(v, list) else round(v, 5) for v in values]


def train_run(job: tuple) -> dict:
    """One run in its own process: (name, settings) -> its record."""
    name, settings = job
    tokenizer, train_ids, val_ids = corpus_ids()
    router, options = RUNS[name]
    config = TrainConfig(steps=settings.steps, batch_size=settings.batch_size, seed=settings.seed, progress=False,
                         **options)  # fmt: skip
    torch.manual_seed(settings.seed)  # the same initial weights for every run
    model = TinyLM(model_config(tokenizer.vocab_size, router))
    start = time.perf_counter()
    h = train(model, train_ids, val_ids, config)
    seconds = time.perf_counter() - start
    g = torch.Generator().manual_seed(settings.held_out_seed)
    x, _ = get_batch(val_ids, settings.held_out, model.config.seq_len, g)
    return {
        "name": name,
        "router": router,
        **options,
        "params": sum(p.numel() for p in model.parameters()),
        # the per-step curves to 5 decimals (they are plotted); the validation loss exactly
        "loss": rounded(h.loss),
        "aux_loss": rounded(h.aux_loss),
        "z_loss": rounded(h.z_loss),
        "entropy": rounded(h.entropy),  # [steps][layers]
        "counts": h.counts_tensor().tolist(),  # [steps][layers][E]
        "val_loss": h.val_loss,
        "held_out": held_out_routing(model, x),
        "seconds": seconds,
    }


def run_balancing(settings: BalancingSettings = BalancingSettings(), jobs: int = 1) -> tuple:
    """Every run of ``RUNS`` -> (results: {"runs": {name: record}}, timing: seconds per run and in all)."""
    if not isinstance(settings, BalancingSettings):
        raise ValueError(f"settings must be a BalancingSettings, got {type(settings).__name__}")
    start = time.perf_counter()
    records = run_all(train_run, [(name, settings) for name in RUNS], jobs)
    timing = {record["name"]: record.pop("seconds") for record in records}
    timing["total"] = time.perf_counter() - start
    return {"runs": {record["name"]: record for record in records}}, timing
