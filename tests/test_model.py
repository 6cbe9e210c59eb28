import pytest
import torch

from moe_course.config import MoEConfig
from moe_course.env import THREADS, torch_threads
from moe_course.flops import count_model_params
from moe_course.model import TinyLM, TinyLMConfig
from moe_course.text import CharTokenizer, get_batch, load_corpus, split
from moe_course.train import TrainConfig, evaluate, train

TEXT = load_corpus()
TOKENS = CharTokenizer(TEXT)
TRAIN, VAL = split(TOKENS.encode(TEXT))


def small(ffn: str = "moe", **moe_options):
    moe = MoEConfig(d_model=32, d_ff=32, E=4, k=2, **moe_options)
    torch.manual_seed(0)
    return TinyLM(TinyLMConfig(TOKENS.vocab_size, seq_len=32, n_layers=2, n_heads=2, ffn=ffn, moe=moe))


def test_tokenizer_round_trip_and_corpus():
    assert 100_000 < len(TEXT) < 500_000
    assert TOKENS.decode(TOKENS.encode("def scale_2(values):")) == "def scale_2(values):"
    with pytest.raises(ValueError, match="text"):
        TOKENS.encode("€")


def test_batches_are_next_token_shifted():
    x, y = get_batch(TRAIN, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_the_full_size_model_has_about_a_million_parameters():
    torch.manual_seed(0)
    model = TinyLM(TinyLMConfig(TOKENS.vocab_size))
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    assert len(model.moe_layers()) == 2


@pytest.mark.parametrize("balance", ["none", "aux", "seq_aux", "z+aux", "bias"])
def test_training_is_reproducible_and_learns(balance):
    config = TrainConfig(steps=30, batch_size=8, balance=balance, progress=False)
    a = train(small(), TRAIN, VAL, config)
    b = train(small(), TRAIN, VAL, config)
    assert a.loss == b.loss and a.val_loss == b.val_loss
    assert sum(a.loss[-5:]) / 5 < sum(a.loss[:5]) / 5 - 0.5
    counts = a.counts_tensor()
    assert counts.shape == (30, 2, 4)
    assert (counts.sum(-1) == 8 * 32 * 2).all()  # every pair processed: no capacity limit
    assert len(a.entropy) == len(a.aux_loss) == len(a.z_loss) == 30


def test_periodic_evaluation_records_every_stream_and_changes_nothing():
    config = TrainConfig(steps=10, batch_size=4, progress=False)
    plain_model, watched_model = small(), small()
    plain = train(plain_model, TRAIN, VAL, config)
    every_4 = TrainConfig(**{**config.__dict__, "eval_every": 4})
    watched = train(watched_model, TRAIN, VAL, every_4, {"head": TRAIN[:5000]})
    assert watched.loss == plain.loss and watched.val_loss == plain.val_loss
    states = plain_model.state_dict(), watched_model.state_dict()
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])
    assert watched.evals["step"] == [0, 4, 8, 10] and plain.evals["step"] == [10]
    assert watched.evals["val"][-1] == watched.val_loss
    assert watched.evals["head"][-1] == evaluate(watched_model, TRAIN[:5000], 4, config.eval_batches)
    with pytest.raises(ValueError, match=r"^watch\b"):
        train(small(), TRAIN, VAL, config, {"val": VAL})
    with pytest.raises(ValueError, match=r"^watch\['short'\]"):
        train(small(), TRAIN, VAL, config, {"short": VAL[:10]})


def test_bias_balancing_moves_the_router_bias():
    model = small()
    train(model, TRAIN, VAL, TrainConfig(steps=5, batch_size=4, balance="bias", progress=False))
    assert all(layer.router.bias.abs().sum() > 0 for layer in model.moe_layers())


def test_capacity_drops_are_recorded():
    model = small(capacity_factor=0.5)
    h = train(model, TRAIN, VAL, TrainConfig(steps=3, batch_size=4, progress=False))
    assert all(d > 0 for step in h.dropped for d in step)
    assert (h.counts_tensor().sum(-1) + torch.tensor(h.dropped) == 4 * 32 * 2).all()


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_training_runs_on_the_library_thread_count_and_restores_the_callers(restore_threads):
    histories = []
    for caller in (THREADS + 1, THREADS):
        torch.set_num_threads(caller)
        model, seen = small(), set()
        model.register_forward_pre_hook(lambda module, args, seen=seen: seen.add(torch.get_num_threads()))
        histories.append(train(model, TRAIN, VAL, TrainConfig(steps=5, batch_size=4, progress=False)))
        evaluate(model, VAL, batch_size=4, n_batches=2)
        assert seen == {THREADS} and torch.get_num_threads() == caller
    # whatever the caller's thread count, the same seed gives the same losses
    assert histories[0].loss == histories[1].loss and histories[0].val_loss == histories[1].val_loss


def test_thread_count_is_restored_after_an_error(restore_threads):
    torch.set_num_threads(2)
    with pytest.raises(RuntimeError, match="inside"), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2


def test_dense_model_trains_and_rejects_balancing():
    model = small(ffn="dense")
    assert model.moe_layers() == []
    h = train(model, TRAIN, VAL, TrainConfig(steps=3, batch_size=4, progress=False))
    assert len(h.loss) == 3 and h.counts == [[], [], []]
    with pytest.raises(ValueError, match="balance"):
        train(model, TRAIN, VAL, TrainConfig(steps=3, balance="aux", progress=False))


@pytest.mark.parametrize(
    "ffn, options",
    [("moe", {}), ("dense", {}), ("moe", dict(n_shared=2, activation="gelu")), ("moe", dict(router="noisy_topk"))],
)
def test_the_flop_accounting_counts_every_parameter_of_the_model(ffn, options):
    model = small(ffn, **options)
    counted = count_model_params(model.config.model_config())
    assert counted["total"] == sum(p.numel() for p in model.parameters())
    ffns = [block.ffn for block in model.blocks]
    routers = [layer.router for layer in model.moe_layers()]
    ffn_params = [p for f in ffns for name, p in f.named_parameters() if "router" not in name]
    assert counted["experts"] == sum(p.numel() for p in ffn_params)
    assert counted["router"] == sum(p.numel() for r in routers for p in r.parameters())


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: TinyLMConfig(vocab_size=10, moe=MoEConfig(30, 32), n_heads=4), "n_heads"),
        (lambda: TinyLMConfig(vocab_size=10, moe={"d_model": 32}), "moe"),
        (lambda: TinyLMConfig(vocab_size=10, ffn="sparse"), "ffn"),
        (lambda: TrainConfig(balance="magic"), "balance"),
        (lambda: TrainConfig(steps=0), "steps"),
        (lambda: small()(torch.zeros(1, 40, dtype=torch.int64)), "idx"),
        (lambda: get_batch(TRAIN[:10], 2, 16, torch.Generator()), "seq_len"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()
