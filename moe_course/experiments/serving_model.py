"""Lesson 08's model: the tiny language model with 4 MoE layers (so that three pairs of consecutive layers can be
compared), trained once and shipped, so that the serving lesson starts from trained weights in seconds.

``python -m moe_course.experiments serving_model`` writes ``data/results/serving_model.json`` (the training curve,
the settings, what made it) and ``serving_model.pt`` beside it (the weights); :func:`load_serving_model` reads both.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checks import check_positive_int
from ..model import TinyLM, TinyLMConfig
from ..train import TrainConfig, check_seed, train
from .results import RESULTS, read_results, read_tensors
from .scaling import BLOCK, corpus_ids


@dataclass(frozen=True)
class ServingModelSettings:
    """A ``n_layers``-layer TinyLM with the course's MoE block, trained ``steps`` steps from ``seed``."""

    n_layers: int = 4
    steps: int = 300
    seed: int = 0

    def __post_init__(self):
        check_positive_int("n_layers", self.n_layers)
        check_positive_int("steps", self.steps)
        check_seed("seed", self.seed)


QUICK = ServingModelSettings(steps=5)


def model_config(vocab_size: int, settings: ServingModelSettings) -> TinyLMConfig:
    return TinyLMConfig(vocab_size, n_layers=settings.n_layers, moe=BLOCK)


def run_serving_model(settings: ServingModelSettings = ServingModelSettings(), jobs: int = 1) -> tuple:
    """Train the model -> (results: its training curve, timing, tensors: its weights). ``jobs`` is accepted for
    the command line's sake: there is one run."""
    if not isinstance(settings, ServingModelSettings):
        raise ValueError(f"settings must be a ServingModelSettings, got {type(settings).__name__}")
    check_positive_int("jobs", jobs)
    tokenizer, train_ids, val_ids = corpus_ids()
    torch.manual_seed(settings.seed)
    model = TinyLM(model_config(tokenizer.vocab_size, settings))
    start = time.perf_counter()
    h = train(model, train_ids, val_ids, TrainConfig(steps=settings.steps, seed=settings.seed, progress=False))
    results = {"params": sum(p.numel() for p in model.parameters()), "loss": h.loss, "val_loss": h.val_loss}
    return results, {"total": time.perf_counter() - start}, model.state_dict()


def load_serving_model(path: Path = RESULTS / "serving_model.json") -> tuple:
    """The trained model, in eval mode, and its results file -> (model, the whole file as a dict)."""
    payload = read_results(path)
    tokenizer, _, _ = corpus_ids()
    settings = ServingModelSettings(**payload["settings"])
    model = TinyLM(model_config(tokenizer.vocab_size, settings))
    model.load_state_dict(read_tensors(path))
    return model.eval(), payload
