"""Run nbgrader so that nothing it starts outlives it: ``python -m moe_course.grading_supervisor SECONDS ARGS...``.

A submission's code runs in a kernel that nbgrader starts, and it can start processes of its own and detach them
(double fork + ``setsid``): they would belong to init and run on after grading, free to rewrite any gradebook. This
process runs nbgrader (``nbgrader ARGS...``, in this process) as a Linux *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``): an orphan below it is re-parented to it, not to init, so every process the
submission started stays below it and is killed when nbgrader ends, when SECONDS have passed, or on SIGTERM. The
course's Execute preprocessor (:mod:`moe_course.grading_execute`) kills them sooner, before the grades are saved.

Elsewhere than Linux there is no subreaper and no ``/proc``: the time limit holds, the hunt for detached processes
does not. This module imports nothing heavy: the grader starts it for every submission.
"""

import ctypes
import os
import signal
import sys
import threading
from contextlib import suppress
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>
TIMED_OUT = 124  # the exit status when SECONDS ran out, as timeout(1) has it

# Whether this process is a supervisor that inherits orphans, so that what is below it is the submission's.
supervising = False


def become_subreaper() -> bool:
    """Make orphans below this process its children (Linux); whether that worked."""
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def descendants(pid: int) -> list:
    """The processes below ``pid``, read from ``/proc`` (none where there is no ``/proc``)."""
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with suppress(OSError, IndexError, ValueError):  # it ended meanwhile
            # "pid (name) state ppid ...": the name may hold spaces and parentheses, so split after the last ")"
            parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
    below, level = [], {pid}
    while level:
        level = {child for child, parent in parents.items() if parent in level}
        below += level
    return below


def kill_descendants() -> None:
    """SIGKILL every process below this one and reap them. Processes whose parent dies meanwhile are re-parented
    here (the subreaper), so the loop ends only when none is left."""
    while below := descendants(os.getpid()):
        for pid in below:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in below:
            with suppress(ChildProcessError):  # not a child of this process (yet): reaped in a later round
                os.waitpid(pid, 0)


def time_up() -> None:
    kill_descendants()
    os._exit(TIMED_OUT)


def main(argv=None) -> int:
    global supervising
    seconds, *args = sys.argv[1:] if argv is None else argv
    supervising = become_subreaper()
    # the grader sends SIGTERM when it is interrupted: unwind, so that `finally` kills what is below
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    timer = threading.Timer(float(seconds), time_up)
    timer.daemon = True
    timer.start()
    from nbgrader.apps.nbgraderapp import NbGraderApp

    try:
        NbGraderApp.launch_instance(argv=args)
    except SystemExit as stop:  # nbgrader exits with a status, or a message (a failure), or None (success)
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        kill_descendants()
    return 0


if __name__ == "__main__":
    # run main from the package's module, not from __main__, so that GradingExecute sees `supervising` set
    from moe_course import grading_supervisor

    sys.exit(grading_supervisor.main())
