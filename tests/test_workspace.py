"""The learner's workspace: every lesson and exercise copied once, trusted, and never overwritten."""

from pathlib import Path

import nbformat
from nbformat.sign import NotebookNotary

from moe_course.workspace import course_files, main, make_workspace

REPO = Path(__file__).resolve().parents[1]


def test_copies_every_notebook_once_trusted_and_keeps_the_learners_work(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))  # the signature store, not the user's
    workspace = tmp_path / "workspace"
    names = course_files(REPO)
    assert {n.parts[0] for n in names} == {"notebooks", "exercises"} and len(names) >= 15
    assert make_workspace(REPO, workspace) == names
    notary = NotebookNotary()
    for name in names:
        assert (workspace / name).read_bytes() == (REPO / name).read_bytes()
        assert notary.check_signature(nbformat.read(workspace / name, as_version=nbformat.NO_CONVERT)), name

    answer = workspace / names[-1]
    answer.write_text(answer.read_text().replace("raise NotImplementedError()", "return 42"))
    edited = answer.read_bytes()
    assert edited != (REPO / names[-1]).read_bytes()
    (workspace / names[0]).unlink()
    assert make_workspace(REPO, workspace) == [names[0]]  # only the deleted copy comes back
    assert answer.read_bytes() == edited


def test_every_exercise_is_named_apart_from_its_lesson():
    """The lab names a tab by its file: a lesson and its exercise open as two tabs a learner tells apart."""
    names = [name.name for name in course_files(REPO)]
    assert len(set(names)) == len(names), names
    for name in course_files(REPO):
        if name.parts[0] == "exercises":
            assert name.name == f"{name.parent.name}_exercises.ipynb", name


def test_an_exercise_copy_under_its_earlier_name_is_renamed_not_replaced(tmp_path, monkeypatch, capsys):
    """A learner's copy made when exercises were named as their lessons keeps their answers under the new name, the
    one ``make grade`` grades, instead of a fresh copy beside it."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    course = tmp_path / "course"
    course.mkdir()
    for folder in ("notebooks", "exercises"):
        (course / folder).symlink_to(REPO / folder)
    earlier = course / "workspace" / "exercises" / "02_moe_layer" / "02_moe_layer.ipynb"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("my answers")
    assert main(["--repo", str(course)]) == 0
    assert not earlier.exists()
    assert (earlier.parent / "02_moe_layer_exercises.ipynb").read_text() == "my answers"
    assert "workspace/exercises/02_moe_layer/02_moe_layer_exercises.ipynb: your answers" in capsys.readouterr().out
