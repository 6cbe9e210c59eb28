"""The kernel autograding runs submissions in: no cell can rewrite the cells after it, and stderr is not an error.

nbgrader restores the hidden test cells into a submission, but runs them in the same Python process as the learner's
cells. In the plain IPython kernel one line in an answer cell could change how every later cell runs (an input
transformer that turns each cell into ``pass``, an AST transformer that wraps each statement in ``try/except``,
``builtins.bool = lambda v=False: True``) and so pass tests that never ran. :class:`GradingKernel` records, when it
starts (before any cell), and puts back before each cell is transformed and run, and again after it:

- IPython's source and AST transformers: ``input_transformers_cleanup`` (with the manager's line and token
  transformers), ``input_transformers_post``, ``ast_transformers``;
- the callbacks IPython runs before a cell's code (the ``pre_execute`` and ``pre_run_cell`` events);
- every name of ``builtins``;
- every name of the modules the tests use: math, numpy, numpy.testing, torch, torch.nn.functional, torch.testing,
  the ``moe_course`` modules the assignments import but the Triton kernels (``GUARDED_MODULES``) and the
  ``moe_course`` modules these import; and their ``sys.modules`` entries.

A name a cell adds to these namespaces stays (the tests use only names that were there). Notebooks do not rebind
any of this, so restoring before every cell changes nothing for honest work.

Python in one process is not a sandbox; a determined cheat can still, for example: patch the kernel or shell object
itself (its methods, its compiler), change objects in place (a function's ``__code__``, a class's attributes such as
``torch.Tensor.__bool__``), rebind the names of the notebook's namespace the tests compare with, start a thread or
a trace function that patches again after the restore, or patch from inside a function a test cell calls (which
lasts until that cell ends). Such code is there to read in the graded notebook.

stderr: nbgrader scores 0 for a test cell with any output on stderr, so a correct answer that warns or logs would
lose its marks. This kernel publishes its stderr stream as stdout; an exception still is an error output and scores 0.

Autograding uses it through :func:`kernel_environment` (see :func:`moe_course.grading.run_nbgrader`).
"""

import builtins
import importlib
import json
import os
import sys
from pathlib import Path

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp

from moe_course import grading_sandbox

KERNEL_NAME = "moe-course-grading"
CONFINE = "MOE_COURSE_CONFINE"  # JSON {"read": [...], "write": [...]}: the folders the kernel is confined to
# The modules the hidden tests use: those of moe_course the assignments import (Triton's kernels aside), with
# everything of moe_course they import in turn.
GUARDED_MODULES = (
    *("math", "numpy", "numpy.testing", "torch", "torch.nn.functional", "torch.testing"),
    *("moe_course", "moe_course.backends", "moe_course.capacity", "moe_course.dispatch", "moe_course.experts"),
    *("moe_course.flops", "moe_course.grading", "moe_course.load", "moe_course.losses", "moe_course.routing"),
)
SHELL_TRANSFORMERS = ("input_transformers_post", "ast_transformers")
MANAGER_TRANSFORMERS = ("cleanup_transforms", "line_transforms", "token_transformers")  # cleanup = *_cleanup
PRE_RUN_EVENTS = ("pre_execute", "pre_run_cell")


def guarded_modules() -> dict:
    """``{name: module}`` of the modules the hidden tests use, imported here if they were not yet."""
    for name in GUARDED_MODULES:
        importlib.import_module(name)
    return {
        name: module
        for name, module in sys.modules.items()
        if name in GUARDED_MODULES or name.startswith("moe_course.")
    }


class Snapshot:
    """The state the hidden tests rely on, as it is now; :meth:`restore` puts it back."""

    def __init__(self, shell):
        self.shell = shell
        self.manager = shell.input_transformer_manager
        self.transformers = [
            (owner, name, list(getattr(owner, name)))
            for owner, names in ((shell, SHELL_TRANSFORMERS), (self.manager, MANAGER_TRANSFORMERS))
            for name in names
        ]
        self.callbacks = {event: list(shell.events.callbacks[event]) for event in PRE_RUN_EVENTS}
        self.modules = guarded_modules()
        self.namespaces = [(vars(module), dict(vars(module))) for module in (builtins, *self.modules.values())]

    def restore(self) -> None:
        for namespace, saved in self.namespaces:  # first: the lines below call builtins
            namespace.update(saved)
        sys.modules.update(self.modules)
        self.shell.input_transformer_manager = self.manager
        for owner, name, saved in self.transformers:
            setattr(owner, name, list(saved))
        for event, saved in self.callbacks.items():
            self.shell.events.callbacks[event] = list(saved)


class GradingKernel(IPythonKernel):
    """The IPython kernel, restoring a :class:`Snapshot` taken at start before each cell, stderr sent as stdout;
    confined to the folders ``MOE_COURSE_CONFINE`` names, if set (:func:`kernel_environment`)."""

    def start(self):
        if CONFINE in os.environ:  # after the kernel read its connection file, before any cell
            grading_sandbox.confine(**json.loads(os.environ[CONFINE]))
        sys.stderr.name = "stdout"  # the name each stream message carries: nbgrader zeroes a cell with "stderr"
        self.snapshot = Snapshot(self.shell)
        super().start()

    async def do_execute(self, code, silent, *args, **kwargs):
        self.snapshot.restore()  # before IPython transforms the cell's source
        try:
            return await super().do_execute(code, silent, *args, **kwargs)
        finally:  # and for the kernel's own code that replies
            self.snapshot.restore()


def kernel_environment(course_dir: Path, library: Path | None = None) -> dict:
    """Write the kernelspec of :class:`GradingKernel` (``KERNEL_NAME``, this Python) into ``course_dir/jupyter`` and
    return the environment variables under which Jupyter finds it there.

    With ``library`` (a submission's course, holding a copy of the library there), the kernel is confined
    (:mod:`moe_course.grading_sandbox`) to reading ``library`` and writing ``course_dir/autograded`` (where nbgrader
    runs the notebook) and ``course_dir/home``, its home and temporary folder."""
    course_dir = Path(course_dir)
    spec_dir = course_dir / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", __name__, "-f", "{connection_file}", "--HistoryManager.hist_file=:memory:"]
    spec = {"argv": argv, "display_name": "Python 3 (moe_course grading)", "language": "python"}
    if library:
        home = course_dir / "home"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        confined = {"read": [str(library)], "write": [str(course_dir / "autograded"), str(home)]}
        spec["env"] = {"HOME": str(home), "TMPDIR": str(home / "tmp"), CONFINE: json.dumps(confined)}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return {"JUPYTER_PATH": os.pathsep.join(filter(None, [str(spec_dir.parents[1]), os.environ.get("JUPYTER_PATH")]))}


if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=GradingKernel)
