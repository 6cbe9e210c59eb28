"""Autograde assignments with nbgrader, hidden tests included, each submission alone in a throw-away course.

The learner's command (``make grade ASSIGNMENT=02_moe_layer`` or ``moe-course-grade 02_moe_layer``) grades the
learner's copy in ``workspace/exercises/<assignment>/`` (see :mod:`moe_course.workspace`) and prints the score of
each graded part, what went wrong if anything did (in a line, no traceback), and the path of an HTML feedback
report. The repository is never written to except ``feedback/``; the gradebook lives in a temporary course.

The instructors' command (``make autograde ASSIGNMENT=02_moe_layer``, ``python -m moe_course.grading --class
02_moe_layer``) grades every ``submitted/<student>/<assignment>/`` of the course the same way and merges the results
into its ``gradebook.db``, ``autograded/`` and ``feedback/`` (:func:`grade_submissions`).

The report names each graded part (``feedback_templates/course_feedback``, set in ``nbgrader_config.py``) and
typesets its math offline: ``feedback_templates/course_feedback_offline`` loads MathJax from ``feedback/mathjax/``,
a copy of the one the jupyter-server-mathjax package ships, instead of nbgrader's CDN.

The assignment notebooks import :func:`safety_net_passes` from here, so this module stays light to import: nbgrader
and jupyter-server-mathjax (the ``course`` extra, missing where only the library is installed, e.g. on Colab) are
imported by the functions that use them.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import grading_sandbox, grading_supervisor
from .checks import check_positive_int


def safety_net_passes(check: Callable[[], object], seconds: float = 5) -> bool:
    """Whether a learner's answer passes an assignment's *safety net*, the quick check after a graded part that
    puts the library's version in place of an answer that does not work yet, so that the later parts still run.

    Returns True if ``check()`` returns True (or anything truthy); False if it returns False (or anything falsy),
    raises an exception, or runs longer than ``seconds`` (an answer stuck in a loop). ``KeyboardInterrupt`` is not
    caught: interrupting the kernel still stops the cell.

    The time limit is a ``SIGALRM`` timer, which Python handles on the main thread only: a notebook cell runs
    there (also under nbgrader). Called from another thread, or where there is no ``SIGALRM`` (Windows), the check
    runs without a time limit. The previous ``SIGALRM`` handler is restored afterwards, and a timer that was
    already running is set going again with the time it had left.
    """
    timed = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not timed:
        try:
            return bool(check())
        except Exception:
            return False

    def stop(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    start = time.monotonic()
    pending, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return bool(check())
    except Exception:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if pending:  # a timer someone else set: let it run out as it would have (at once if it is already due)
            signal.setitimer(signal.ITIMER_REAL, max(pending - (time.monotonic() - start), 1e-3), interval)


@dataclass
class PartScore:
    """The score of one graded test cell (``part``: its grade_id) of one notebook, and the part's ``title``, as the
    feedback report names it (:func:`part_titles`)."""

    notebook: str
    part: str
    title: str
    score: float
    max_score: float


class Grade(list):
    """One student's grade: the list of their :class:`PartScore`, and ``problems``, a line for each thing that went
    wrong that the scores alone do not say (a notebook that could not be read, a forged cell, a cell stopped at the
    time limit, a kernel that died), never a traceback. ``log``: nbgrader's log of the grading, if it ran."""

    def __init__(self, parts: list, problems: list, log: Path | None = None):
        super().__init__(parts)
        self.problems = problems
        self.log = log


@dataclass
class Outcome:
    """What grading one submission alone gave, held in memory until every submission is graded: nothing on disk
    that a later submission's code could change. ``grades``: ``{(notebook, grade_id): (auto_score, needs manual
    grade)}``; ``comments``: ``{(notebook, grade_id): auto_comment}``; ``notebooks``: ``{file name: autograded
    notebook}``; ``log``: nbgrader's log."""

    problems: list
    grades: dict = field(default_factory=dict)
    comments: dict = field(default_factory=dict)
    timestamp: datetime | None = None
    notebooks: dict = field(default_factory=dict)
    log: bytes | None = None


