"""Execute the lessons as a learner's Run All does, and record what made their outputs.

    python -m moe_course.notebooks notebooks/08_inference.ipynb [...]    # or: make lessons

Each notebook runs top to bottom in a fresh kernel, in its own folder, and is written back with its outputs and,
in ``metadata.moe_course.outputs_made_on``, the CPU and the kernel set PyTorch used (``cpu_capability``). The
outputs that nbval compares (cells marked ``# NBVAL_CHECK_OUTPUT``) must come out alike on every CPU, and
``make test`` checks that by running the notebooks under another kernel set than the one recorded here. Prints the
seconds each notebook took (the lessons' budget is a minute on 2 cores).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TIMEOUT = 600  # seconds per cell

# What the kernel reports about its CPU, run with the same environment as the kernel.
PROBE = "import json, torch; from moe_course.env import cpu_name; " + (
    "print(json.dumps({'cpu': cpu_name(), 'cpu_capability': torch.backends.cpu.get_cpu_capability(), "
    "'torch': torch.__version__}))"
)


def made_on(env: dict) -> dict:
    """The CPU, the kernel set and torch's version a kernel started with ``env`` computes with."""
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def execute(path: Path, env: dict | None = None) -> float:
    """Run the notebook at ``path`` in place; returns its seconds."""
    path = Path(path)
    env = dict(os.environ if env is None else env)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    client.execute(env=env)
    seconds = time.perf_counter() - start
    nb.metadata["moe_course"] = {"outputs_made_on": made_on(env)}
    nbformat.write(nb, path)
    return seconds


def main(argv=None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths or not all(p.suffix == ".ipynb" and p.is_file() for p in paths):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    for path in paths:
        print(f"{path}: {execute(path):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
