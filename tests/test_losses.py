import math

import pytest
import torch

from moe_course.load import router_entropy
from moe_course.losses import sequence_aux_loss, switch_aux_loss, update_bias, z_loss


def test_switch_loss_is_one_for_uniform_routing_whatever_k():
    T, E = 16, 4
    probs = torch.full((T, E), 1 / E)
    for k in (1, 2, 4):
        indices = torch.stack([(torch.arange(k) + t) % E for t in range(T)])
        assert switch_aux_loss(probs, indices).item() == pytest.approx(1.0)


def test_switch_loss_grows_with_imbalance():
    T, E = 32, 4
    values = []
    for skew in (0.0, 1.0, 3.0, 30.0):
        logits = skew * torch.linspace(1, 0, E).expand(T, E)
        probs = torch.softmax(logits, -1)
        values.append(switch_aux_loss(probs, torch.topk(probs, 1).indices).item())
    assert values[0] == pytest.approx(1.0)
    assert values == sorted(values) and values[-1] == pytest.approx(E, rel=1e-3)


def test_switch_loss_gradient_reaches_the_router():
    torch.manual_seed(0)
    gate = torch.nn.Linear(8, 4, bias=False)
    probs = torch.softmax(gate(torch.randn(20, 8)), -1)
    switch_aux_loss(probs, torch.topk(probs, 2).indices).backward()
    assert gate.weight.grad.abs().sum() > 0


def test_mixtral_style_counting_is_k_times_larger():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(40, 8), -1)
    indices = torch.topk(probs, 2).indices
    f_per_token = torch.nn.functional.one_hot(indices, 8).float().sum(1).mean(0)  # Σ f = k
    assert (8 * (f_per_token * probs.mean(0)).sum()).item() == pytest.approx(2 * switch_aux_loss(probs, indices).item())


def test_sequence_loss_sees_what_the_batch_hides():
    E, S = 2, 4
    # sequence 0 all on expert 0, sequence 1 all on expert 1: balanced batch, unbalanced sequences
    probs = torch.tensor([[1.0, 0.0]] * S + [[0.0, 1.0]] * S)
    indices = torch.tensor([[0]] * S + [[1]] * S)
    assert switch_aux_loss(probs, indices).item() == pytest.approx(1.0)
    assert sequence_aux_loss(probs, indices, seq_len=S).item() == pytest.approx(E)
    with pytest.raises(ValueError, match="seq_len"):
        sequence_aux_loss(probs, indices, seq_len=3)


def test_z_loss():
    assert z_loss(torch.zeros(5, 4)).item() == pytest.approx(math.log(4) ** 2)
    big = torch.tensor([[10.0, 0.0]])
    assert z_loss(big).item() > z_loss(big / 10).item()
    assert z_loss(torch.zeros(0, 4)).item() == 0


def test_update_bias_moves_towards_the_mean_load():
    bias = torch.zeros(4)
    update_bias(bias, torch.tensor([10, 2, 2, 2]), gamma=0.1)
    assert bias.tolist() == pytest.approx([-0.1, 0.1, 0.1, 0.1])
    update_bias(bias, torch.tensor([4, 4, 4, 4]), gamma=0.1)
    assert bias.tolist() == pytest.approx([-0.1, 0.1, 0.1, 0.1])


def test_router_entropy():
    assert router_entropy(torch.full((3, 8), 1 / 8)) == pytest.approx(math.log(8))
    assert router_entropy(torch.eye(4)) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: switch_aux_loss(torch.ones(4, 3) / 3, torch.tensor([[3]] * 4)), "indices"),
        (lambda: switch_aux_loss(torch.ones(4), torch.tensor([[0]] * 4)), "probs"),
        (lambda: z_loss(torch.zeros(4)), "logits"),
        (lambda: update_bias(torch.zeros(4), torch.zeros(3), 0.1), "bias"),
        (lambda: update_bias(torch.zeros(4), torch.zeros(4), -0.1), "gamma"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()
