"""Guessing the next layer's experts from the previous layer's output, and scoring the guesses."""

import pytest
import torch

from moe_course.config import MoEConfig
from moe_course.model import TinyLM, TinyLMConfig
from moe_course.serving.prefetch import recall, speculate


def model_of(n_layers=3, seed=0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(TinyLMConfig(vocab_size=30, seq_len=16, n_layers=n_layers, moe=MoEConfig(32, 32, E=8, k=2)))


def test_recall_counts_the_chosen_experts_that_were_guessed():
    guessed, chosen = torch.tensor([[0, 1], [2, 3]]), torch.tensor([[1, 0], [2, 5]])
    assert recall(guessed, chosen) == 0.75
    assert recall(torch.tensor([[4, 5, 6]]), torch.tensor([[6, 7]])) == 0.5  # k guesses need not equal k chosen
    assert recall(torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, 2, dtype=torch.int64)) == 1.0


def test_a_guess_is_exact_when_the_next_attention_adds_nothing():
    """With layer 1's attention output projection zeroed, its MoE input is the previous block's output after its
    norm: the router the guess applies sees exactly what the real layer sees."""
    model = model_of()
    with torch.no_grad():
        model.blocks[1].attn.out.weight.zero_()
    idx = torch.randint(0, 30, (2, 16), generator=torch.Generator().manual_seed(1))
    (guessed, chosen), (guessed2, chosen2) = speculate(model, idx)
    assert guessed.shape == chosen.shape == (32, 2)
    assert recall(guessed, chosen) == 1.0
    assert recall(guessed2, chosen2) < 1.0  # layer 2's attention does change its input
    assert torch.equal(chosen2, model.moe_layers()[2].last_routing.indices)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="^guessed"):
        recall(torch.zeros(3, 2, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="^idx"):
        speculate(model_of(), torch.tensor([1, 2]))
    dense = TinyLM(TinyLMConfig(vocab_size=30, ffn="dense", moe=MoEConfig(32, 32)))
    with pytest.raises(ValueError, match="^model"):
        speculate(dense, torch.tensor([[1, 2]]))
