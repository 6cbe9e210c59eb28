"""Train the tiny language model, with a choice of load balancing, and record what the routers do."""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checks import check_bool, check_choice, check_ids, check_non_negative_int, check_number, check_positive_int
from .env import THREADS, torch_threads
from .load import router_entropy
from .losses import sequence_aux_loss, switch_aux_loss, update_bias, z_loss
from .model import TinyLM
from .text import get_batch

BALANCING = ("none", "aux", "seq_aux", "z+aux", "bias")


def check_seed(name: str, seed) -> int:
    """A seed torch takes: an int in [0, 2**64)."""
    if check_non_negative_int(name, seed) >= 2**64:
        raise ValueError(f"{name} must be below 2**64, got {seed}")
    return seed


def check_model_and_ids(model, **ids) -> None:
    """``model`` is a :class:`~moe_course.model.TinyLM` and every keyword a 1-D tensor of its token ids, longer
    than its ``seq_len`` (a batch takes windows of seq_len + 1 tokens)."""
    if not isinstance(model, TinyLM):
        raise ValueError(f"model must be a TinyLM, got {type(model).__name__}")
    c = model.config
    for name, tokens in ids.items():
        check_ids(name, tokens, ("n",), "int32 or int64", c.vocab_size, "vocab_size")
        if len(tokens) <= c.seq_len:
            raise ValueError(f"{name} must hold more than the model's seq_len={c.seq_len} tokens, got {len(tokens)}")


