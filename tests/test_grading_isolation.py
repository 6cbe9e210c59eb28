"""Each submission is graded alone: a broken, forged or hostile one gets its own grade and a one-line reason, harms
no other, and leaves nothing running; every other student is still graded.

One class of assignment 02 is graded in one call (autograde runs one submission at a time, ~10-20 s each).
"""

import copy
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout, suppress
from pathlib import Path

import nbformat
import pytest

from moe_course import grading_sandbox, grading_supervisor
from moe_course.grading import grade_class, main, run_nbgrader
from moe_course.grading_submission import Ungradable, check_notebook, read_notebook
from tests.test_grading import REPO, both, cell, delete, full_marks_except, load, replace, submission

A = "02_moe_layer"
NOTEBOOK = f"{A}_exercises.ipynb"
# Where a submission's process can leave its pid: the one folder outside its own it may write to when confined.
SHARED = Path(grading_sandbox.SHARED_MEMORY)
BLANK = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def append(grade_id: str, code: str):
    def edit(nb):
        target = cell(nb, grade_id)
        target["source"] = "".join(target["source"]) + "\n\n" + code

    return edit


def forge(nb):
    """A cell worth 100 points of a part the assignment does not have, and a test cell pasted twice."""
    bonus = copy.deepcopy(cell(nb, "test_swiglu_expert"))
    bonus["metadata"]["nbgrader"].update(grade_id="bonus", points=100)
    bonus["source"], bonus["id"] = "assert True", "bonus"
    test = cell(nb, "test_swiglu_expert")
    nb["cells"][nb["cells"].index(test) + 1 : 1] = [copy.deepcopy(test), bonus]  # ids repeated: nbformat renames


def mark_graded(grade_id: str):
    """An answer cell that claims to be a locked test worth 50 points."""

    def edit(nb):
        cell(nb, grade_id)["metadata"]["nbgrader"].update(grade=True, locked=True, points=50)

    return edit


def file_of(tmp: Path, name: str, text: str | None) -> Path:
    """A student folder holding ``text`` as the notebook (None: no notebook)."""
    folder = tmp / "inbox" / name
    folder.mkdir(parents=True)
    if text is not None:
        (folder / NOTEBOOK).write_text(text)
    return folder


SEGFAULT = "import ctypes\n\nctypes.string_at(0)  # reads address 0: the kernel dies of SIGSEGV\n"


def c_loop(pid_file: Path) -> str:
    """A cell the interrupt at the time limit cannot stop: SIGINT ignored, then a C call."""
    return f"""import ctypes
import os
import signal

open({str(pid_file)!r}, "w").write(str(os.getpid()))
signal.signal(signal.SIGINT, signal.SIG_IGN)
ctypes.CDLL(None).sleep(1000)
"""


def daemon(pid_file: Path) -> str:
    """A detached process (double fork + setsid) that gives full marks in its gradebook, again and again."""
    return f"""import os
import sqlite3
import time
from pathlib import Path

db = next(p / "gradebook.db" for p in Path.cwd().parents if (p / "gradebook.db").exists())
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        Path({str(pid_file)!r}).write_text(str(os.getpid()))
        while True:
            try:
                with sqlite3.connect(db) as con:
                    con.execute("UPDATE grade SET auto_score = 100")
            except sqlite3.Error:
                pass
            time.sleep(0.05)
    os._exit(0)
os.wait()
"""


