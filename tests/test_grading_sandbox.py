"""Landlock confinement of a process (the grading kernel's), tried in a child process: what it may read and write,
what it starts inherits it, and it cannot signal the process that started it."""

import subprocess
import sys

import pytest

from moe_course import grading_sandbox

needs_landlock = pytest.mark.skipif(not grading_sandbox.abi(), reason="no Landlock on this machine")

TRIES = """import os, subprocess, sys
from pathlib import Path

from moe_course.grading_sandbox import confine

readable, writable, outside = map(Path, sys.argv[1:4])
version = confine(read=[str(readable)], write=[str(writable)])
import torch  # from this Python's installation, after the confinement

tries = {
    "read beneath read": lambda: (readable / "given.txt").read_text(),
    "write beneath read": lambda: (readable / "new.txt").write_text("1"),
    "read beneath write": lambda: (writable / "given.txt").read_text(),
    "write beneath write": lambda: (writable / "new.txt").write_text("1"),
    "make a folder beneath write": lambda: (writable / "made").mkdir(),
    "read outside": lambda: (outside / "secret.txt").read_text(),
    "read outside through /proc": lambda: Path(f"/proc/1/root{outside}/secret.txt").read_text(),
    "list outside": lambda: os.listdir(outside),
    "write outside": lambda: (outside / "new.txt").write_text("1"),
    "read outside from a child process": lambda: subprocess.run(["cat", str(outside / "secret.txt")], check=True,
                                                                 capture_output=True),
    "signal the parent": lambda: os.kill(os.getppid(), 0),
    "write /dev/null": lambda: open(os.devnull, "w").write("1"),
}
for what, attempt in tries.items():
    try:
        attempt()
        print("DONE", what)
    except (OSError, subprocess.CalledProcessError):
        print("REFUSED", what)
print("ABI", version)
"""


def folders(tmp_path):
    paths = [tmp_path / name for name in ("readable", "writable", "outside")]
    for path in paths:
        path.mkdir()
        (path / ("secret.txt" if path.name == "outside" else "given.txt")).write_text("text")
    return paths


@needs_landlock
def test_a_confined_process_reads_and_writes_only_where_it_may(tmp_path):
    readable, writable, outside = folders(tmp_path)
    cmd = [sys.executable, "-c", TRIES, str(readable), str(writable), str(outside)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    signal = "REFUSED" if grading_sandbox.abi() >= 6 else "DONE"  # signals are scoped from ABI 6
    assert out.splitlines() == [
        "DONE read beneath read",
        "REFUSED write beneath read",
        "DONE read beneath write",
        "DONE write beneath write",
        "DONE make a folder beneath write",
        "REFUSED read outside",
        "REFUSED read outside through /proc",
        "REFUSED list outside",
        "REFUSED write outside",
        "REFUSED read outside from a child process",
        f"{signal} signal the parent",
        "DONE write /dev/null",
        f"ABI {grading_sandbox.abi()}",
    ]
    assert not (readable / "new.txt").exists() and not (outside / "new.txt").exists()


def test_without_landlock_confine_does_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(grading_sandbox, "abi", lambda: 0)
    assert grading_sandbox.confine(read=[], write=[]) == 0
    (tmp_path / "still.txt").write_text("writable")  # this (unconfined) process is unchanged


@pytest.mark.parametrize("version, rights", [(1, 0x1FFF), (2, 0x3FFF), (3, 0x7FFF), (4, 0x7FFF), (5, 0xFFFF)])
def test_every_right_an_abi_knows_is_handled(version, rights):
    assert grading_sandbox.handled_rights(version) == rights


def test_the_kernels_confinement_reaches_no_repository_folder():
    """The kernel may read its Python's folders: none of them is the repository or holds its solutions."""
    from tests.test_grading import REPO

    for folder in grading_sandbox.python_folders():
        assert not (REPO / "solutions").is_relative_to(folder), folder