LIBRARY = "lib"  # the folder of a submission's course that holds its copy of the library


def part_titles(nb) -> dict:
    """``{grade_id: title}`` of the graded cells of the notebook ``nb``, by the rule of the feedback report's summary
    (``feedback_templates/course_feedback``): the last "## " heading of a locked markdown cell above the cell, less
    its " (N points)" (the score says them); the grade_id where no heading is above. Locked cells only: autograding
    restores them from the source, so a learner's own cells cannot rename a part."""
    titles, title = {}, None
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "markdown" and meta.get("locked"):
            for line in cell.source.splitlines():
                if line.startswith("## "):
                    title = line[3:].rsplit(" (", 1)[0] if line.endswith(" points)") else line[3:]
        if meta.get("grade"):
            titles[meta["grade_id"]] = title or meta["grade_id"]
    return titles


def run_nbgrader(
    course_dir: Path, *args: str, timeout: float = 900, log: Path | None = None, library: Path | None = None
) -> None:
    """Run ``nbgrader <args>`` in ``course_dir`` under :mod:`moe_course.grading_supervisor`: in a session of its own,
    stopped after ``timeout`` seconds, leaving no process behind. Raise ``TimeoutError`` if time ran out,
    ``RuntimeError`` if it failed (with its output, unless that went to the file ``log``).

    nbgrader calls ``alembic`` from PATH, so this interpreter's scripts folder goes first on it. Notebooks run in the
    guarded kernel of :mod:`moe_course.grading_kernel`, whose kernelspec is written into ``course_dir``. ``library``
    goes first on PYTHONPATH: the kernel imports the course library from there.
    """
    from .grading_kernel import KERNEL_NAME, kernel_environment

    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, PATH=path, **kernel_environment(course_dir, library))
    if library:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(library), env.get("PYTHONPATH")]))
    kernel = f"--Execute.kernel_name={KERNEL_NAME}"
    supervisor = [sys.executable, "-m", "moe_course.grading_supervisor", str(timeout)]
    cmd = [*supervisor, *args, f"--CourseDirectory.root={course_dir}", kernel]
    with open(log, "w+") if log else tempfile.TemporaryFile("w+") as out:
        status = supervise(cmd, course_dir, env, out, timeout)
        if status == grading_supervisor.TIMED_OUT:
            raise TimeoutError(f"nbgrader {args[0]} took longer than {timeout} s and was stopped")
        if status != 0:
            out.seek(0)
            raise RuntimeError(f"nbgrader {' '.join(args)} failed" + ("" if log else f":\n{out.read()}"))


def supervise(cmd: list, cwd: Path, env: dict, out, timeout: float) -> int:
    """Run the supervisor command ``cmd`` in a session of its own, its output to the file ``out``; its exit status.
    It stops itself after ``timeout`` s; if it does not, or this process is interrupted, SIGTERM makes it kill what
    is below it."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout + 60)
    except subprocess.TimeoutExpired:
        return grading_supervisor.TIMED_OUT
    finally:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            proc.kill()
            proc.wait()


def assignments(repo: Path) -> list:
    """The names of the course's assignments: the folders of ``solutions/``."""
    return sorted(p.name for p in (repo / "solutions").iterdir() if p.is_dir())


def make_course(repo: Path, assignment: str, course_dir: Path) -> None:
    """Lay out a course in ``course_dir`` with the repo's config and ``assignment``'s source, and release it."""
    if assignment not in assignments(repo):
        raise ValueError(f"assignment must be one of {assignments(repo)}, got {assignment!r}")
    source = repo / "solutions" / assignment
    shutil.copy(repo / "nbgrader_config.py", course_dir)
    shutil.copytree(repo / "feedback_templates", course_dir / "feedback_templates")
    shutil.copytree(source, course_dir / "solutions" / assignment)
    run_nbgrader(course_dir, "generate_assignment", assignment, "--force")


