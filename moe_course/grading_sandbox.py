"""Confine a process to a few folders with Linux's Landlock: where a submission's code may read and write.

The grading kernel (:mod:`moe_course.grading_kernel`) calls :func:`confine` before any cell runs. From then on that
process and every process it starts may

- read and run files beneath the system folders (``SYSTEM``), this Python's installation (its prefixes and site
  folders) and the folders ``read`` (the course's copy of the library);
- read and write beneath the folders ``write`` (the notebook's folder, a private home and temporary folder) and
  ``/dev/shm`` (shared memory, which torch's worker processes use);

and nothing else: not the repository's ``solutions/``, not the gradebook of its own course (it holds the hidden
tests) nor of the class, not another student's notebook, not the installed library. Opening such a file fails with
``PermissionError``. Landlock also keeps it from sending signals to, or connecting to abstract Unix sockets of,
processes outside its confinement (ABI 6, Linux 6.12), so it cannot stop the grader. Listing a folder it may not
read fails; ``stat`` of a path still works (Landlock does not cover it), as does the network.

Landlock is in Linux since 5.13 when the kernel enables it (most distributions do); :func:`abi` says which version
is here, 0 if none (another system, Landlock switched off, or a container's seccomp filter refusing the calls).
Where there is none, :func:`confine` does nothing and grading runs unconfined: the README's instructors' section
says how to grade in a container instead.
"""

import ctypes
import os
import site
import sys
from pathlib import Path

# From <linux/landlock.h> and <linux/prctl.h>; the syscall numbers are the same on every architecture.
CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
TRUNCATE, IOCTL_DEV = 1 << 14, 1 << 15
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the rights a rule on a file may carry
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt", "/proc", "/sys", "/dev")
SHARED_MEMORY = "/dev/shm"


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64)]
    _fields_ += [("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def abi() -> int:
    """The Landlock ABI version this kernel offers; 0 where there is none."""
    if not sys.platform.startswith("linux"):
        return 0
    version = _libc().syscall(CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(version, 0)


def handled_rights(version: int) -> int:
    """Every file-system right ABI ``version`` knows: 13 in ABI 1, then REFER (2), TRUNCATE (3), IOCTL_DEV (5)."""
    bits = 13 + (version >= 2) + (version >= 3)
    return (1 << bits) - 1 | (IOCTL_DEV if version >= 5 else 0)


def python_folders() -> list:
    """The folders this Python reads its standard library and packages from."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    return [*prefixes, *sites, os.path.dirname(os.path.realpath(sys.executable))]


def confine(read: list, write: list) -> int:
    """Confine this process and all it starts from now on, as the module says; return the Landlock ABI used (0:
    none here, nothing done). Raise ``OSError`` if Landlock is here but refuses. Folders that do not exist are
    skipped; a path that is a file (``/dev/null``) gets the rights a file can have."""
    version = abi()
    if not version:
        return 0
    handled = handled_rights(version)
    read_only = EXECUTE | READ_FILE | READ_DIR | (IOCTL_DEV & handled)
    rules = [(path, read_only) for path in (*SYSTEM, *python_folders(), *read)]
    rules += [(path, handled) for path in (*write, SHARED_MEMORY, os.devnull)]
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0
    attr = RulesetAttr(handled_access_fs=handled, scoped=scoped)
    size = ctypes.sizeof(attr) if version >= 6 else ctypes.sizeof(ctypes.c_uint64)  # older kernels: fs rights only
    libc = _libc()
    ruleset = check(libc.syscall(CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)))
    try:
        for path, rights in rules:
            add_rule(libc, ruleset, path, rights)
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        check(libc.syscall(RESTRICT_SELF, ruleset, ctypes.c_uint32(0)))
    finally:
        os.close(ruleset)
    return version


def add_rule(libc, ruleset: int, path: str, rights: int) -> None:
    """Allow ``rights`` beneath ``path`` (only a file's rights if it is a file); skip it if it does not exist."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not Path(path).is_dir():
            rights &= FILE_RIGHTS
        rule = PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        check(libc.syscall(ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)))
    finally:
        os.close(fd)


def check(result: int) -> int:
    """``result`` of a libc call, or ``OSError`` from ``errno`` if it is -1."""
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"Landlock: {os.strerror(errno)}")
    return result
