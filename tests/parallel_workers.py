"""Worker functions only the tests run (importable by name, as spawned workers need)."""

import time

import torch
import torch.distributed as dist

from moe_course.parallel.workers import ep_case, moe_layout


def failing_worker(rank: int, world_size: int) -> None:
    """Rank 1 raises; the others wait in a collective that will never complete."""
    if rank == 1:
        raise ValueError("rank 1 fails on purpose")
    dist.all_reduce(torch.ones(1))


def sleeping_worker(rank: int, world_size: int, seconds: float) -> None:
    """A worker that takes too long: the launcher's timeout must stop it."""
    time.sleep(seconds)


def identity_backend(x, indices, weights, keep, experts):
    """Experts that return their input unchanged."""
    return x


def identity_round_trip(rank: int, world_size: int, case: dict) -> torch.Tensor:
    """Dispatch, identity experts, combine: the case's output on this rank's tokens, which must be each token
    times the sum of its kept weights."""
    return ep_case(rank, world_size, case, backend=identity_backend)["y"]


def ep_size_layers(rank: int, world_size: int, ep_sizes: list) -> list:
    """:func:`~moe_course.parallel.workers.moe_layout` for each ep_size, or the message of the ValueError it raised."""
    built = []
    for P in ep_sizes:
        try:
            built.append(moe_layout(rank, world_size, P))
        except ValueError as error:
            built.append(str(error))
    return built