def grade_submissions(
    repo: Path,
    assignment: str,
    submissions: dict,
    course_dir: Path,
    *extra: str,
    offline: bool = True,
    timeout: float = 900,
    jobs: int = 1,
) -> dict:
    """Autograde several students' submissions, each alone, and merge the results into the course ``course_dir``.

    submissions: ``{student_id: folder holding that student's notebooks of the assignment}``, read before any of
    them runs. ``course_dir``: an nbgrader course (its ``nbgrader_config.py`` and ``solutions/``, e.g. the repo:
    its gradebook learns the assignment as with ``nbgrader generate_assignment``), or an empty folder, laid out with
    the repo's configuration. ``extra``: further nbgrader options for autograde (e.g. ``--Execute.timeout=10``);
    ``timeout``: seconds one submission may take in all; ``jobs``: how many submissions are graded at once (each
    in its own course and processes; more than the cores slows each one, and so the cells' time limits come sooner).

    Each submission is graded in a course of its own, written from a template held in memory (so that no submission
    can change the course the next one is graded in; :func:`keep_only_what_grading_needs`): the student's files, the
    gradebook, the configuration and a copy of the library, nothing else; where Linux has Landlock its kernel reads
    only that copy and its Python and writes only the notebook's folder (:mod:`moe_course.grading_sandbox`). A
    notebook that cannot be read scores 0 and says why (:mod:`moe_course.grading_submission`); nothing it starts
    outlives its grading (:mod:`moe_course.grading_supervisor`); a kernel that dies costs only the parts not yet
    run (:mod:`moe_course.grading_execute`). Then, with no submission's code running any more, the results go into
    ``course_dir``: ``gradebook.db`` (scores capped at the points each part is worth), ``submitted/`` (as graded),
    ``autograded/<student>/<assignment>/`` with nbgrader's log beside it (``<assignment>.log``), and feedback HTML
    under ``feedback/<student>/<assignment>/``: ``offline``, beside the MathJax it loads
    (``feedback/<student>/mathjax/``), else loading MathJax from nbgrader's CDN (for ``nbgrader release_feedback``).

    Returns ``{student_id: Grade}``.
    """
    import nbformat

    check_positive_int("jobs", jobs)
    snapshots = {student: read_files(Path(folder)) for student, folder in submissions.items()}
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp)  # the course every submission is graded in, read into memory below
        make_course(repo, assignment, template)
        released = {
            p.name: nbformat.read(p, as_version=4) for p in (template / "exercises" / assignment).glob("*.ipynb")
        }
        add_assignment(template, assignment, course_dir)
        keep_only_what_grading_needs(template)
        template_files = read_files(template)  # kept in memory: no submission's code can reach it on disk
    with ThreadPoolExecutor(jobs) as pool:  # the threads wait on nbgrader's processes
        futures = {
            student: pool.submit(grade_alone, template_files, assignment, student, files, released, extra, timeout)
            for student, files in snapshots.items()
        }
        outcomes = {student: future.result() for student, future in futures.items()}
    for student, outcome in outcomes.items():
        keep(course_dir, assignment, student, outcome, snapshots[student])
    titles = {
        (Path(name).stem, part): title for name, nb in released.items() for part, title in part_titles(nb).items()
    }
    grades = merge(course_dir, assignment, outcomes, titles)
    if any(outcome.notebooks for outcome in outcomes.values()):
        write_feedback(course_dir, assignment, [s for s, o in outcomes.items() if o.notebooks], offline)
    return grades


