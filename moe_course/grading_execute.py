"""nbgrader's Execute preprocessor for a kernel that dies or cannot be stopped (set in ``nbgrader_config.py``).

nbgrader's own gives up on the whole notebook when the kernel dies (``os._exit``, a segfault), and a cell that
ignores the interrupt sent at the time limit (a C call after ``signal(SIGINT, SIG_IGN)``) keeps the kernel busy, so
that every later cell times out in turn. This one stops there instead: the cell gets an error output saying why, the
kernel is killed if it still runs, and each later code cell gets a "not run" error, so the parts before keep their
scores and the rest score 0. Every error it writes says why in one line (``evalue``); a cell stopped at the time
limit gets one too. After the notebook, the processes the notebook started are killed, before nbgrader saves the
grades (where :mod:`moe_course.grading_supervisor` runs nbgrader).

Before each graded test cell the assignment's locked set-up cell (``setup``) runs once more, so the names the tests
take from it (``torch``, the library's reference functions, test helpers) are the set-up's even if an answer cell
rebound them (``torch = ...`` with an ``allclose`` that always agrees). It runs as a request of its own, not pasted
above the test's source, so that a failing test's traceback shows the test cell's own lines and numbers; its output
is dropped, but if it fails, the test cell does not run and shows the set-up's error instead (and scores 0).
"""

import time
from queue import Empty

from jupyter_client.utils import ensure_async
from nbclient.exceptions import DeadKernelError
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Float

from . import grading_supervisor

STOPPED = "KernelStopped"  # the error of the cell the kernel died (or was killed) in
NOT_RUN = "NotRun"  # the error of each code cell after it
SETUP = "setup"  # the grade_id of an assignment's locked set-up cell: its imports and helpers, which the tests use
REPORTED = ("CellTimeoutError", STOPPED)  # the errors whose evalue says why a cell was stopped (the first: nbgrader's)


class KernelStuck(Exception):
    """The kernel did not answer after it was interrupted at the time limit, and was killed."""


def cell_name(cell, index: int) -> str:
    """How the messages name a cell: its nbgrader id, which the feedback shows, else its position."""
    return cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {index + 1}"


def is_test(cell) -> bool:
    """Whether ``cell`` is a graded test cell (graded code, not an answer)."""
    nbgrader = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(nbgrader.get("grade")) and not nbgrader.get("solution")


def error(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class GradingExecute(Execute):
    interrupt_grace = Float(5, help="Seconds an interrupted cell has to stop before its kernel is killed.").tag(
        config=True
    )

    def preprocess(self, nb, resources, km=None):
        self.stopped = None  # once the kernel is gone: why, for the cells that did not run
        self.running = "the kernel's start"  # what runs now, for the messages
        self.setup = next((c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == SETUP), "")
        try:
            return super().preprocess(nb, resources, km)
        finally:
            if grading_supervisor.supervising:  # what is below is the notebook's: nothing may outlive it
                grading_supervisor.kill_descendants()

    def preprocess_cell(self, cell, resources, index):
        if self.stopped:
            if cell.cell_type == "code":
                cell.outputs = [error(NOT_RUN, f"not run: {self.stopped}")]
            return cell, resources
        self.running = cell_name(cell, index)
        try:
            if is_test(cell) and self.setup and (setup_errors := self.rerun_setup(cell, index)):
                cell.outputs = setup_errors  # the test would run without its names: it shows why, and scores 0
                return cell, resources
            return super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self.stopped = f"the kernel died in {self.running} (the process exited or crashed)"
        except KernelStuck:
            self.stopped = (
                f"{self.running} ran past the {self.timeout} s limit and ignored the interrupt: its kernel was killed"
            )
        cell.outputs.append(error(STOPPED, f"{self.stopped}; the cells after it did not run and score 0"))
        return cell, resources

    def rerun_setup(self, test, index: int) -> list:
        """Run the set-up cell's source before the ``test`` cell at ``index``: the test's names as set up, whatever an
        answer cell rebound since. Returns its error outputs."""
        setup = NotebookNode(cell_type="code", source=self.setup, metadata=NotebookNode(), outputs=[])
        try:
            self.execute_cell(setup, index, store_history=False)  # no execution count: the cells keep their numbers
        finally:
            self.nb.cells[index] = test  # execute_cell puts the cell it ran in the notebook at index
        return [output for output in setup.outputs if output.output_type == "error"]

    async def _async_handle_timeout(self, timeout, cell=None):
        reply = await super()._async_handle_timeout(timeout, cell)  # interrupts the kernel; the cell's error reply
        if not await self._answers(self.interrupt_grace):
            await ensure_async(self.km.shutdown_kernel(now=True))
            raise KernelStuck
        reply["content"]["evalue"] = f"{self.running} ran past the {timeout} s limit and was stopped"
        return reply

    async def _answers(self, seconds: float) -> bool:
        """Whether the kernel answers a request within ``seconds``: an interrupted cell's reply comes first."""
        msg_id = self.kc.kernel_info()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await ensure_async(self.kc.shell_channel.get_msg(timeout=left))
            except Empty:
                return False
            if msg["parent_header"].get("msg_id") == msg_id:
                return True
        return False
