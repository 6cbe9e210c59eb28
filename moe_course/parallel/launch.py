"""Start P CPU worker processes from Python (a notebook cell, a test) and collect what they return.

Each worker is a fresh ``spawn``-ed interpreter in a process group of its own. It joins a gloo process group through
a FileStore in a new temporary folder (a fresh rendezvous every run, no ports), calls ``fn(rank, world_size, *args)``
and writes what it returned (or its traceback) to a file of its own in that folder, renamed into place once
complete. The caller only polls those files and the workers' exit codes, so no worker can keep it waiting: a worker
that raises, dies (even halfway through writing a large result) or exits without a result raises in the caller as
soon as it is seen, and a run still going at ``timeout`` raises then. Every worker's process group, the worker and
any process it started, is stopped before ``run_workers`` returns or raises: none is left behind.

``fn`` must live in an importable module (the workers import it by name): not in the notebook, not a lambda; so
must the classes of ``args``. A worker that cannot import them fails like any other, with the cause in the caller.
"""

import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import time
import traceback
from contextlib import suppress
from datetime import timedelta

import torch.distributed as dist

from ..checks import check_number, check_positive_int

POLL_S = 0.05  # how often the caller looks for results and exits
GRACE_S = 2.0  # how long stopped workers get to exit on SIGTERM before SIGKILL


def _result_path(folder: str, rank: int) -> str:
    return os.path.join(folder, f"result-{rank}.pkl")


def _save(path: str, outcome: tuple) -> None:
    """Write ``outcome`` to ``path`` whole or not at all: the caller sees the file only once it is complete."""
    partial = path + ".partial"
    with open(partial, "wb") as file:
        pickle.dump(outcome, file)
    os.replace(partial, path)


def _worker(rank: int, world_size: int, folder: str, timeout: float, call: bytes) -> None:
    os.setsid()  # a process group of its own: the caller stops it together with every process it starts
    path = _result_path(folder, rank)
    try:
        fn, args = pickle.loads(call)  # here, not in spawn's start-up: failing to import them is reported too
        store = dist.FileStore(os.path.join(folder, "store"), world_size)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout))  # fmt: skip
        _save(path, (True, fn(rank, world_size, *args)))
    except BaseException:
        _save(path, (False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _check_importable(fn) -> None:
    """The workers import ``fn`` by module and name: refuse one they cannot import before starting any."""
    name = getattr(fn, "__qualname__", repr(fn))
    if getattr(fn, "__module__", None) == "__main__" and not hasattr(sys.modules["__main__"], "__file__"):
        raise ValueError(
            f"fn={name} is defined in __main__ (a notebook or an interactive session), which the workers cannot "
            "import: define it in a .py module and import it from there"
        )
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise ValueError(
            f"fn={name} cannot be imported by the workers ({error}): define it at the top level of a .py module"
        ) from None


def _poll(workers: list, folder: str, results: dict) -> None:
    """Load the results that have arrived into ``results`` {rank: result}. Raise ``RuntimeError`` if a rank died or
    exited without a result, or failed: a dead one first, else the first to fail (the others often fail because
    of it)."""
    failures = []  # (when, rank, message)
    for rank, worker in enumerate(workers):
        if rank in results:
            continue
        exitcode = worker.exitcode  # read before looking for the file: a worker writes its result, then exits
        path = _result_path(folder, rank)
        if os.path.exists(path):
            with open(path, "rb") as file:
                ok, payload = pickle.load(file)
            if ok:
                results[rank] = payload
            else:
                failures.append((os.stat(path).st_mtime_ns, rank, f"rank {rank} failed:\n{payload}"))
        elif exitcode is not None:
            how = f"was killed by signal {-exitcode}" if exitcode < 0 else f"exited with code {exitcode}"
            failures.append((-1, rank, f"rank {rank} {how} before returning a result"))
    if failures:
        raise RuntimeError(min(failures)[2])


def _signal(worker, sig: int) -> None:
    """Send ``sig`` to ``worker`` and to its process group (whatever it started); either may be gone already."""
    if worker.exitcode is None:  # not reaped yet: its pid is still its own
        os.kill(worker.pid, sig)
    with suppress(ProcessLookupError, PermissionError):  # no such group (left, or not made yet); macOS: only zombies
        os.killpg(worker.pid, sig)


def _stop(workers: list) -> None:
    """Stop every started worker and its process group: SIGTERM, then SIGKILL to what still runs after GRACE_S."""
    started = [w for w in workers if w.pid is not None]
    for w in started:
        _signal(w, signal.SIGTERM)
    end = time.monotonic() + GRACE_S
    for w in started:
        w.join(max(0.0, end - time.monotonic()))
    for w in started:
        _signal(w, signal.SIGKILL)
        w.join()


def run_workers(fn, world_size: int, *args, timeout: float = 60.0) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; returns the results in rank order.

    ``fn``: a function of an importable module (checked before any worker starts). ``timeout``: seconds (a positive
    finite number) for the whole run, also each collective's limit inside the workers. Raises ``RuntimeError``
    (naming the rank) as soon as a rank fails (with its traceback), dies or exits without a result, and
    ``TimeoutError`` when ``timeout`` has passed; either way after stopping every worker and what it started."""
    check_positive_int("world_size", world_size)
    check_number("timeout", timeout, positive=True)
    _check_importable(fn)
    call = pickle.dumps((fn, args))
    context = multiprocessing.get_context("spawn")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        workers = [
            context.Process(target=_worker, args=(rank, world_size, folder, timeout, call), daemon=True)
            for rank in range(world_size)
        ]
        try:
            deadline = time.monotonic() + timeout
            for w in workers:
                w.start()
            while True:
                _poll(workers, folder, results)
                if len(results) == world_size:
                    return [results[rank] for rank in range(world_size)]
                if time.monotonic() > deadline:
                    running = sorted(set(range(world_size)) - set(results))
                    raise TimeoutError(f"workers did not finish within timeout={timeout} s (ranks running: {running})")
                time.sleep(POLL_S)
        finally:
            _stop(workers)
