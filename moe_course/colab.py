"""The course on Google Colab: its public address, the set-up cell every notebook carries, the "Open in Colab" links.

``COURSE_URL`` is the one place that names where the course is published. After changing it, run
``python -m moe_course.colab``: it writes the set-up cell (below the title) into every lesson and assignment
source; then ``make exercises`` releases the assignments, and the README's links follow ``colab_link``
(``tests/test_colab.py`` holds both to this module).
"""

import sys
from pathlib import Path

import nbformat

from .workspace import course_notebooks

COURSE_URL = "https://github.com/moe-course/moe-course"
BRANCH = "main"
MARKER = "# Colab only"  # the set-up cell's first words: how a notebook's copy of it is found

SETUP_CELL = f'''{MARKER} (elsewhere `make lab` has set everything up, and this cell does nothing): fetch the course and
# install its library, keeping the torch, triton, numpy, matplotlib and ipywidgets that Colab ships.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    COURSE_URL, COURSE_DIR = "{COURSE_URL}", "/content/moe-course"
    steps = [[sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", COURSE_DIR]]
    if not os.path.isdir(f"{{COURSE_DIR}}/.git"):
        steps.insert(0, ["git", "clone", "-q", "--depth", "1", "--branch", "{BRANCH}", COURSE_URL, COURSE_DIR])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:  # stop here, not with a confusing error in a later cell
            raise RuntimeError(
                f"Colab set-up failed: {{' '.join(step)}}\\n{{done.stderr.strip()}}\\n"
                "Check your connection (and that the course is at the address above), then run this cell again."
            )
    sys.path.insert(0, COURSE_DIR)  # importable now, without restarting the runtime'''


def colab_link(path: str) -> str:
    """The "Open in Colab" address of ``path`` (a notebook, relative to the repository root)."""
    return f"https://colab.research.google.com/github/{COURSE_URL.removeprefix('https://github.com/')}/blob/{BRANCH}/{path}"


def is_setup_cell(cell) -> bool:
    return cell.cell_type == "code" and cell.source.startswith(MARKER)


def with_setup_cell(nb):
    """``nb`` (an nbformat notebook) with exactly one set-up cell, the current one, right after its title cell."""
    old = [c for c in nb.cells if is_setup_cell(c)]
    cell = old[0] if old else nbformat.v4.new_code_cell(id="colab-setup")
    cell.source = SETUP_CELL
    nb.cells = [c for c in nb.cells if not is_setup_cell(c)]
    nb.cells.insert(1, cell)
    return nb


def main(repo: Path = Path(".")) -> None:
    for path in course_notebooks(repo, "solutions"):  # the assignments' sources: `make exercises` releases them
        nbformat.write(with_setup_cell(nbformat.read(path, as_version=4)), path)
        print(f"set-up cell written: {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