@dataclass
class TrainConfig:
    """``balance``: ``"none"``; ``"aux"`` adds ``aux_weight`` × the Switch loss; ``"seq_aux"`` its per-sequence
    variant; ``"z+aux"`` adds ``z_weight`` × the z-loss too; ``"bias"`` moves each router's selection bias by
    ``bias_gamma`` after every step (auxiliary-loss-free). Losses are averaged over the MoE layers. The validation
    loss is measured on ``eval_batches`` batches after the last step, and with ``eval_every`` > 0 also before the
    first step and every ``eval_every`` steps."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0
    balance: str = "none"
    aux_weight: float = 0.01
    z_weight: float = 0.001
    bias_gamma: float = 0.001
    eval_batches: int = 8
    eval_every: int = 0
    progress: bool = True

    def __post_init__(self):
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size)
        check_number("lr", self.lr, positive=True)
        check_seed("seed", self.seed)
        check_choice("balance", self.balance, BALANCING)
        for name in ("aux_weight", "z_weight", "bias_gamma"):
            check_number(name, getattr(self, name))
        check_positive_int("eval_batches", self.eval_batches)
        check_non_negative_int("eval_every", self.eval_every)
        check_bool("progress", self.progress)


@dataclass
class History:
    """Per step: ``loss`` (language-model loss), ``aux_loss`` and ``z_loss`` (mean over MoE layers, whether or
    not they were trained on), and per MoE layer ``counts`` [E] (pairs each expert processed), ``entropy`` and
    ``dropped`` (pairs dropped by a capacity limit). ``val_loss`` is measured after the last step; ``evals`` holds
    the losses measured before the first step, every ``eval_every`` steps and at the end: ``evals["step"]``,
    ``evals["val"]`` and one list per watched token stream."""

    loss: list = field(default_factory=list)
    aux_loss: list = field(default_factory=list)
    z_loss: list = field(default_factory=list)
    counts: list = field(default_factory=list)
    entropy: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    val_loss: float = float("nan")
    evals: dict = field(default_factory=dict)

    def counts_tensor(self) -> torch.Tensor:
        """The per-expert counts as one tensor [steps, layers, E]."""
        return torch.stack([torch.stack(step) for step in self.counts])


def balancing_losses(model: TinyLM, seq_len: int, sequence_wise: bool = False) -> dict:
    """Switch and z losses of the last forward pass, averaged over the MoE layers, and with ``sequence_wise``
    the per-sequence Switch loss (``"seq_aux"``) too."""
    check_model_and_ids(model)
    routings = [layer.last_routing for layer in model.moe_layers()]
    if not routings or any(r is None for r in routings):
        raise ValueError("model must have MoE layers that have run a forward pass")
    losses = {
        "aux": torch.stack([switch_aux_loss(r.probs, r.indices) for r in routings]).mean(),
        "z": torch.stack([z_loss(r.logits) for r in routings]).mean(),
    }
    if sequence_wise:
        losses["seq_aux"] = torch.stack([sequence_aux_loss(r.probs, r.indices, seq_len) for r in routings]).mean()
    return losses


@torch_threads(THREADS)
@torch.no_grad()
def evaluate(model: TinyLM, ids: torch.Tensor, batch_size: int, n_batches: int, seed: int = 0) -> float:
    """Mean next-token cross-entropy over ``n_batches`` random batches of ``ids`` (the same ones for a seed)."""
    check_model_and_ids(model, ids=ids)
    check_positive_int("n_batches", n_batches)
    check_seed("seed", seed)
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n_batches):
        x, y = get_batch(ids, batch_size, model.config.seq_len, g)
        losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    model.train(was_training)
    return sum(losses) / len(losses)


@torch_threads(THREADS)
def train(
    model: TinyLM, train_ids: torch.Tensor, val_ids: torch.Tensor, config: TrainConfig, watch: dict | None = None
) -> History:
    """AdamW on random batches of ``train_ids``; the same seed gives the same history. ``watch``: more token
    streams, by name, whose loss is measured whenever the validation loss is (``history.evals[name]``); measuring
    changes nothing in the training.

    Stops with a ``FloatingPointError`` at the first step whose loss is not finite (NaN or inf), before that step
    changes the model: lower ``lr`` (or the balancing weights) and train again."""
    check_model_and_ids(model, train_ids=train_ids, val_ids=val_ids)
    watch = {} if watch is None else watch
    if not isinstance(watch, dict) or "step" in watch or "val" in watch:
        raise ValueError("watch must be a dict of token streams by name (other than 'step' and 'val'), or None")
    check_model_and_ids(model, **{f"watch[{name!r}]": ids for name, ids in watch.items()})
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    c = config
    if c.balance != "none" and not model.moe_layers():
        raise ValueError(f"balance={c.balance!r} needs a model with MoE layers")
    torch.manual_seed(c.seed)
    g = torch.Generator().manual_seed(c.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr)
    history = History()
    if c.eval_every:  # where the curves start
        record_evals(history, 0, model, dict(val=val_ids, **watch), c)
    model.train()
    for step in tqdm(range(1, c.steps + 1), disable=not c.progress, desc=f"training ({c.balance})"):
        x, y = get_batch(train_ids, c.batch_size, model.config.seq_len, g)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        total = loss
        if model.moe_layers():
            extra = balancing_losses(model, model.config.seq_len, sequence_wise=c.balance == "seq_aux")
            if c.balance in ("aux", "z+aux"):
                total = total + c.aux_weight * extra["aux"]
            if c.balance == "seq_aux":
                total = total + c.aux_weight * extra["seq_aux"]
            if c.balance == "z+aux":
                total = total + c.z_weight * extra["z"]
            history.aux_loss.append(extra["aux"].item())
            history.z_loss.append(extra["z"].item())
        value = total.item()
        if not math.isfinite(value):
            raise FloatingPointError(
                f"the loss became non-finite ({value}) at step {step} of {c.steps}, which did not change the model: "
                f"lower lr={c.lr} (or the balancing weights) and train again"
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        layers = model.moe_layers()
        if c.balance == "bias":
            for layer in layers:
                update_bias(layer.router.bias, layer.last_stats.counts, c.bias_gamma)
        history.loss.append(loss.item())
        history.counts.append([layer.last_stats.counts for layer in layers])
        history.entropy.append([router_entropy(layer.last_routing.probs.detach()) for layer in layers])
        history.dropped.append([layer.last_stats.dropped_pairs for layer in layers])
        if step == c.steps or (c.eval_every and step % c.eval_every == 0):
            record_evals(history, step, model, dict(val=val_ids, **watch), c)
    history.val_loss = history.evals["val"][-1]
    return history


def record_evals(history: History, step: int, model: TinyLM, streams: dict, c: TrainConfig) -> None:
    """Append ``step`` and the loss on each stream (the same batches every time) to ``history.evals``."""
    history.evals.setdefault("step", []).append(step)
    for name, ids in streams.items():
        history.evals.setdefault(name, []).append(evaluate(model, ids, c.batch_size, c.eval_batches))
