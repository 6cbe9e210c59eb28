"""What the experts learn. Studies of trained MoE models find that experts rarely specialize by human topic, but by
token identity and shallow syntax: one expert receives punctuation, another numerals. This tests the claim on the
course's model and corpus: for each MoE layer, how much does the expert a character is routed to tell about (a) the
character's class (:func:`moe_course.text.char_classes`) and (b) the kind of text it sits in
(:func:`moe_course.text.text_kinds`)?

The measure is the mutual information I(expert; label) in bits: 0 when the expert says nothing about the label, at
most min(H(expert), H(label)), reached when one determines the other. On finitely many tokens even unrelated labels
give a small positive value, so it is compared with the same measure after shuffling the labels.
"""

from dataclasses import dataclass

import torch

from ..checks import check_ids, check_positive_int, check_tensor
from ..env import THREADS, torch_threads
from ..text import windows
from ..train import check_model_and_ids, check_seed


@dataclass
class LayerSpecialization:
    """One MoE layer's chosen experts against a labelling of its tokens.

    mi_bits:           I(expert; label) in bits
    shuffled_bits:     its mean over shuffles of the labels: what no information looks like on these tokens
    shuffled_max_bits: its largest value over the shuffles
    max_bits:          min(H(expert), H(label)), the most mi_bits can be
    counts:            [E, n_labels] int64 tokens per (expert, label)
    """

    mi_bits: float
    shuffled_bits: float
    shuffled_max_bits: float
    max_bits: float
    counts: torch.Tensor


def check_labels(a, b, n_a: int, n_b: int) -> None:
    """a, b: [N] int64 labels in [0, n_a) and [0, n_b)."""
    check_positive_int("n_a", n_a)
    check_positive_int("n_b", n_b)
    check_ids("a", a, ("N",), "int64", n_a, "n_a")
    check_ids("b", b, (len(a),), "int64", n_b, "n_b")


def contingency(a: torch.Tensor, b: torch.Tensor, n_a: int, n_b: int) -> torch.Tensor:
    """a, b: [N] int64 labels in [0, n_a), [0, n_b) -> [n_a, n_b] int64: how many i have (a[i], b[i])."""
    check_labels(a, b, n_a, n_b)
    return _contingency(a, b, n_a, n_b)


def _contingency(a, b, n_a, n_b):
    return torch.bincount(a * n_b + b, minlength=n_a * n_b).view(n_a, n_b)


def entropy_bits(p: torch.Tensor) -> float:
    """-Σ p log2 p in bits of float64 probabilities ``p`` (any shape), with 0·log 0 = 0."""
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def joint_probabilities(counts: torch.Tensor) -> torch.Tensor:
    """[A, B] counts -> [A, B] float64 probabilities."""
    # divided by the largest count first, so that a sum of huge finite counts cannot overflow to inf
    p = counts.double() / counts.max().double()
    return p / p.sum()


def _mutual_information(p: torch.Tensor) -> float:
    """I(X;Y) = H(X) + H(Y) - H(X,Y) of the joint probabilities p: [A, B]."""
    mi = entropy_bits(p.sum(dim=1)) + entropy_bits(p.sum(dim=0)) - entropy_bits(p)
    return max(mi, 0.0)  # rounding can leave -1e-16 for an independent table


def mutual_information(counts: torch.Tensor) -> float:
    """I(X;Y) = Σ p(x,y) log2(p(x,y) / (p(x) p(y))) in bits, 0·log 0 = 0, of the joint distribution proportional to
    ``counts: [A, B]`` (finite, non-negative, not all zero; integer or floating): 0 for independent X and Y, H(X)
    when Y determines X."""
    check_tensor("counts", counts, ("A", "B"), "real")
    if not bool(torch.isfinite(counts).all() and (counts >= 0).all()):
        raise ValueError("counts must hold finite counts >= 0")
    if not bool((counts > 0).any()):
        raise ValueError(f"counts must hold at least one positive count, got all zero of shape {tuple(counts.shape)}")
    return _mutual_information(joint_probabilities(counts))