def vandal(course_dir: Path) -> str:
    """Look around its course, then try, by absolute path, to read the hidden tests and to write where it must not:
    a line ``DONE <what>`` or ``REFUSED <what>`` for each try."""
    victim = course_dir / "submitted" / "zoe" / A / NOTEBOOK
    return f"""import json
import os
import tempfile
from pathlib import Path

import moe_course

course = Path.cwd().parents[2]  # nbgrader runs it in autograded/<student>/<assignment>/
print("LIBRARY", moe_course.__file__)
tries = {{
    "list its course": lambda: print("TOP", json.dumps(sorted(os.listdir(course)))),
    "read its course's gradebook": lambda: (course / "gradebook.db").read_bytes(),
    "read the class gradebook": lambda: Path({str(course_dir / "gradebook.db")!r}).read_bytes(),
    "read the source notebook": lambda: Path({str(REPO / "solutions" / A / NOTEBOOK)!r}).read_bytes(),
    "write into its copy of the library": lambda: (Path(moe_course.__file__).parent / "planted.py").write_text("1"),
    "write into the library": lambda: Path({str(REPO / "moe_course" / "planted.py")!r}).write_text("1"),
    "blank another student's notebook": lambda: Path({str(victim)!r}).write_text({BLANK!r}),
    "write into the system temporary folder": lambda: Path("/tmp/vandal-was-here").write_text("1"),
    "signal the grader": lambda: os.kill(os.getppid(), 0),
    "write beside its notebook": lambda: Path("notes.txt").write_text("1"),
    "write a temporary file": lambda: tempfile.NamedTemporaryFile().write(b"1"),
}}
for what, attempt in tries.items():
    try:
        attempt()
        print("DONE", what)
    except OSError as e:
        print("REFUSED", what, type(e).__name__)
"""


def pid_alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return False
    return True


def printed_lines(notebook: dict, grade_id: str, key: str) -> list:
    text = "".join("".join(o.get("text", "")) for o in cell(notebook, grade_id)["outputs"])
    return [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith(key + " ")]


def printed(notebook: dict, grade_id: str, key: str) -> str:
    return printed_lines(notebook, grade_id, key)[0]


