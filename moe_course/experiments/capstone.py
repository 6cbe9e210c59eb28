"""The capstone's five experiments in one run, written to one results file that lesson 09 reads.

1. equal compute: the three models of :mod:`.scaling` over several seeds;
2. what the experts of the seed-0 MoE learned (:mod:`.specialization`), on the held-out text;
3. its routing in bfloat16 against float32 (:mod:`.precision`), and that of the same MoE trained with the z-loss;
4. the seed-0 dense and MoE models fine-tuned on one narrow kind of text (:mod:`.finetune`);
5. the bill (:mod:`.bill`) of the three trained models and of Mixtral 8x7B.

Training runs are independent, so ``jobs`` > 1 trains that many at once, in separate processes: each uses one torch
thread (:data:`moe_course.env.THREADS`), so the numbers are the same whatever ``jobs`` is.
"""

import copy
import time
from dataclasses import asdict, dataclass, replace

import torch

from ..checks import check_choice, check_number, check_positive_int
from ..flops import MIXTRAL_8X7B
from ..losses import z_loss
from ..model import TinyLM, TinyLMConfig
from ..text import CHAR_CLASSES, TEXT_KINDS, char_classes, load_corpus, text_kinds, windows
from ..train import TrainConfig, check_seed
from .bill import bill
from .finetune import fine_tune, slice_streams
from .pool import run_all
from .precision import PARTS, router_inputs, routing_flips
from .scaling import BALANCE as SCALING_BALANCE
from .scaling import MODELS, corpus_ids, equal_compute_configs, train_model
from .specialization import routed_experts, specialization

BALANCE = SCALING_BALANCE | {"moe_z": "z+aux"}  # the same MoE trained with the z-loss too


@dataclass(frozen=True)
class CapstoneSettings:
    """Everything that decides the numbers. ``steps`` of batches of ``batch_size`` windows for every model, the
    validation loss every ``eval_every`` steps; ``shuffles`` shuffled-label trials; the router's gate scaled by each
    of ``scales`` (not powers of two: those change nothing in bfloat16); fine-tuning on ``finetune_chars``
    characters of ``finetune_kind`` text."""

    steps: int = 1500
    seeds: tuple = (0, 1, 2, 3, 4)
    batch_size: int = 16
    lr: float = 3e-3
    eval_every: int = 100
    eval_batches: int = 32
    shuffles: int = 20
    scales: tuple = (0.3, 1.0, 3.0, 10.0)
    finetune_kind: str = "arithmetic"
    finetune_chars: int = 4000
    finetune_steps: int = 300
    finetune_lr: float = 1e-3
    finetune_every: int = 25
    mixtral_context: int = 4096
    expert_parallel_ranks: int = 8

    def __post_init__(self):
        # checked before any training: a bad setting must not surface a quarter of an hour in
        if not isinstance(self.seeds, tuple) or not self.seeds:
            raise ValueError(f"seeds must be a non-empty tuple of seeds, got {self.seeds!r}")
        for seed in self.seeds:
            check_seed("seeds", seed)
        self.train_config()
        self.finetune_config()
        for name in ("shuffles", "finetune_chars", "mixtral_context", "expert_parallel_ranks"):
            check_positive_int(name, getattr(self, name))
        if not isinstance(self.scales, tuple) or not self.scales:
            raise ValueError(f"scales must be a non-empty tuple of gate scales, got {self.scales!r}")
        for scale in self.scales:
            check_number("scales", scale, positive=True)
        check_choice("finetune_kind", self.finetune_kind, TEXT_KINDS)

    def train_config(self) -> TrainConfig:
        return TrainConfig(self.steps, self.batch_size, self.lr, eval_every=self.eval_every,
                           eval_batches=self.eval_batches, progress=False)  # fmt: skip

    def finetune_config(self) -> TrainConfig:
        return TrainConfig(self.finetune_steps, self.batch_size, self.finetune_lr, seed=0,
                           eval_every=self.finetune_every, eval_batches=self.eval_batches, progress=False)  # fmt: skip


QUICK = CapstoneSettings(steps=20, seeds=(0, 1), eval_every=10, eval_batches=2, shuffles=3, finetune_steps=10,
                         finetune_every=5)  # fmt: skip


def _train_job(job: tuple) -> tuple:
    """One training run in its own process: (name, seed, settings) -> (record, state dict, seconds)."""
    name, seed, settings = job
    tokenizer, train_ids, val_ids = corpus_ids()
    config = equal_compute_configs(tokenizer.vocab_size)[name.removesuffix("_z")]
    start = time.perf_counter()
    train_config = replace(settings.train_config(), balance=BALANCE[name])
    model, record = train_model(name, config, seed, train_config, (train_ids, val_ids))
    return record, model.state_dict(), time.perf_counter() - start


def train_all(settings: CapstoneSettings, jobs: int) -> tuple:
    """Every model of the comparison for every seed, and the z-loss MoE for seed 0 -> (records, the seed-0
    state dicts by name, seconds per run)."""
    runs = [(name, seed, settings) for seed in settings.seeds for name in MODELS]
    runs.append(("moe_z", settings.seeds[0], settings))
    outcomes = run_all(_train_job, runs, jobs)
    first = settings.seeds[0]
    states, seconds = {}, {}
    for (name, seed, _), (_, state, spent) in zip(runs, outcomes, strict=True):
        seconds[f"{name} seed {seed}"] = spent
        if seed == first:
            states[name] = state
    return [record for record, _, _ in outcomes], states, seconds


