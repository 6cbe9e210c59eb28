"""Incremental decoding with the KV cache, generation and the routing trace it records."""

import pytest
import torch

from moe_course.config import MoEConfig
from moe_course.model import TinyLM, TinyLMConfig
from moe_course.serving.generate import RoutingTrace, generate

VOCAB = 40


def model_of(seed=0, **moe) -> TinyLM:
    torch.manual_seed(seed)
    config = TinyLMConfig(vocab_size=VOCAB, seq_len=48, moe=MoEConfig(d_model=32, d_ff=32, E=8, k=2, **moe))
    return TinyLM(config).eval()


@pytest.mark.parametrize("chunks", [[48], [1] * 48, [7, 1, 1, 1, 20, 1, 17], [30, 18], [1, 47]])
@pytest.mark.parametrize("router", ["topk", "sigmoid"])
def test_decoding_with_the_cache_gives_the_full_forwards_logits(chunks, router):
    model = model_of(router=router)
    ids = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache, parts, start = model.new_cache(), [], 0
        for n in chunks:
            parts.append(model(ids[:, start : start + n], cache))
            start += n
    assert cache.length == 48
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_greedy_generation_picks_the_full_forwards_argmax_and_records_the_routing():
    model = model_of()
    prompt = torch.tensor([3, 1, 4, 1, 5])
    ids, trace = generate(model, prompt, 20)
    assert ids.shape == (25,) and torch.equal(ids[:5], prompt)
    with torch.no_grad():
        logits = model(ids[None])
    assert torch.equal(ids[5:], logits[0, 4:-1].argmax(dim=-1))  # each new token is the argmax after its prefix
    assert isinstance(trace, RoutingTrace) and trace.prompt_len == 5
    assert trace.indices.shape == (2, 25, 2) and trace.probs.shape == (2, 25, 8)
    for layer, moe in enumerate(model.moe_layers()):  # the trace is the routing of the whole sequence
        assert torch.equal(trace.indices[layer], moe.last_routing.indices)
        torch.testing.assert_close(trace.probs[layer], moe.last_routing.probs)
    assert trace.requests(0).shape == (20, 2) and trace.requests(1, generated_only=False).shape == (25, 2)


def test_sampling_is_seeded():
    model = model_of()
    prompt = torch.tensor([1, 2, 3])
    sample = lambda seed: generate(model, prompt, 30, 1.0, torch.Generator().manual_seed(seed))[0]  # noqa: E731
    assert torch.equal(sample(0), sample(0)) and not torch.equal(sample(0), sample(1))


def test_generation_leaves_the_model_as_it_found_it():
    model = model_of().train()
    generate(model, torch.tensor([1]), 3)
    assert model.training
    dense = TinyLM(TinyLMConfig(vocab_size=VOCAB, ffn="dense", moe=MoEConfig(d_model=32, d_ff=32)))
    ids, trace = generate(dense, torch.tensor([1, 2]), 4)
    assert ids.shape == (6,) and trace is None


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda m: generate(m, torch.tensor([1, 2]), 47), "max_new_tokens"),  # 2 + 47 > seq_len = 48
        (lambda m: generate(m, torch.tensor([1, 2]), -1), "max_new_tokens"),
        (lambda m: generate(m, torch.tensor([], dtype=torch.int64), 3), "prompt"),
        (lambda m: generate(m, torch.tensor([[1, 2]]), 3), "prompt"),
        (lambda m: generate(m, torch.tensor([VOCAB]), 3), "prompt"),
        (lambda m: generate(m, torch.tensor([1]), 3, temperature=-1.0), "temperature"),
        (lambda m: generate(torch.nn.Linear(2, 2), torch.tensor([1]), 3), "model"),
        (lambda m: m(torch.tensor([[1]]), cache="yes"), "cache"),
    ],
)
def test_bad_arguments_are_named(call, name):
    model = model_of()
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call(model)


def test_the_cache_and_the_new_positions_fit_in_seq_len():
    model = model_of()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(1, 40, dtype=torch.int64), cache)
        with pytest.raises(ValueError, match="^idx .*40 cached"):
            model(torch.zeros(1, 9, dtype=torch.int64), cache)
