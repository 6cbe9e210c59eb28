"""The Colab set-up cell: one address, in every notebook below its title, and a clear stop when set-up fails."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from moe_course.colab import COURSE_URL, SETUP_CELL, colab_link, is_setup_cell
from moe_course.workspace import course_notebooks

REPO = Path(__file__).resolve().parents[1]
RELEASED = sorted((REPO / "exercises").glob("*/*.ipynb"))


@pytest.mark.parametrize("path", course_notebooks(REPO, "solutions") + RELEASED, ids=lambda p: p.name)
def test_every_notebook_has_the_setup_cell_below_its_title(path):
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    assert cells[1].source == SETUP_CELL
    assert sum(is_setup_cell(c) for c in cells) == 1
    assert "http" not in "".join(c.source for c in cells if c.cell_type == "code" and not is_setup_cell(c))


def test_readme_opens_every_lesson_in_colab():
    readme = (REPO / "README.md").read_text()
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        assert colab_link(f"notebooks/{path.name}") in readme, path.name
    assert colab_link("notebooks/00_setup.ipynb").startswith("https://colab.research.google.com/github/")
    assert COURSE_URL.removeprefix("https://github.com/") in colab_link("x.ipynb")


def run_setup_cell(monkeypatch, tmp_path, outcomes):
    """Run the set-up cell as Colab would, with ``subprocess.run`` answering ``outcomes`` (return codes) in turn.

    Returns the commands it ran."""
    monkeypatch.setitem(sys.modules, "google.colab", object())
    monkeypatch.setattr(sys, "path", list(sys.path))
    ran = []

    def fake_run(cmd, **kwargs):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, outcomes[len(ran) - 1], "", "fatal: repository not found")

    monkeypatch.setattr(subprocess, "run", fake_run)
    exec(SETUP_CELL.replace("/content/moe-course", str(tmp_path / "moe-course")), {})
    return ran


def test_setup_clones_then_installs_and_makes_the_course_importable(monkeypatch, tmp_path):
    ran = run_setup_cell(monkeypatch, tmp_path, [0, 0])
    assert [cmd[0] for cmd in ran] == ["git", sys.executable]
    assert ran[0][-2:] == [COURSE_URL, str(tmp_path / "moe-course")]
    assert str(tmp_path / "moe-course") in sys.path


def test_setup_stops_with_a_clear_message_when_the_clone_fails(monkeypatch, tmp_path):
    with pytest.raises(
        RuntimeError, match="(?s)Colab set-up failed: git clone .*repository not found.*run this cell again"
    ):
        run_setup_cell(monkeypatch, tmp_path, [128, 0])


def test_setup_skips_the_clone_when_the_course_is_there(monkeypatch, tmp_path):
    (tmp_path / "moe-course" / ".git").mkdir(parents=True)
    ran = run_setup_cell(monkeypatch, tmp_path, [0])
    assert [cmd[0] for cmd in ran] == [sys.executable]


def test_setup_does_nothing_outside_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran a command outside Colab"))
    exec(SETUP_CELL, {})
