"""Grading runs in the guarded kernel (moe_course/grading_kernel.py): the known in-notebook cheats score what the
notebook deserves, in bounded time, and a correct answer that writes to stderr keeps its marks."""

import json
from pathlib import Path

import pytest

from moe_course.grading import grade_submissions
from tests.test_grading import REPO, cell, full_marks_except, load, replace, submission

# Each cheat is one cell's worth of code that, in IPython's own kernel, changes how every later cell runs.
CHEATS = {
    "input_transformer": "get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])\n",
    "ast_transformer": """import ast


class SwallowErrors(ast.NodeTransformer):
    def visit_Module(self, node):
        handler = ast.ExceptHandler(type=None, name=None, body=[ast.Pass()])
        body = [ast.Try(body=[statement], handlers=[handler], orelse=[], finalbody=[]) for statement in node.body]
        return ast.fix_missing_locations(ast.Module(body=body, type_ignores=[]))


get_ipython().ast_transformers.append(SwallowErrors())
""",
    "builtins_bool": "import builtins\n\nbuiltins.bool = lambda v=False: True\n",
}
# A correct router that reports on stderr, as print and as logging (whose default handler writes to stderr).
NOISY_ROUTER = """import logging
import sys


def route_top_k(logits, k):
    print(f"route_top_k: {logits.shape[0]} tokens", file=sys.stderr)
    logging.warning("route_top_k: k=%d", k)
    weights, indices = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
    return indices, weights / weights.sum(dim=-1, keepdim=True)
"""
# A wrong router (the softmax over the tokens, not the experts) with the notebook's `torch` rebound to one whose
# comparisons always agree: every check of route_top_k's tests would pass if they used the rebound name.
REBOUND_TORCH = """def route_top_k(logits, k):
    top_p, indices = torch.topk(torch.softmax(logits, dim=0), k, dim=-1)
    return indices, top_p / top_p.sum(dim=-1, keepdim=True)


import types

torch = types.SimpleNamespace(**{name: getattr(torch, name) for name in dir(torch) if not name.startswith("_")})
torch.allclose = torch.equal = lambda *args, **kwargs: True
"""
FIRST_ANSWER = {"02_moe_layer": "swiglu_expert", "04_load_balancing": "switch_loss"}
# Which cheats each assignment is graded with: builtins.bool stalls the kernel whatever the notebook, so 02 suffices.
GRADED_WITH = {"02_moe_layer": sorted(CHEATS), "04_load_balancing": ["ast_transformer", "input_transformer"]}


def exercise_with(tmp: Path, name: str, assignment: str, code: str) -> Path:
    """A student folder holding the untouched exercise, ``code`` added to its first answer cell."""
    folder = tmp / "inbox" / name
    folder.mkdir(parents=True)
    nb = load(REPO / "exercises" / assignment / f"{assignment}_exercises.ipynb")
    answer = cell(nb, FIRST_ANSWER[assignment])
    answer["source"] = "".join(answer["source"]) + "\n\n\n" + code
    (folder / f"{assignment}_exercises.ipynb").write_text(json.dumps(nb))
    return folder


def grade(tmp: Path, assignment: str, students: dict) -> tuple:
    """Autograde ``students`` (see :func:`grade_submissions`): ``(course folder, {student: {part: (score, max)}})``."""
    course = tmp / "course"
    course.mkdir()
    scores = grade_submissions(REPO, assignment, students, course, "--Execute.timeout=15", jobs=2)
    return course, {s: {p.part: (p.score, p.max_score) for p in parts} for s, parts in scores.items()}


def cheaters(tmp: Path, assignment: str) -> dict:
    return {name: exercise_with(tmp, name, assignment, CHEATS[name]) for name in GRADED_WITH[assignment]}


@pytest.fixture(scope="module")
def graded_02(tmp_path_factory):
    """Assignment 02: the cheats, the solution with a router that writes to stderr, and a wrong router whose
    notebook rebinds `torch`."""
    a, tmp = "02_moe_layer", tmp_path_factory.mktemp("cheats02")
    noisy = submission(tmp, "noisy", a, replace("route_top_k", NOISY_ROUTER))
    rebound = submission(tmp, "rebound", a, replace("route_top_k", REBOUND_TORCH))
    return grade(tmp, a, {**cheaters(tmp, a), "noisy": noisy, "rebound": rebound})


@pytest.fixture(scope="module")
def graded_04(tmp_path_factory):
    a, tmp = "04_load_balancing", tmp_path_factory.mktemp("cheats04")
    return grade(tmp, a, cheaters(tmp, a))


def autograded(course: Path, student: str, assignment: str) -> dict:
    return load(course / "autograded" / student / assignment / f"{assignment}_exercises.ipynb")


@pytest.mark.parametrize("assignment,cheat", [(a, cheat) for a, cheats in GRADED_WITH.items() for cheat in cheats])
def test_a_cell_cannot_rewrite_the_cells_after_it(request, assignment, cheat):
    """The untouched exercise scores 0 with the cheat as without: every test cell ran and failed, none timed out."""
    course, by_part = request.getfixturevalue(f"graded_{assignment[:2]}")
    scores = [score for score, _ in by_part[cheat].values()]
    assert len(scores) >= 4 and scores == [0] * len(scores), by_part[cheat]
    for c in autograded(course, cheat, assignment)["cells"]:
        if c["cell_type"] == "code" and c["metadata"].get("nbgrader", {}).get("grade"):
            errors = [out["ename"] for out in c["outputs"] if out["output_type"] == "error"]
            assert errors == ["NotImplementedError"], (c["metadata"]["nbgrader"]["grade_id"], errors)


def test_stderr_from_a_correct_answer_keeps_full_marks(graded_02):
    course, by_part = graded_02
    full_marks_except(by_part["noisy"])
    test_cell = cell(autograded(course, "noisy", "02_moe_layer"), "test_route_top_k")
    printed = "".join("".join(out["text"]) for out in test_cell["outputs"] if out["output_type"] == "stream")
    assert "route_top_k: 10 tokens" in printed and "WARNING:root:route_top_k: k=2" in printed


def test_tests_use_the_set_up_names_not_those_an_answer_rebound(graded_02):
    """Each test cell runs after the set-up cell once more: the rebound `torch` is gone, the wrong router fails."""
    _, by_part = graded_02
    full_marks_except(by_part["rebound"], "test_route_top_k")
