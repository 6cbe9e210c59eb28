"""Worker functions only the tests run (importable by name, as spawned workers need)."""

import os
import signal
import subprocess
import time
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist

from moe_course.factory import MoE
from moe_course.parallel import exchange
from moe_course.parallel.workers import ep_case, moe_layout


def failing_worker(rank: int, world_size: int) -> None:
    """Rank 1 raises; the others wait in a collective that will never complete."""
    if rank == 1:
        raise ValueError("rank 1 fails on purpose")
    dist.all_reduce(torch.ones(1))


def sleeping_worker(rank: int, world_size: int, seconds: float) -> None:
    """A worker that takes too long: the launcher's timeout must stop it."""
    time.sleep(seconds)


def exiting_silently(rank: int, world_size: int) -> None:
    """Rank 1 exits with code 0 without a result (no exception to report); the others hang."""
    if rank == 1:
        os._exit(0)
    time.sleep(60)


class KilledWhenPickled:
    """An object whose pickling kills the process: a result that dies halfway through being sent."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


def dying_while_sending(rank: int, world_size: int) -> list | None:
    """Rank 1 is killed after 32 MB of its result are on their way; the others hang."""
    if rank == 1:
        return [torch.zeros(8_000_000), KilledWhenPickled()]
    time.sleep(60)


def starting_a_child(rank: int, world_size: int, folder: str, n: int, failing_rank: int = -1) -> torch.Tensor:
    """Start a child process that ignores SIGTERM (only SIGKILL stops it), write its pid to ``folder``/RANK.pid, then
    raise on ``failing_rank`` or return [n] floats equal to the rank."""
    child = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 300"])
    Path(folder, f"{rank}.pid").write_text(str(child.pid))
    if rank == failing_rank:
        raise ValueError(f"rank {rank} fails on purpose")
    return torch.full((n,), float(rank))


def mismatched_layers(rank: int, world_size: int, differences: list) -> list:
    """For each {name: value} of ``differences`` (d_model, E, dtype, capacity_factor), an expert-parallel layer
    with that value on the last rank only, called 3 times: the message of the ValueError it raised, or the number
    of times the ranks checked that they agree (once per layout, when they do)."""
    messages = []
    for difference in differences:
        sizes = dict(d_model=16, E=4, dtype=torch.float32, capacity_factor=1.0)
        sizes |= difference if rank == world_size - 1 else {}
        layer = MoE(sizes["d_model"], num_experts=sizes["E"], k=1, d_ff=8, ep_size=world_size,
                    capacity_factor=sizes["capacity_factor"], router="switch").to(sizes["dtype"])  # fmt: skip
        x = torch.randn(5, sizes["d_model"], dtype=sizes["dtype"])
        with mock.patch.object(exchange, "check_ranks_agree", wraps=exchange.check_ranks_agree) as check:
            try:
                for _ in range(3):
                    layer(x)
                messages.append(check.call_count)
            except ValueError as error:
                messages.append(str(error))
    return messages


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
