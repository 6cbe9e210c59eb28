"""Equal compute, equal parameters: does a sparse model beat a dense one that spends the same FLOPs per token?

Three models of one family, trained on the same batches of the course corpus for the same number of steps:

- ``dense``: the baseline, one dense FFN of width k·d_ff per block, so it spends the MoE's FLOPs per token
  (:func:`~moe_course.flops.flop_matched_dense_d_ff`): the **FLOP-matched** comparison;
- ``moe``: E experts of width d_ff per block, k per token, balanced with the Switch loss (weight 0.01, the
  balancing that reached the lowest validation loss in lesson 04);
- ``dense_params``: one dense FFN of width E·d_ff, storing as many weights as the MoE
  (:func:`~moe_course.flops.param_matched_dense_d_ff`): the **parameter-matched** comparison, at E/k times the
  FFN FLOPs.

Their training FLOPs are counted with :func:`~moe_course.flops.training_flops`, never estimated by hand.
"""

from dataclasses import replace

import torch

from ..config import MoEConfig
from ..flops import count_model_params, flop_matched_dense_d_ff, forward_flops, param_matched_dense_d_ff, training_flops
from ..model import TinyLM, TinyLMConfig
from ..text import CharTokenizer, load_corpus, split
from ..train import TrainConfig, train

MODELS = ("dense", "moe", "dense_params")
BLOCK = MoEConfig(128, 128)  # the course's tiny MoE block: d_model = d_ff = 128, E = 8, k = 2, SwiGLU
# lesson 04: the Switch loss at weight 0.01 reached the lowest validation loss
BALANCE = {"dense": "none", "moe": "aux", "dense_params": "none"}


def corpus_ids() -> tuple:
    """The course corpus as (tokenizer, train_ids, val_ids): the first 90 % for training, the rest held out."""
    text = load_corpus()
    tokenizer = CharTokenizer(text)
    return (tokenizer, *split(tokenizer.encode(text)))


def equal_compute_configs(vocab_size: int, moe: MoEConfig = BLOCK, **sizes) -> dict:
    """The three models of the comparison, by name (``MODELS``), around the MoE block ``moe``; ``sizes``: the
    other :class:`~moe_course.model.TinyLMConfig` fields (seq_len, n_layers, n_heads), shared by all three."""
    if not isinstance(moe, MoEConfig):
        raise ValueError(f"moe must be an MoEConfig, got {type(moe).__name__}")

    def dense(d_ff: int) -> TinyLMConfig:
        block = MoEConfig(moe.d_model, d_ff, activation=moe.activation)
        return TinyLMConfig(vocab_size, ffn="dense", moe=block, **sizes)

    return {
        "dense": dense(flop_matched_dense_d_ff(moe.d_ff, moe.k, moe.n_shared)),
        "moe": TinyLMConfig(vocab_size, moe=moe, **sizes),
        "dense_params": dense(param_matched_dense_d_ff(moe.d_ff, moe.E, moe.n_shared)),
    }


def model_costs(config: TinyLMConfig) -> dict:
    """Parameters stored and active per token, and forward FLOPs per token on full windows of ``seq_len``."""
    c = config.model_config()
    params = count_model_params(c)
    return {
        "params_total": params["total"],
        "params_active": params["active"],
        "forward_flops_per_token": forward_flops(c, config.seq_len) / config.seq_len,
    }


def train_model(name: str, config: TinyLMConfig, seed: int, train_config: TrainConfig, data: tuple) -> tuple:
    """Train model ``name`` of ``config`` from seed ``seed`` (its initial weights and its batches) as
    ``train_config`` says, on ``data`` = (train_ids, val_ids) -> (the trained model, its record: the validation loss
    every ``train_config.eval_every`` steps against the training FLOPs spent so far, and its costs)."""
    settings = replace(train_config, seed=seed, progress=False)
    torch.manual_seed(seed)
    model = TinyLM(config)
    history = train(model, *data, settings)
    c, steps = config.model_config(), history.evals["step"]
    record = {
        "model": name,
        "seed": seed,
        "steps": steps,
        "training_flops": [training_flops(c, config.seq_len, step * settings.batch_size) for step in steps],
        "val_loss": history.evals["val"],
        "train_loss_last_50": sum(history.loss[-50:]) / len(history.loss[-50:]),
        **model_costs(config),
    }
    return model, record
