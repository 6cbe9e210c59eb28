"""Autograde assignments with nbgrader, hidden tests included, in a throw-away copy of the course.

The learner's command (``make grade ASSIGNMENT=02_moe_layer`` or ``moe-course-grade 02_moe_layer``) grades the
learner's copy in ``workspace/exercises/<assignment>/`` (see :mod:`moe_course.workspace`) and prints the score of
each graded part and the path of an HTML feedback report. The repository is never written to except
``feedback/``; the gradebook lives in the temporary copy.

The report names each graded part (``feedback_templates/course_feedback``, set in ``nbgrader_config.py``) and
typesets its math offline: ``feedback_templates/course_feedback_offline`` loads MathJax from ``feedback/mathjax/``,
a copy of the one the jupyter-server-mathjax package ships, instead of nbgrader's CDN.

The assignment notebooks import :func:`safety_net_passes` from here, so this module stays light to import: nbgrader
and jupyter-server-mathjax (the ``course`` extra, missing where only the library is installed, e.g. on Colab) are
imported by the functions that use them.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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
    """The score of one graded test cell (``grade_id``) of one notebook."""

    notebook: str
    part: str
    score: float
    max_score: float


def run_nbgrader(course_dir: Path, *args: str, timeout: float = 900) -> None:
    """Run ``nbgrader <args>`` in ``course_dir``; raise ``RuntimeError`` with its log if it fails.

    nbgrader calls ``alembic`` from PATH, so this interpreter's scripts folder goes first on it.
    """
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course_dir}"]
    proc = subprocess.run(cmd, cwd=course_dir, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


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


def grade_submissions(repo: Path, assignment: str, submissions: dict, course_dir: Path, *extra: str) -> dict:
    """Autograde and generate feedback for several students at once.

    submissions: ``{student_id: folder holding that student's notebooks of the assignment}``.
    Returns ``{student_id: [PartScore, ...]}``; feedback HTML is under ``course_dir/feedback/<student>/<assignment>/``,
    beside the MathJax it loads (``course_dir/feedback/<student>/mathjax/``). ``extra`` are further nbgrader options
    (e.g. ``--Execute.timeout=10``).
    """
    from jupyter_server_mathjax.app import STATIC_ASSETS_PATH as MATHJAX
    from nbgrader.api import Gradebook

    make_course(repo, assignment, course_dir)
    for student, folder in submissions.items():
        shutil.copytree(folder, course_dir / "submitted" / student / assignment)
    run_nbgrader(course_dir, "autograde", assignment, "--force", *extra)
    # Reports that typeset their math offline: this template loads MathJax from ../mathjax/, copied there next.
    offline = "--GenerateFeedback.HTMLExporter.template_name=course_feedback_offline"
    run_nbgrader(course_dir, "generate_feedback", assignment, "--force", offline)
    for student in submissions:
        shutil.copytree(MATHJAX, course_dir / "feedback" / student / "mathjax")
    scores = {}
    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gb:
        for student in submissions:
            submission = gb.find_submission(assignment, student)
            scores[student] = [
                PartScore(nb.name, grade.name, grade.score, grade.max_score)
                for nb in submission.notebooks
                for grade in nb.grades
                if grade.cell.cell_type == "code"
            ]
    return scores


def release(repo: Path, assignment: str, out_dir: Path) -> None:
    """Write the student version of ``assignment`` (what ``nbgrader generate_assignment`` makes) to ``out_dir``."""
    with tempfile.TemporaryDirectory() as tmp:
        make_course(repo, assignment, Path(tmp))
        shutil.copytree(Path(tmp) / "exercises" / assignment, out_dir, dirs_exist_ok=True)


def format_scores(scores: list) -> str:
    """A table of per-part scores with a total line."""
    lines = [f"{'part':<32}{'score':>8}{'max':>6}"]
    lines += [f"{s.part:<32}{s.score:>8.1f}{s.max_score:>6.1f}" for s in scores]
    lines.append(f"{'total':<32}{sum(s.score for s in scores):>8.1f}{sum(s.max_score for s in scores):>6.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from .workspace import WORKSPACE

    parser = argparse.ArgumentParser(description="Autograde your copy of an assignment (hidden tests included).")
    parser.add_argument("assignment", help="e.g. 02_moe_layer (a folder of solutions/)")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the course folder (default: current)")
    args = parser.parse_args(argv)
    repo, assignment = args.repo.resolve(), args.assignment
    if assignment not in assignments(repo):
        parser.error(f"no assignment {assignment!r}; ASSIGNMENT must be one of: {' '.join(assignments(repo))}")
    submission = repo / WORKSPACE / "exercises" / assignment
    if not submission.is_dir():
        parser.error(f"no folder {submission}: `make lab` (or `make workspace`) copies the exercises there")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"Grading {submission} (this runs every cell of your notebook) ...", flush=True)
        scores = grade_submissions(repo, assignment, {"learner": submission}, Path(tmp))["learner"]
        # the report and, beside its folder, the MathJax it loads
        shutil.copytree(Path(tmp) / "feedback" / "learner", repo / "feedback", dirs_exist_ok=True)
    feedback = repo / "feedback" / assignment
    print(format_scores(scores))
    for report in sorted(feedback.glob("*.html")):
        print(f"Feedback report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
