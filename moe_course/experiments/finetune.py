"""Fine-tuning friction: a trained model tuned on a narrow slice of the data, one kind of text and little of it.

The claim under test: "sparse models overfit small datasets more readily, and balanced routing can degrade when the
data distribution narrows". A slice is the text of one kind (:data:`~moe_course.text.TEXT_KINDS`) from the training
part of the corpus, cut to a few thousand characters; the model is then watched on three streams: the slice it
trains on, the held-out text of the same kind, and the held-out text of the other kinds. For an MoE, the per-expert
load (all k choices of every token) on the held-out streams is measured before and after.
"""

from dataclasses import replace

import torch

from ..checks import check_choice, check_positive_int
from ..load import balance_coefficient, expert_load
from ..model import TinyLM
from ..text import TEXT_KINDS
from ..train import TrainConfig, train
from .specialization import routed_experts


def slice_streams(train_ids, train_kinds, val_ids, val_kinds, kind: str, chars: int) -> dict:
    """The streams of a fine-tuning run on ``kind``: ``"slice"``, its first ``chars`` training characters;
    ``"held_out"``, all held-out text of that kind; ``"other"``, the held-out text of the other kinds. Each is the
    concatenation of its blocks. ids: [n] token ids; kinds: [n] their kind (:func:`~moe_course.text.text_kinds`)."""
    check_choice("kind", kind, TEXT_KINDS)
    check_positive_int("chars", chars)
    label = TEXT_KINDS.index(kind)
    return {
        "slice": train_ids[train_kinds == label][:chars],
        "held_out": val_ids[val_kinds == label],
        "other": val_ids[val_kinds != label],
    }


def load_on(model: TinyLM, ids: torch.Tensor) -> torch.Tensor:
    """[L, E] (token, expert) pairs per expert of each MoE layer on the windows of ``ids``."""
    indices, _ = routed_experts(model, ids)  # [L, N, k]
    return torch.stack([expert_load(layer, model.config.moe.E) for layer in indices])


def fine_tune(model: TinyLM, streams: dict, config: TrainConfig) -> dict:
    """Fine-tune ``model`` in place on ``streams["slice"]`` (balanced as ``config`` says), measuring the loss on
    every stream each ``config.eval_every`` steps -> the curves, and for an MoE the load on the held-out streams
    before and after, with its balance coefficient per layer."""
    moe = bool(model.moe_layers())
    loads = {"before": {name: load_on(model, streams[name]) for name in ("held_out", "other")}} if moe else {}
    history = train(model, streams["slice"], streams["held_out"], replace(config, progress=False), {
        "slice": streams["slice"],
        "other": streams["other"],
    })  # fmt: skip
    record = {"steps": history.evals["step"], **{name: history.evals[name] for name in ("slice", "val", "other")}}
    record["held_out"] = record.pop("val")
    if moe:
        loads["after"] = {name: load_on(model, streams[name]) for name in ("held_out", "other")}
        record["load"] = {
            when: {name: {"counts": counts.tolist(), "balance": [balance_coefficient(c) for c in counts]}
                   for name, counts in by_stream.items()}
            for when, by_stream in loads.items()
        }  # fmt: skip
    return record
