"""The learner's workspace: every lesson and exercise copied once, trusted, and never overwritten."""

from pathlib import Path

import nbformat
from nbformat.sign import NotebookNotary

from moe_course.workspace import course_files, make_workspace

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