def read_files(folder: Path) -> dict:
    """``{path relative to folder: bytes}`` of the files in ``folder`` (not links, nor Jupyter's checkpoints)."""
    files = (p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return {str(p.relative_to(folder)): p.read_bytes() for p in files if ".ipynb_checkpoints" not in p.parts}


def add_assignment(template: Path, assignment: str, course_dir: Path) -> None:
    """Make ``course_dir`` a course that knows ``assignment``. A course (its ``nbgrader_config.py``, ``solutions/``:
    e.g. the repo) learns it as from ``nbgrader generate_assignment``, which writes the release elsewhere (the repo's
    is ``make exercises``'s); an empty folder gets the configuration, feedback templates and gradebook of
    ``template``, a course that was just given the assignment."""
    if (course_dir / "nbgrader_config.py").exists():
        with tempfile.TemporaryDirectory() as elsewhere:
            release = f"--CourseDirectory.release_directory={elsewhere}"
            run_nbgrader(course_dir, "generate_assignment", assignment, release)
    else:
        shutil.copy(template / "nbgrader_config.py", course_dir)
        shutil.copy(template / "gradebook.db", course_dir)
        shutil.copytree(template / "feedback_templates", course_dir / "feedback_templates")


def keep_only_what_grading_needs(course: Path) -> None:
    """Leave in ``course`` its configuration, its gradebook (which holds the source cells autograde restores, hidden
    tests included), and add a copy of the library in ``lib/``: no source notebook, no release."""
    for name in ("solutions", "exercises", "feedback_templates"):
        shutil.rmtree(course / name)
    library = Path(__file__).parent  # the library this grader runs: writing into its copy changes nothing here
    shutil.copytree(library, course / LIBRARY / library.name, ignore=shutil.ignore_patterns("__pycache__"))


def grade_alone(
    template: dict, assignment: str, student: str, files: dict, released: dict, extra: tuple, timeout: float
) -> Outcome:
    """Autograde one student's ``files`` in a course made of ``template`` (``{path: bytes}``, see
    :func:`read_files`), their notebooks checked first."""
    import nbformat

    from .grading_submission import Ungradable, check_notebook

    files, problems = dict(files), []
    for name, release in released.items():
        try:
            if name not in files:
                raise Ungradable(f"no {name} in the submission")
            nb, changes = check_notebook(name, files.pop(name), release)
            files[name] = nbformat.writes(nb).encode()
            problems += changes
        except Ungradable as e:  # that notebook scores 0, as nbgrader has a missing one
            problems.append(str(e))
    if not any(name in files for name in released):
        return Outcome(problems)
    with tempfile.TemporaryDirectory() as tmp:
        course, log = Path(tmp) / "course", Path(tmp) / "autograde.log"
        write_files(course, template)
        write_files(course / "submitted" / student / assignment, files)
        try:
            run_nbgrader(course, "autograde", assignment, *extra, timeout=timeout, log=log, library=course / LIBRARY)
        except TimeoutError as e:
            return Outcome([*problems, str(e)], log=log.read_bytes())
        except RuntimeError:
            return Outcome([*problems, "nbgrader could not grade it (see its log)"], log=log.read_bytes())
        return read_outcome(course, assignment, student, released, problems, log.read_bytes())


def write_files(folder: Path, files: dict) -> None:
    """Write ``{path relative to folder: bytes}``, replacing files even if read-only (as nbgrader leaves them)."""
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).unlink(missing_ok=True)
        (folder / name).write_bytes(data)


def read_outcome(course: Path, assignment: str, student: str, released: dict, problems: list, log: bytes) -> Outcome:
    """The grades a submission's course holds once its grading ended, and why cells were stopped."""
    from nbgrader.api import Gradebook

    from .grading_execute import REPORTED

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        submission = gb.find_submission(assignment, student)
        grades, comments = {}, {}
        for nb in submission.notebooks:
            grades |= {(nb.name, g.name): (g.auto_score, g.needs_manual_grade) for g in nb.grades}
            comments |= {(nb.name, c.name): c.auto_comment for c in nb.comments}
        timestamp = submission.timestamp
    graded = course / "autograded" / student / assignment
    notebooks = {name: (graded / name).read_bytes() for name in released if (graded / name).is_file()}
    outputs = [o for data in notebooks.values() for c in json.loads(data)["cells"] for o in c.get("outputs", [])]
    stops = [o["evalue"] for o in outputs if o.get("ename") in REPORTED]
    return Outcome([*problems, *stops], grades, comments, timestamp, notebooks, log)