def hand_in(course: Path, folder: Path) -> None:
    shutil.copytree(folder, course / "submitted" / folder.name / A)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The instructors' command on a course whose submitted/ holds a class of assignment 02: what it printed, and
    the grades."""
    tmp = tmp_path_factory.mktemp("isolation")
    pids = {name: SHARED / f"moe-course-test-{os.getpid()}-{name}.pid" for name in ("c_loop", "daemon")}
    course = tmp / "course"
    for folder in ("solutions", "feedback_templates"):
        shutil.copytree(REPO / folder, course / folder)
    config = (REPO / "nbgrader_config.py").read_text()
    (course / "nbgrader_config.py").write_text(config + "\nc.Execute.timeout = 15  # the C loop's cost\n")
    victim = course / "submitted" / "zoe" / A / NOTEBOOK
    for folder in [
        submission(tmp, "alice", A),
        file_of(tmp, "broken_json", '{"cells": ['),
        file_of(tmp, "empty", ""),
        file_of(tmp, "braces", "{}"),
        file_of(
            tmp, "other_assignment", (REPO / "exercises" / "03_routing" / "03_routing_exercises.ipynb").read_text()
        ),
        file_of(tmp, "no_notebook", None),
        submission(
            tmp,
            "forger",
            A,
            both(
                forge, mark_graded("dispatch_order"), delete("balance_coefficient"), delete("test_balance_coefficient")
            ),
        ),
        submission(tmp, "segfault", A, replace("moe_forward", SEGFAULT)),
        submission(tmp, "c_loop", A, replace("balance_coefficient", c_loop(pids["c_loop"]))),
        submission(tmp, "daemon", A, replace("swiglu_expert", daemon(pids["daemon"]))),
        submission(tmp, "vandal", A, append("swiglu_expert", vandal(course))),
        submission(tmp, "zoe", A),  # graded after or beside the vandal
    ]:
        hand_in(course, folder)
    zoe = victim.read_bytes()
    planted = [REPO / "moe_course" / "planted.py", Path("/tmp/vandal-was-here")]
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            grades = grade_class(course, A, jobs=2)
        yield course, grades, out.getvalue() + err.getvalue(), pids, zoe, [p for p in planted if p.exists()]
    finally:  # should the isolation fail, leave nothing behind
        for path in planted:
            path.unlink(missing_ok=True)
        for pid_file in pids.values():
            with suppress(FileNotFoundError, ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            pid_file.unlink(missing_ok=True)


def parts(grades, student) -> dict:
    return {p.part: (p.score, p.max_score) for p in grades[student]}


def test_solutions_score_full_marks_with_no_problem(graded):
    _, grades, printed_out, *_ = graded
    for student in ("alice", "zoe"):
        full_marks_except(parts(grades, student))
        assert sum(p.max_score for p in grades[student]) == 14 and grades[student].problems == []
        assert re.search(rf"^{student} +14.0  14.0$", printed_out, re.M)


@pytest.mark.parametrize(
    "student, reason",
    [
        ("broken_json", f"{NOTEBOOK} is not valid JSON (Expecting value: line 1 column 12 (char 11))"),
        ("empty", f"{NOTEBOOK} is empty"),
        ("braces", f"{NOTEBOOK} is not a Jupyter notebook ("),
        ("other_assignment", f"{NOTEBOOK} has none of the assignment's answer or test cells"),
        ("no_notebook", f"no {NOTEBOOK} in the submission"),
    ],
)
def test_an_unreadable_notebook_scores_zero_with_its_reason(graded, student, reason):
    course, grades, printed_out, *_ = graded
    assert len(grades[student]) == 5 and all(p.score == 0 for p in grades[student])
    assert len(grades[student].problems) == 1 and grades[student].problems[0].startswith(reason)
    assert f"{student} " in printed_out and f"  - {reason}" in printed_out
    assert grades[student].log is None  # nbgrader never ran it
    assert not (course / "feedback" / student).exists()


def test_nothing_prints_a_traceback(graded):
    assert "Traceback" not in graded[2] and "Warning" not in graded[2]


def test_forged_metadata_adds_no_points_and_breaks_nothing(graded):
    _, grades, *_ = graded
    full_marks_except(parts(grades, "forger"), "test_balance_coefficient")  # that answer and its test were deleted
    assert sum(p.max_score for p in grades["forger"]) == 14
    assert grades["forger"].problems == [
        f"{NOTEBOOK}: cell 7 repeats cell test_swiglu_expert, which counts once: not graded",
        f"{NOTEBOOK}: cell 8 names a part 'bonus' the assignment does not have: not graded",
        f"{NOTEBOOK}: cell 15 (dispatch_order) had its grading settings changed: restored",
        f"{NOTEBOOK}: the test cell test_balance_coefficient was missing: put back",
    ]


def test_a_dead_kernel_keeps_the_parts_before_it(graded):
    _, grades, *_ = graded
    full_marks_except(parts(grades, "segfault"), "test_moe_forward", "test_balance_coefficient")
    assert grades["segfault"].problems == [
        "the kernel died in moe_forward (the process exited or crashed); the cells after it did not run and score 0"
    ]
    assert grades["segfault"].log.read_text().count("Kernel died") >= 1  # nbgrader's log, kept for the instructor


def test_a_cell_that_ignores_the_interrupt_is_stopped_and_its_kernel_killed(graded):
    course, grades, _, pids, *_ = graded
    full_marks_except(parts(grades, "c_loop"), "test_balance_coefficient")
    assert grades["c_loop"].problems == [
        "balance_coefficient ran past the 15 s limit and ignored the interrupt: its kernel was killed; "
        "the cells after it did not run and score 0"
    ]
    assert not pid_alive(pids["c_loop"])
    html = (course / "feedback" / "c_loop" / A / f"{A}_exercises.html").read_text()
    assert "ignored the interrupt" in html and "not run: balance_coefficient ran past" in html


def test_a_detached_process_dies_with_its_grading_and_changes_no_grade(graded):
    _, grades, _, pids, *_ = graded
    assert not pid_alive(pids["daemon"])
    full_marks_except(parts(grades, "daemon"), "test_swiglu_expert")  # its answer was the daemon
    assert grading_supervisor.descendants(os.getpid()) == []  # no kernel, no supervisor left either


def test_a_submission_sees_only_its_own_course(graded):
    course, grades, *_ = graded
    notebook = load(course / "autograded" / "vandal" / A / NOTEBOOK)
    listings = printed_lines(notebook, "swiglu_expert", "TOP")
    if not listings:  # confined: listing its course was refused
        assert "list its course PermissionError" in printed_lines(notebook, "swiglu_expert", "REFUSED")
    for listed in listings:
        assert not set(json.loads(listed)) & {"solutions", "exercises", "feedback", "source", "release"}
    full_marks_except(parts(grades, "vandal"))


@pytest.mark.skipif(not grading_sandbox.abi(), reason="no Landlock on this machine: grading runs unconfined")
def test_a_submission_reads_and_writes_only_its_own_folders(graded):
    course, grades, *_, planted = graded
    notebook = load(course / "autograded" / "vandal" / A / NOTEBOOK)
    refused = printed_lines(notebook, "swiglu_expert", "REFUSED")
    signals = ["signal the grader"]  # Landlock keeps signals in from ABI 6
    done = printed_lines(notebook, "swiglu_expert", "DONE")
    assert done == [
        *([] if grading_sandbox.abi() >= 6 else signals),
        "write beside its notebook",
        "write a temporary file",
    ]
    assert [line.rsplit(" ", 1)[0] for line in refused] == [
        "list its course",
        "read its course's gradebook",
        "read the class gradebook",
        "read the source notebook",
        "write into its copy of the library",
        "write into the library",
        "blank another student's notebook",
        "write into the system temporary folder",
        *(signals if grading_sandbox.abi() >= 6 else []),
    ]
    assert all(line.endswith(" PermissionError") for line in refused) and planted == []
    library = printed(notebook, "swiglu_expert", "LIBRARY")
    assert "/lib/moe_course/" in library and not library.startswith(str(REPO))  # the course's copy, imported


def test_a_submission_cannot_change_another_students_work(graded):
    course, grades, _, _, zoe, _ = graded
    assert (course / "submitted" / "zoe" / A / NOTEBOOK).read_bytes() == zoe  # submitted/ holds what was graded
    full_marks_except(parts(grades, "zoe"))  # in a course of its own, written afresh from memory


def test_the_course_gradebook_holds_every_student_and_exports(graded):
    course, grades, *_ = graded
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s.student.id: s.score for s in gb.assignment_submissions(A)}
    assert scores == {student: sum(p.score for p in grade) for student, grade in grades.items()}
    run_nbgrader(course, "export", "--to=grades.csv")
    assert len((course / "grades.csv").read_text().splitlines()) == 1 + len(grades)
    assert (course / "feedback" / "alice" / A / f"{A}_exercises.html").is_file()


def test_the_instructors_command_rejects_a_bad_number_of_jobs(tmp_path, capsys):
    shutil.copytree(REPO / "solutions", tmp_path / "solutions")
    hand_in(tmp_path, submission(tmp_path, "alice", A))
    with pytest.raises(SystemExit):
        main([A, "--class", "--jobs", "0", "--repo", str(tmp_path)])
    assert "jobs must be a positive integer, got 0" in capsys.readouterr().err


def test_the_instructors_command_names_a_course_without_submissions(tmp_path, capsys):
    shutil.copytree(REPO / "solutions", tmp_path / "solutions")
    with pytest.raises(SystemExit):
        main([A, "--class", "--repo", str(tmp_path)])
    assert f"put each student's notebooks in submitted/<student>/{A}/" in capsys.readouterr().err


# The checks on a notebook before grading, without nbgrader.
def released():
    return nbformat.read(REPO / "exercises" / A / NOTEBOOK, as_version=4)


def solution_bytes(edit=None) -> bytes:
    nb = load(REPO / "solutions" / A / NOTEBOOK)
    if edit:
        edit(nb)
    return json.dumps(nb).encode()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "is empty"),
        (b" \n", "is empty"),
        (b"\xff\xfe", "is not a text file"),
        (b"[1, 2", "is not valid JSON"),
        (b"{}", "is not a Jupyter notebook"),
        (b"[]", "is not a Jupyter notebook"),
        (b'{"nbformat": 99, "cells": []}', "is not a Jupyter notebook"),
    ],
)
def test_a_file_that_is_not_a_notebook_is_named(data, reason):
    with pytest.raises(Ungradable, match=f"^x.ipynb {reason}"):
        read_notebook("x.ipynb", data)


def test_forged_cells_lose_their_grading_settings():
    nb, changes = check_notebook(NOTEBOOK, solution_bytes(both(forge, mark_graded("dispatch_order"))), released())
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    assert ids.count("test_swiglu_expert") == 1 and "bonus" not in ids
    assert cell(nb, "dispatch_order")["metadata"]["nbgrader"] == cell(released(), "dispatch_order").metadata.nbgrader
    assert len(changes) == 3


def test_a_missing_test_cell_is_put_back_after_the_cell_before_it():
    nb, changes = check_notebook(
        NOTEBOOK, solution_bytes(both(delete("route_top_k"), delete("test_route_top_k"))), released()
    )
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    assert ids[ids.index("test_route_top_k") - 1] == "route_top_k_task" and "route_top_k" not in ids
    assert changes == [f"{NOTEBOOK}: the test cell test_route_top_k was missing: put back"]


def test_an_honest_notebook_is_left_as_it_is():
    nb, changes = check_notebook(NOTEBOOK, solution_bytes(), released())
    assert changes == [] and [c.source for c in nb.cells] == [
        "".join(c["source"]) for c in load(REPO / "solutions" / A / NOTEBOOK)["cells"]
    ]


def test_the_learner_command_says_why_and_prints_no_traceback(tmp_path, capfd):
    """`make grade` on a notebook that is not JSON: scores 0, one line says why, and no traceback."""
    shutil.copy(REPO / "nbgrader_config.py", tmp_path)
    for folder in ("solutions", "feedback_templates"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    copy_of = tmp_path / "workspace" / "exercises" / A
    copy_of.mkdir(parents=True)
    (copy_of / NOTEBOOK).write_text("{")
    assert main([A, "--repo", str(tmp_path)]) == 0
    out, err = capfd.readouterr()
    assert f"{NOTEBOOK} is not valid JSON" in out and "total" in out
    assert "Traceback" not in out + err


# The supervisor alone, without nbgrader.
DETACH = """import os, sys, time
if os.fork() == 0:
    os.setsid()
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(1000)
"""
SUBREAPER_TIME_UP = """import os, subprocess, sys, time
from pathlib import Path

from moe_course import grading_sandbox, grading_supervisor

detach, pid_file = sys.argv[1], Path(sys.argv[2])
grading_supervisor.become_subreaper()
# its child, detached, is re-parented here (and holds none of the test's pipes open)
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
subprocess.run([sys.executable, "-c", detach, pid_file], check=True, **quiet)
while not pid_file.exists() or not pid_file.read_text():
    time.sleep(0.05)
assert int(pid_file.read_text()) in grading_supervisor.descendants(os.getpid())
grading_supervisor.time_up()
"""


def test_time_up_kills_what_was_detached_below_the_supervisor(tmp_path):
    pid_file = tmp_path / "daemon.pid"
    cmd = [sys.executable, "-c", SUBREAPER_TIME_UP, DETACH, str(pid_file)]
    proc = subprocess.run(cmd, capture_output=True, timeout=60)
    try:
        assert proc.returncode == grading_supervisor.TIMED_OUT, proc.stderr
        assert not pid_alive(pid_file)
    finally:
        with suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_the_supervisor_stops_nbgrader_when_time_is_up():
    cmd = [sys.executable, "-m", "moe_course.grading_supervisor", "0.2", "--version"]  # importing nbgrader takes longer
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode == grading_supervisor.TIMED_OUT
