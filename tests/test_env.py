import sys

import torch

from moe_course.env import THREADS, environment_report, has_triton, machine, triton_mode, use_course_threads


def test_report_names_versions_and_mode():
    report = environment_report()
    assert report["torch"] == torch.__version__
    assert report["python"].count(".") == 2
    assert report["triton_mode"] in ("native", "interpreter", "unavailable")
    assert (report["gpu"] is None) == (not torch.cuda.is_available())


def test_cpu_or_forced_interpreter_means_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_mode() == "interpreter"
    monkeypatch.delenv("TRITON_INTERPRET")
    assert triton_mode() == ("native" if torch.cuda.is_available() else "interpreter")


def test_triton_is_installed_wherever_it_can_be():
    """On Linux the install includes Triton, so no Triton test may be skipped there (conftest.py skips them only
    where Triton has no build)."""
    assert has_triton() or sys.platform == "darwin"


def test_mode_reads_triton_interpret_as_triton_does(monkeypatch):
    """An explicit value is kept by moe_course.kernels, so the report follows it, in Triton's spelling of booleans."""
    monkeypatch.setenv("TRITON_INTERPRET", "True")
    assert triton_mode() == "interpreter"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert triton_mode() == "native"


def test_the_course_thread_policy_is_set_and_reported():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(THREADS + 1)
        assert use_course_threads() == THREADS == torch.get_num_threads()
        assert environment_report()["cpu_threads"] == THREADS
    finally:
        torch.set_num_threads(previous)


def test_the_machine_names_what_decides_its_numbers():
    m = machine()
    assert m["cpu"] and m["cpu"] != "unknown"
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["torch"] == torch.__version__ and m["platform"] and m["numpy"]
    assert (m["triton"] is None) == (not has_triton())