def keep(course_dir: Path, assignment: str, student: str, outcome: Outcome, files: dict) -> None:
    """Write into ``course_dir`` a student's submission as it was graded (over what a submission's code may have
    done to it since), autograded notebooks and nbgrader's log."""
    write_files(course_dir / "submitted" / student / assignment, files)
    graded, feedback = course_dir / "autograded" / student / assignment, course_dir / "feedback" / student / assignment
    for old in (graded, feedback):
        shutil.rmtree(old, ignore_errors=True)
    write_files(graded, outcome.notebooks)
    if outcome.log is not None:
        write_files(graded.parent, {f"{assignment}.log": outcome.log})


def merge(course_dir: Path, assignment: str, outcomes: dict, titles: dict) -> dict:
    """Put each student's grades into ``course_dir``'s gradebook, as autograde would have; ``{student: Grade}``,
    each part named by ``titles`` (``{(notebook, grade_id): title}``; else by its grade_id)."""
    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning

    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gb, warnings.catch_warnings():
        warnings.simplefilter("ignore", SAWarning)  # nbgrader's add_submission warns each time (autograde's too)
        for student, outcome in outcomes.items():
            gb.update_or_create_student(student)
            stamp = {"timestamp": outcome.timestamp} if outcome.timestamp else {}
            for nb in gb.update_or_create_submission(assignment, student, **stamp).notebooks:
                for grade in nb.grades:  # what the submission's course says, within what this gradebook allows
                    auto, manual = outcome.grades.get((nb.name, grade.name), (0.0, False))
                    grade.auto_score = None if auto is None else min(max(auto, 0.0), grade.max_score)
                    grade.needs_manual_grade = manual or grade.manual_score is not None
                for comment in nb.comments:
                    comment.auto_comment = outcome.comments.get((nb.name, comment.name))
            gb.db.commit()
        grades = {}
        for student, outcome in outcomes.items():
            log = course_dir / "autograded" / student / f"{assignment}.log"
            parts = [
                PartScore(nb.name, g.name, titles.get((nb.name, g.name), g.name), g.score, g.max_score)
                for nb in gb.find_submission(assignment, student).notebooks
                for g in nb.grades
                if g.cell.cell_type == "code"
            ]
            grades[student] = Grade(parts, outcome.problems, log if outcome.log is not None else None)
    return grades


def write_feedback(course_dir: Path, assignment: str, students: list, offline: bool) -> None:
    """``nbgrader generate_feedback``; ``offline``: reports that load MathJax from ``feedback/<student>/mathjax/``."""
    from jupyter_server_mathjax.app import STATIC_ASSETS_PATH as MATHJAX

    offline_template = ["--GenerateFeedback.HTMLExporter.template_name=course_feedback_offline"] if offline else []
    run_nbgrader(course_dir, "generate_feedback", assignment, "--force", *offline_template)
    if offline:
        for student in students:
            shutil.copytree(MATHJAX, course_dir / "feedback" / student / "mathjax", dirs_exist_ok=True)


def release(repo: Path, assignment: str, out_dir: Path) -> None:
    """Write the student version of ``assignment`` (what ``nbgrader generate_assignment`` makes) to ``out_dir``."""
    with tempfile.TemporaryDirectory() as tmp:
        make_course(repo, assignment, Path(tmp))
        shutil.copytree(Path(tmp) / "exercises" / assignment, out_dir, dirs_exist_ok=True)


def format_scores(scores: list) -> str:
    """A table of per-part scores, each part named by its title, with a total line."""
    width = max(len(name) for name in ["total", *(s.title for s in scores)]) + 2
    lines = [f"{'part':<{width}}{'score':>8}{'max':>6}"]
    lines += [f"{s.title:<{width}}{s.score:>8.1f}{s.max_score:>6.1f}" for s in scores]
    lines.append(f"{'total':<{width}}{sum(s.score for s in scores):>8.1f}{sum(s.max_score for s in scores):>6.1f}")
    return "\n".join(lines)


