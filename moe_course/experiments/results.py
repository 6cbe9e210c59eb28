"""The experiments' results files: JSON in ``data/results/``, each with what made it.

A file holds ``results`` (the numbers, the same for the same settings and seeds on the same kind of machine),
``settings`` and ``seeds`` (how to make them again), ``provenance`` (the git commit, and what decides a CPU's numbers:
the processor, the kernel set torch used, its threads, the platform and the library versions, from
:func:`moe_course.env.machine`) and ``timing`` (seconds per part: they vary from run to run, so they stay out of
``results``). Tensors too large for JSON (a model's weights) go to a ``.pt`` file of the same name beside it.
"""

import json
import re
import subprocess
from pathlib import Path

import torch

from ..env import machine

RESULTS = Path(__file__).resolve().parents[2] / "data" / "results"


def git_commit(repo: Path = RESULTS.parents[1]) -> str:
    """The commit checked out in ``repo``, with ``+changes`` when a tracked file differs from it (new files, such as
    the results being written, do not count); ``unknown`` outside a git checkout."""
    git = dict(cwd=repo, capture_output=True, text=True, check=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **git)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("+changes" if status.stdout.strip() else "")


def write_results(
    path: Path, results: dict, settings: dict, seeds: list, timing: dict, tensors: dict | None = None
) -> Path:
    """Write the file at ``path`` (its folder created if need be), and ``tensors`` (name -> tensor) beside it with the
    suffix ``.pt``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tensors is not None:
        torch.save(tensors, path.with_suffix(".pt"))
    payload = {
        "provenance": {"commit": git_commit(), **machine()},
        "settings": settings,
        "seeds": seeds,
        "timing": timing,
        "results": results,
    }
    # one line per innermost list of numbers: a per-step curve takes one line, not one per step
    text = re.sub(r"\[[^\[\]{}\"]*\]", lambda m: json.dumps(json.loads(m.group())), json.dumps(payload, indent=1))
    path.write_text(text + "\n")
    return path


def read_results(path: Path) -> dict:
    """The whole file at ``path``, as written by :func:`write_results`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path {path} is not a results file: run `python -m moe_course.experiments capstone` first")
    return json.loads(path.read_text())


def read_tensors(path: Path) -> dict:
    """The tensors written beside the results file at ``path``."""
    tensors = Path(path).with_suffix(".pt")
    if not tensors.is_file():
        raise ValueError(f"path {path} has no tensors beside it ({tensors.name})")
    return torch.load(tensors, weights_only=True)
