"""The all-to-all exchange, differentiable.

``torch.distributed.all_to_all_single`` moves rows between ranks but is invisible to autograd: a loss computed
after it sends no gradient back to the rows that were sent. The backward of an all-to-all is the same exchange in
reverse: what rank r received from rank s goes back to s, so the split sizes swap.
"""

import torch
import torch.distributed as dist


class AllToAll(torch.autograd.Function):
    """Rows [sum(input_splits), ...] -> [sum(output_splits), ...]; ``input_splits[s]`` rows go to rank s and
    ``output_splits[s]`` rows arrive from rank s (Python ints, as the collective needs them)."""

    @staticmethod
    def forward(ctx, x, output_splits: list, input_splits: list, group):
        ctx.output_splits, ctx.input_splits, ctx.group = output_splits, input_splits, group
        out = x.new_empty((sum(output_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return all_to_all(grad, ctx.input_splits, ctx.output_splits, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, output_splits: list, input_splits: list, group=None) -> torch.Tensor:
    """Differentiable ``all_to_all_single`` with uneven splits (see :class:`AllToAll`)."""
    return AllToAll.apply(x, [int(s) for s in output_splits], [int(s) for s in input_splits], group)


def exchange_counts(counts: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank sends ``counts`` [P·n] in P equal chunks, chunk s to rank s: returns what arrived, [P·n]."""
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts, group=group)
    return received
