"""A submitted notebook, read and checked before nbgrader sees it, so that a broken or forged one costs its owner
points and never stops the grading.

nbgrader fails on a file that is not a notebook, and trusts the ``nbgrader`` metadata of each cell: a cell that
claims a grade id the assignment does not have, an answer cell marked as a graded test, or a test cell pasted twice
each make ``nbgrader autograde`` fail for that student. Here a notebook that cannot be read raises
:class:`Ungradable` with a one-line reason, and every cell's nbgrader metadata is made the released notebook's:
a cell with an id the assignment does not have, or with an id already seen (the first counts), loses it; a cell with
a known id gets the release's metadata back; a test cell that is missing is put back where it was. Each change is
reported in one line.
"""

import copy
import json
import warnings


class Ungradable(Exception):
    """A submitted notebook that cannot be graded; the message is the reason, in one line."""


def read_notebook(name: str, data: bytes):
    """The notebook in ``data`` (the bytes of file ``name``), as nbformat 4; raises :class:`Ungradable`."""
    import nbformat

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Ungradable(f"{name} is not a text file") from None
    if not text.strip():
        raise Ungradable(f"{name} is empty")
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise Ungradable(f"{name} is not valid JSON ({e})") from None
    try:
        with warnings.catch_warnings():  # e.g. cell ids repaired: nothing a learner must act on
            warnings.simplefilter("ignore")
            nb = nbformat.reads(text, as_version=4)
            nbformat.validate(nb)
    except Exception as e:  # nbformat raises many kinds, for JSON that is not a notebook
        raise Ungradable(f"{name} is not a Jupyter notebook ({str(e).splitlines()[0][:160]})") from None
    return nb


def check_notebook(name: str, data: bytes, released) -> tuple:
    """The submitted notebook ``name`` (its bytes ``data``) made fit to grade against the released notebook, and a
    line for each change; raises :class:`Ungradable`."""
    nb = read_notebook(name, data)
    changes = restore_metadata(nb, released, name)
    work = {
        grade_id for grade_id, meta in nbgrader_cells(released).items() if meta.get("grade") or meta.get("solution")
    }
    if not work & nbgrader_cells(nb).keys():
        raise Ungradable(f"{name} has none of the assignment's answer or test cells (another assignment's notebook?)")
    return nb, changes + put_back_tests(nb, released, name)


def nbgrader_cells(nb) -> dict:
    """``{grade_id: nbgrader metadata}`` of the cells of ``nb`` that have an id."""
    metas = (c.metadata.get("nbgrader") for c in nb.cells)
    return {meta["grade_id"]: meta for meta in metas if isinstance(meta, dict) and "grade_id" in meta}


def restore_metadata(nb, released, name: str) -> list:
    """Give each cell of ``nb`` the nbgrader metadata of the released notebook's cell with the same id, or none
    (an id the release does not have, or one already seen: the first counts); a line for each change."""
    expected = nbgrader_cells(released)
    seen, changes = set(), []
    for number, cell in enumerate(nb.cells, 1):
        meta = cell.metadata.get("nbgrader")
        if not meta:
            cell.metadata.pop("nbgrader", None)
            continue
        grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
        if grade_id in seen:
            changes.append(f"{name}: cell {number} repeats cell {grade_id}, which counts once: not graded")
        elif grade_id not in expected:
            changes.append(f"{name}: cell {number} names a part {grade_id!r} the assignment does not have: not graded")
        else:
            seen.add(grade_id)
            if _flags(meta) != _flags(expected[grade_id]):
                changes.append(f"{name}: cell {number} ({grade_id}) had its grading settings changed: restored")
            cell.metadata.nbgrader = copy.deepcopy(expected[grade_id])
            continue
        del cell.metadata["nbgrader"]
    return changes


def put_back_tests(nb, released, name: str) -> list:
    """Insert each test cell of the release that ``nb`` lacks after the release's cell before it that ``nb`` has
    (nbgrader's own ``add_missing_cells`` fails when that one is missing too); a line for each."""
    changes, at = [], 0  # at: where a missing test goes, after the last cell of the release found so far
    for cell in released.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        present = [i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
        if present:
            at = present[0] + 1
        elif cell.metadata.get("nbgrader", {}).get("grade"):
            nb.cells.insert(at, copy.deepcopy(cell))
            at += 1
            changes.append(f"{name}: the test cell {grade_id} was missing: put back")
    return changes


def _flags(meta: dict) -> tuple:
    """What makes a cell an answer, a test or locked, and its points."""
    return tuple(meta.get(key) for key in ("grade", "solution", "locked", "task", "points"))