def specialization_results(models: dict, val_ids, classes, kinds, settings: CapstoneSettings) -> dict:
    """For each model, per MoE layer, the top-1 expert against each token's character class, its kind of text, and
    the pair of both (from which what one adds to the other follows). An untrained model's routing already depends
    on the token it reads: compare the trained model with it. classes, kinds: [len(val_ids)] the labels of the
    held-out characters, cut from those of the whole corpus (its first block may be cut in two)."""
    both = [f"{c}/{k}" for c in CHAR_CLASSES for k in TEXT_KINDS]  # the pair: I(E; K | C) = I(E; C, K) - I(E; C)
    labellings = {
        "char_class": (classes, CHAR_CLASSES),
        "text_kind": (kinds, TEXT_KINDS),
        "class_and_kind": (classes * len(TEXT_KINDS) + kinds, both),
    }
    results = {}
    for model_name, model in models.items():
        indices, positions = routed_experts(model, val_ids)
        layers = [{} for _ in indices]
        top1, E = indices[..., 0], model.config.moe.E
        for name, (labels, names) in labellings.items():
            per_layer = specialization(top1, labels[positions], len(names), E, settings.shuffles, seed=0)
            for layer, result in zip(layers, per_layer, strict=True):
                layer[name] = {**asdict(result), "counts": result.counts.tolist(), "labels": list(names)}
        results[model_name] = layers
    return results


def precision_results(models: dict, val_ids, settings: CapstoneSettings) -> dict:
    """For each model: per MoE layer, the router's z-loss on the held-out windows (how large its logits are), and
    for each part run in bfloat16 (the gate's product, or all of the routing) and each gate scale, the routing
    against float32."""
    seq_len = next(iter(models.values())).config.seq_len
    held_out = windows(val_ids, seq_len)
    results = {}
    for name, model in models.items():
        layers = []
        for layer, x in zip(model.moe_layers(), router_inputs(model, held_out), strict=True):
            with torch.no_grad():
                z = z_loss(layer.router.gate(x)).item()
            flips = {part: [asdict(routing_flips(layer.router, x, scale=scale, part=part)) for scale in settings.scales]
                     for part in PARTS}  # fmt: skip
            layers.append({"z_loss": z, **flips})
        results[name] = layers
    return results


def finetune_results(models: dict, data: tuple, settings: CapstoneSettings) -> dict:
    """The seed-0 dense and MoE models, each fine-tuned on a copy, on the same slice."""
    streams = slice_streams(*data, settings.finetune_kind, settings.finetune_chars)
    base = settings.finetune_config()
    return {
        name: fine_tune(copy.deepcopy(models[name]), streams, replace(base, balance=BALANCE[name]))
        for name in ("dense", "moe")
    } | {"kind": settings.finetune_kind, "slice_chars": len(streams["slice"])}


def run_capstone(settings: CapstoneSettings = CapstoneSettings(), jobs: int = 1) -> tuple:
    """All five experiments -> (results, timing)."""
    if not isinstance(settings, CapstoneSettings):
        raise ValueError(f"settings must be a CapstoneSettings, got {type(settings).__name__}")
    check_positive_int("jobs", jobs)
    timing, start = {}, time.perf_counter()
    tokenizer, train_ids, val_ids = corpus_ids()
    text = load_corpus()
    classes, kinds, n = char_classes(text), text_kinds(text), len(train_ids)
    configs = equal_compute_configs(tokenizer.vocab_size)
    records, states, timing["training"] = train_all(settings, jobs)
    models = {name: from_state(configs[name.removesuffix("_z")], state) for name, state in states.items()}
    results = {"equal_compute": {"configs": {name: config_summary(c) for name, c in configs.items()}, "runs": records}}
    mark = time.perf_counter()
    torch.manual_seed(settings.seeds[0])
    untrained = TinyLM(configs["moe"]).eval()  # the trained MoE's initial weights
    results["specialization"] = specialization_results(
        {"trained": models["moe"], "untrained": untrained}, val_ids, classes[n:], kinds[n:], settings
    )
    results["precision"] = precision_results({"aux": models["moe"], "z+aux": models["moe_z"]}, val_ids, settings)
    data = (train_ids, kinds[:n], val_ids, kinds[n:])
    results["finetune"] = finetune_results(models, data, settings)
    results["bill"] = {name: bill(c.model_config(), c.seq_len, settings.expert_parallel_ranks, 4)
                       for name, c in configs.items()}  # fmt: skip
    results["bill"]["mixtral_8x7b"] = bill(MIXTRAL_8X7B, settings.mixtral_context, settings.expert_parallel_ranks, 2)
    timing["analyses"], timing["total"] = time.perf_counter() - mark, time.perf_counter() - start
    return results, timing


def from_state(config: TinyLMConfig, state: dict) -> TinyLM:
    """A TinyLM of ``config`` holding ``state``, in evaluation mode."""
    model = TinyLM(config)
    model.load_state_dict(state)
    return model.eval()


def config_summary(config: TinyLMConfig) -> dict:
    """The sizes that tell the three models apart."""
    m = config.moe
    return {"ffn": config.ffn, "d_model": m.d_model, "d_ff": m.d_ff, "E": m.E if config.ffn == "moe" else 1,
            "k": m.k if config.ffn == "moe" else 1, "n_layers": config.n_layers, "seq_len": config.seq_len}  # fmt: skip
