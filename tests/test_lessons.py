"""What every lesson and assignment notebook must hold for its numbers to be a learner's too."""

import ast
import json
import os
from pathlib import Path

import nbformat
import pytest

from moe_course.notebooks import execute, main

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "notebooks").glob("*.ipynb"))
ASSIGNMENTS = sorted((REPO / "solutions").glob("*/*.ipynb"))


def code_cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", [p for p in LESSONS + ASSIGNMENTS if not p.name.startswith("00_")], ids=str)
def test_the_set_up_cell_sets_the_course_thread_policy(path):
    """The first cell after the Colab cell imports the library and calls use_course_threads(), so that every cell
    of the notebook (training, generation, timings) runs on the course's thread count."""
    assert "use_course_threads()" in code_cells(path)[1]


@pytest.mark.parametrize("path", LESSONS, ids=str)
def test_lessons_are_made_with_other_cpu_kernels_than_the_suite_checks_them_with(path):
    """`make lessons` records the kernel set that made a lesson's outputs. The suite runs the lessons on PyTorch's
    generic kernels (conftest.py sets ATEN_CPU_CAPABILITY=default unless told otherwise), so outputs made with a
    CPU's own kernels (AVX2, AVX-512, Arm's) are checked under others, and nbval fails on a checked output that only
    the maker's kind of CPU reproduces."""
    made_on = json.loads(path.read_text())["metadata"].get("moe_course", {}).get("outputs_made_on")
    assert made_on, f"{path.name} has no record of what made its outputs: run `make lessons LESSONS={path}`"
    assert made_on["cpu_capability"] != "DEFAULT", f"{path.name} was made with the kernels the suite checks it with"


@pytest.mark.parametrize("path", LESSONS, ids=str)
def test_printed_library_source_is_checked(path):
    """A cell that prints the library's source (``inspect.getsource``) is compared with its stored output by nbval,
    so a library change that leaves the lesson showing old code fails the suite."""
    for source in code_cells(path):
        if "inspect.getsource(" in source:
            assert source.startswith("# NBVAL_CHECK_OUTPUT\n"), source


def test_the_roofline_explorer_redraws_when_a_slider_is_released():
    """Lesson 06's explorer draws two log-log plots per value, more slowly than a dragged slider sends values: updated
    continuously, its plot lags several moves behind the slider."""
    sources = [s for s in code_cells(REPO / "notebooks" / "06_kernels.ipynb") if "Slider(" in s]
    calls = [n for s in sources for n in ast.walk(ast.parse(s)) if isinstance(n, ast.Call)]
    sliders = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr.endswith("Slider")]
    assert sliders
    for slider in sliders:
        continuous = [k.value for k in slider.keywords if k.arg == "continuous_update"]
        assert [ast.literal_eval(v) for v in continuous] == [False], ast.unparse(slider)


def test_make_lessons_runs_a_notebook_in_place_and_records_the_kernels_that_made_it(tmp_path, capsys):
    path = tmp_path / "lesson.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")]), path)
    assert execute(path, dict(os.environ, ATEN_CPU_CAPABILITY="default")) > 0
    done = nbformat.read(path, as_version=4)
    assert done.cells[0].outputs[0].text == "42\n"
    made_on = done.metadata["moe_course"]["outputs_made_on"]
    assert made_on["cpu_capability"] == "DEFAULT" and made_on["cpu"] and made_on["torch"]
    assert main([str(tmp_path / "missing.ipynb")]) == 2 and "make lessons" in capsys.readouterr().err