def _shuffled(a, b, n_a, n_b, trials, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shuffles = (b[torch.randperm(len(b), generator=g)] for _ in range(trials))
    mi = [_mutual_information(joint_probabilities(_contingency(a, c, n_a, n_b))) for c in shuffles]
    return torch.tensor(mi, dtype=torch.float64)


def shuffled_mutual_information(
    a: torch.Tensor, b: torch.Tensor, n_a: int, n_b: int, trials: int, seed: int
) -> torch.Tensor:
    """[trials] float64: the mutual information in bits of a with a random permutation of b, one per trial (the same
    permutations for a seed). The baseline: what the measure gives these N labels when they carry no information
    about each other (positive, about (n_a - 1)(n_b - 1) / (2 N ln 2) for large N)."""
    check_labels(a, b, n_a, n_b)
    if len(a) == 0:
        raise ValueError("a must hold at least one label, got none")
    check_positive_int("trials", trials)
    check_seed("seed", seed)
    return _shuffled(a, b, n_a, n_b, trials, seed)


@torch_threads(THREADS)
@torch.no_grad()
def routed_experts(model, ids: torch.Tensor, batch_size: int = 16) -> tuple:
    """Run ``model`` (a :class:`~moe_course.model.TinyLM` with MoE layers) in eval mode over the 1-D token ids
    ``ids``, cut into consecutive windows of ``seq_len`` tokens (an incomplete last window is left out), and return
    ``(experts, positions)`` on the CPU:

    experts:   [L, N, k] int64  each routed token's k experts in each of the L MoE layers, its first choice
                                first (``experts[..., 0]``, its top-1 expert)
    positions: [N] int64        the index in ids of each routed token: its labels are ``labels[positions]``

    ``batch_size`` windows run at a time; the model's training mode is restored afterwards.
    """
    check_model_and_ids(model)
    if not model.moe_layers():
        raise ValueError("model must have MoE layers, got a dense model (ffn='dense')")
    if model.config.moe.router == "expert_choice":
        raise ValueError("model must route by token choice: with expert choice a token has no first choice")
    S = model.config.seq_len
    check_ids("ids", ids, ("n",), "int32 or int64", model.config.vocab_size, "vocab_size")
    if len(ids) < S:
        raise ValueError(f"ids must hold at least one window of seq_len={S} tokens, got {len(ids)}")
    check_positive_int("batch_size", batch_size)
    cut = windows(ids, S).to(model.tok_emb.weight.device)
    was_training = model.training
    model.eval()
    try:
        per_batch = []
        for batch in cut.split(batch_size):
            model(batch)
            # the routing is of the flattened batch: window after window, as ids runs
            per_batch.append(torch.stack([layer.last_routing.indices for layer in model.moe_layers()]))
    finally:
        model.train(was_training)
    return torch.cat(per_batch, dim=1).cpu(), torch.arange(cut.numel())


def specialization(
    experts: torch.Tensor, labels: torch.Tensor, n_labels: int, E: int, trials: int = 20, seed: int = 0
) -> list:
    """Per MoE layer, a :class:`LayerSpecialization` of its experts against the labels.

    experts: [L, N] int64 in [0, E)         each token's expert in each layer (as the top-1 experts
                                            ``routed_experts(...)[0][..., 0]``)
    labels:  [N] int64 in [0, n_labels)     each token's label, aligned with experts' columns
    trials, seed: the shuffles of the baseline (:func:`shuffled_mutual_information`; the same ones for every layer)
    """
    check_positive_int("E", E)
    check_positive_int("n_labels", n_labels)
    check_ids("experts", experts, ("L", "N"), "int64", E, "E")
    if experts.shape[1] == 0:
        raise ValueError("experts must hold at least one token, got shape [L, 0]")
    check_ids("labels", labels, (experts.shape[1],), "int64", n_labels, "n_labels")
    check_positive_int("trials", trials)
    check_seed("seed", seed)
    return [_layer_specialization(chosen, labels, n_labels, E, trials, seed) for chosen in experts]


def _layer_specialization(chosen, labels, n_labels, E, trials, seed) -> LayerSpecialization:
    """One layer: chosen [N] experts against labels [N]."""
    counts = _contingency(chosen, labels, E, n_labels)
    p = joint_probabilities(counts)
    shuffled = _shuffled(chosen, labels, E, n_labels, trials, seed)
    return LayerSpecialization(
        mi_bits=_mutual_information(p),
        shuffled_bits=float(shuffled.mean()),
        shuffled_max_bits=float(shuffled.max()),
        max_bits=min(entropy_bits(p.sum(dim=1)), entropy_bits(p.sum(dim=0))),
        counts=counts,
    )