def format_problems(grade: Grade, log: Path | None) -> str:
    """A line for each of ``grade``'s problems, then where nbgrader's log is (if there were any)."""
    lines = [f"  - {problem}" for problem in grade.problems]
    if lines and log:
        lines.append(f"  nbgrader's log: {log}")
    return "\n".join(lines)


def format_class(grades: dict) -> str:
    """Each student's total and problems."""
    lines = [f"{'student':<32}{'score':>8}{'max':>6}"]
    for student, grade in grades.items():
        lines.append(f"{student:<32}{sum(p.score for p in grade):>8.1f}{sum(p.max_score for p in grade):>6.1f}")
        if grade.problems:
            lines.append(format_problems(grade, grade.log))
    return "\n".join(lines)


def grade_class(course: Path, assignment: str, jobs: int = 1) -> dict:
    """Instructors: grade every ``submitted/<student>/<assignment>/`` of ``course``, each alone (``jobs`` at once),
    into its ``gradebook.db``, ``autograded/`` and ``feedback/`` (:func:`grade_submissions`), and print each
    student's total and problems. Returns ``{student: Grade}``."""
    folders = {p.parent.name: p for p in sorted((course / "submitted").glob(f"*/{assignment}")) if p.is_dir()}
    if not folders:
        raise ValueError(f"no submissions: put each student's notebooks in submitted/<student>/{assignment}/")
    confined = "confined to its folders" if grading_sandbox.abi() else "NOT confined (no Landlock here; see README)"
    print(f"Grading {len(folders)} submissions of {assignment}, each alone, {confined} ...", flush=True)
    grades = grade_submissions(course, assignment, folders, course, offline=False, jobs=jobs)
    print(format_class(grades))
    return grades


def main(argv=None) -> int:
    from .workspace import WORKSPACE

    parser = argparse.ArgumentParser(description="Autograde your copy of an assignment (hidden tests included).")
    parser.add_argument("assignment", help="e.g. 02_moe_layer (a folder of solutions/)")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the course folder (default: current)")
    parser.add_argument(
        "--class",
        dest="whole_class",
        action="store_true",
        help="instructors: grade every submitted/<student>/<assignment>/ into gradebook.db, autograded/, feedback/",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="with --class: how many submissions to grade at once (default: 1)"
    )
    args = parser.parse_args(argv)
    repo, assignment = args.repo.resolve(), args.assignment
    if assignment not in assignments(repo):
        parser.error(f"no assignment {assignment!r}; ASSIGNMENT must be one of: {' '.join(assignments(repo))}")
    if args.whole_class:
        try:
            grade_class(repo, assignment, args.jobs)
        except ValueError as e:
            parser.error(str(e))
        return 0
    submission = repo / WORKSPACE / "exercises" / assignment
    if not submission.is_dir():
        parser.error(f"no folder {submission}: `make lab` (or `make workspace`) copies the exercises there")
    feedback = repo / "feedback" / assignment
    with tempfile.TemporaryDirectory() as tmp:
        print(f"Grading {submission} (this runs every cell of your notebook) ...", flush=True)
        grade = grade_submissions(repo, assignment, {"learner": submission}, Path(tmp))["learner"]
        shutil.rmtree(feedback, ignore_errors=True)  # an earlier report must not pass for this one
        # the report and, beside its folder, the MathJax it loads; nbgrader's log beside the report
        if (Path(tmp) / "feedback" / "learner").is_dir():
            shutil.copytree(Path(tmp) / "feedback" / "learner", repo / "feedback", dirs_exist_ok=True)
        if grade.log:
            feedback.mkdir(parents=True, exist_ok=True)
            shutil.copy(grade.log, feedback / "autograde.log")
    print(format_scores(grade))
    if grade.problems:
        print("Problems:\n" + format_problems(grade, feedback / "autograde.log" if grade.log else None))
    for report in sorted(feedback.glob("*.html")):
        print(f"Feedback report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
