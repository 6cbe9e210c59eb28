"""The learner's workspace: copies of the lessons and exercises that the course itself never tracks.

``make lab`` (``python -m moe_course.workspace``) copies the lessons, ``notebooks/*.ipynb``, and the exercises,
``exercises/<assignment>/<assignment>_exercises.ipynb`` (named apart from their lessons,
``notebooks/<assignment>.ipynb``, so that the lab's tabs tell them apart), into the git-ignored ``workspace/`` folder
and serves that folder, so the course's own files stay as published: a ``git pull`` never conflicts with a learner's
answers, and ``make grade`` grades the copy in ``workspace/exercises/``. A copy that exists is never overwritten;
delete it and run ``make lab`` again to start that lesson or exercise over from the course's current version. A copy
of an exercise made when it was named as its lesson (``<assignment>.ipynb``) is renamed, so the learner's answers
carry over and are what ``make grade`` grades.

Each copy the workspace makes is *trusted* (signed in Jupyter's notebook-signature store, as ``jupyter trust``
does), so its saved outputs — widgets and plots included — render on first open.
"""

import argparse
import shutil
from pathlib import Path

import nbformat
from nbformat.sign import NotebookNotary

WORKSPACE = "workspace"


def course_notebooks(repo: Path, assignments: str) -> list:
    """Every lesson and every assignment notebook of ``assignments`` (``"exercises"`` or ``"solutions"``)."""
    return sorted((repo / "notebooks").glob("*.ipynb")) + sorted((repo / assignments).glob("*/*.ipynb"))


def course_files(repo: Path) -> list:
    """The notebooks a learner works on, relative to ``repo``: every lesson and every exercise."""
    return [f.relative_to(repo) for f in course_notebooks(repo, "exercises")]


def rename_earlier_exercises(workspace: Path) -> list:
    """Rename each exercise copy in ``workspace`` still named as its lesson,
    ``exercises/<assignment>/<assignment>.ipynb``, to ``<assignment>_exercises.ipynb`` unless that exists.
    Returns the new paths, relative to ``workspace``."""
    renamed = []
    for folder in sorted(workspace.glob("exercises/*/")):
        earlier, now = folder / f"{folder.name}.ipynb", folder / f"{folder.name}_exercises.ipynb"
        if earlier.is_file() and not now.exists():
            earlier.rename(now)
            renamed.append(now.relative_to(workspace))
    return renamed


def make_workspace(repo: Path, workspace: Path) -> list:
    """Copy every course notebook that ``workspace`` does not hold yet, and trust the copies.

    Returns the paths it copied (relative to ``workspace``); files already there are left untouched.
    """
    notary = NotebookNotary()
    copied = []
    for name in course_files(repo):
        target = workspace / name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / name, target)
        notary.sign(nbformat.read(target, as_version=nbformat.NO_CONVERT))
        copied.append(name)
    return copied


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Copy the lessons and exercises you have not started yet.")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the course folder (default: current)")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    for name in rename_earlier_exercises(repo / WORKSPACE):  # first: a fresh copy would take the name
        print(f"{WORKSPACE}/{name}: your answers, renamed from {name.parent.name}.ipynb")
    copied = make_workspace(repo, repo / WORKSPACE)
    kept = len(course_files(repo)) - len(copied)
    print(f"{WORKSPACE}/: {len(copied)} notebooks copied from the course, {kept} of your own kept as they are")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
