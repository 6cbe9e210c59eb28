"""A learner's first hour on a fresh copy of the course: ``make workspace``, ``make lab`` in headless Chromium (saved
widgets render, no nbgrader controls, every cell runs, a slider drives its plot), ``make grade``, a clean git status.

The copy is made from the working tree (uncommitted work included) and reuses the venv that runs the tests.
"""

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # `make test` runs pytest from the course's venv; the copy reuses it
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's chromium, chromium-driver
# Headless, as root (--no-sandbox) and offline: without the networking flags Chromium floods refused connections.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--window-size=1400,1000",
]
LESSON = "notebooks/05_capacity.ipynb"  # sliders with saved state, and it runs in seconds
EXERCISE = "01_dense_vs_sparse_flops"

SLIDER = ".widget-slider"
LIVE_SLIDER = ".widget-slider:not(.jupyter-widgets-disconnected)"  # made by a cell that ran, not restored from the file
WIDGET_OUTPUT = ".widget-output"
PROMPT = ".jp-Notebook .jp-CodeCell .jp-InputPrompt"
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
IDLE = '.jp-Notebook-ExecutionIndicator[data-status="idle"]'


def run(*cmd, cwd: Path, env: dict, timeout: float = 300) -> str:
    """Run ``cmd``; fail the test with its output unless it exits 0. Returns its stdout."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@dataclass
class Course:
    root: Path
    env: dict

    def make(self, *args: str, timeout: float = 300) -> str:
        return run("make", *args, f"VENV={VENV}", cwd=self.root, env=self.env, timeout=timeout)


def learner_env(home: Path) -> dict:
    """A fresh shell: its own HOME (Jupyter's trust store, settings and runtime files go there, not into yours) and no
    Jupyter or make variables inherited from the shell that runs the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "MAKE", "MFLAGS"))}
    return dict(env, HOME=str(home))


def copy_working_tree(root: Path) -> None:
    ls_files = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]  # tracked and new, not ignored
    names = subprocess.run(ls_files, cwd=REPO, capture_output=True, check=True)
    for name in filter(None, names.stdout.decode().split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree stays out, as in a commit
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)  # keeps mtimes: a newer pyproject.toml would make `make` reinstall


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    """The course as a learner clones it (a git checkout), after ``make workspace``."""
    tmp = tmp_path_factory.mktemp("learner")
    (tmp / "home").mkdir()
    course = Course(tmp / "course", learner_env(tmp / "home"))
    copy_working_tree(course.root)
    git = ("git", "-c", "user.name=learner", "-c", "user.email=learner@example.com", "-c", "commit.gpgsign=false")
    for cmd in (("init", "-q"), ("add", "-A"), ("commit", "-qm", "the course as published")):
        run(*git, *cmd, cwd=course.root, env=course.env)
    stamp = VENV / ".installed"
    up_to_date = subprocess.run(["make", "-q", str(stamp), f"VENV={VENV}"], cwd=course.root, env=course.env)
    assert up_to_date.returncode == 0, f"`make` would reinstall {VENV} (no {stamp}, or an older one): run `make setup`"
    course.make("workspace")
    assert (course.root / "workspace" / LESSON).is_file()
    return course


def require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        message = f"the browser test needs {' and '.join(missing)} (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must run it")
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    left_behind: list = field(default_factory=list)  # processes that outlived the server's shutdown

    def open(self, path: str, method: str = "GET"):
        """The server's response to ``path`` (no proxy: the server is local)."""
        headers = {"Authorization": f"token {self.token}"}
        request = urllib.request.Request(self.url + path, method=method, headers=headers)
        return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10)

    def status(self, path: str, method: str = "GET") -> int:
        """The HTTP status of ``path``."""
        try:
            with self.open(path, method) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    def json(self, path: str):
        """What the server answers to GET ``path``, decoded from JSON."""
        with self.open(path) as response:
            return json.load(response)


def wait_until_up(lab: Lab, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if lab.status("/api/status") == 200:
                return
        time.sleep(0.25)
    pytest.fail(f"`make lab` did not answer at {lab.url}:\n{log.read_text()}")


def stop(lab: Lab, proc: subprocess.Popen) -> list:
    """Shut the server down as File > Shut Down does (it stops its kernels first); kill whatever outlives it.

    Returns the processes killed. Kernels run in sessions of their own, so they are found as the server's children.
    """
    family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    with contextlib.suppress(OSError):  # the server may close the connection as it exits
        lab.status("/api/shutdown", method="POST")
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    left = [p for p in family if running(p)]
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return left


def running(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


@contextlib.contextmanager
def jupyter_lab(course: Course):
    """``make lab`` on a free port, in a process group of its own; stopped with everything it started."""
    port, token = free_port(), secrets.token_hex(16)
    lab = Lab(f"http://127.0.0.1:{port}", token)
    args = f"LAB_ARGS=--no-browser --port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    log = course.root.parent / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["make", "lab", f"VENV={VENV}", args],
            cwd=course.root,
            env=course.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(lab, proc, log)
        yield lab
    finally:
        lab.left_behind = stop(lab, proc)


@contextlib.contextmanager
def chromium(tmp: Path):
    """Headless Chromium with a fresh profile; a screenshot of the page goes to ``tmp`` if the block fails."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield browser
    except BaseException:
        browser.save_screenshot(str(tmp / "failure.png"))
        print(f"screenshot of the page: {tmp / 'failure.png'}")
        raise
    finally:
        browser.quit()


def texts(browser, css: str) -> list:
    """The text of every element that ``css`` selects, hidden ones included."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent.trim())", css
    )


def present(browser, css: str) -> list:
    return browser.find_elements(By.CSS_SELECTOR, css)


def errors(browser) -> list:
    return [t[:2000] for t in texts(browser, STDERR) if "Error" in t or "Traceback" in t]


def all_cells_ran(browser) -> bool:
    """Idle, every code cell numbered, and the last cell's sliders live (so the run got to the end)."""
    prompts = texts(browser, PROMPT)
    numbered = bool(prompts) and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts)
    return numbered and bool(present(browser, LIVE_SLIDER)) and bool(present(browser, IDLE))


def click_menu(browser, wait: WebDriverWait, menu: str, item: str) -> None:
    browser.find_element(By.XPATH, f"//div[contains(@class, 'lm-MenuBar-itemLabel') and text()='{menu}']").click()
    path = f"//li[contains(@class, 'lm-Menu-item')][.//div[text()='{item}']]"
    wait.until(lambda b: b.find_element(By.XPATH, path), f"no {menu} > {item}").click()


def test_first_hour_in_the_lab(course, tmp_path):
    require_browser()
    with jupyter_lab(course) as lab, chromium(tmp_path) as browser:
        browser.get(f"{lab.url}/lab/tree/{LESSON}?token={lab.token}")
        wait = WebDriverWait(browser, 60, poll_frequency=0.2)

        # The saved widget state renders as controls before anything runs. An untrusted copy shows the widgets'
        # text instead ("VBox(children=(HBox(...", "Output()"): JupyterLab renders widgets only in trusted outputs.
        def rendered(b):
            raw = [t for t in texts(b, ".jp-OutputArea-output") if t.startswith(("VBox(", "Output()"))]
            return raw or (present(b, SLIDER) and present(b, f"{WIDGET_OUTPUT} img"))

        wait.until(rendered, "the saved widgets never rendered")
        assert present(browser, SLIDER), f"widgets shown as text, not controls: {rendered(browser)}"

        # No nbgrader controls for learners (lab/ turns them off): `make grade` is the check.
        menus = texts(browser, ".lm-MenuBar-item")
        assert "Run" in menus and not [m for m in menus if "nbgrader" in m.lower()], menus
        toolbar = texts(browser, ".jp-NotebookPanel-toolbar .jp-Toolbar-item")
        assert toolbar and not [t for t in toolbar if "Validate" in t], toolbar
        assert lab.status("/formgrader") == 404

        click_menu(browser, wait, "Run", "Run All Cells")
        wait.until(lambda b: errors(b) or all_cells_ran(b), f"cells still unrun: {texts(browser, PROMPT)}")
        assert not errors(browser)

        # The slider drives the plot and the line printed under it: E from 8 to 9.
        before = texts(browser, WIDGET_OUTPUT)
        browser.find_element(By.CSS_SELECTOR, f"{LIVE_SLIDER} .noUi-handle").send_keys(Keys.ARROW_RIGHT)
        wait.until(lambda b: texts(b, WIDGET_OUTPUT) not in ([], before), f"the output stayed {before}")
    assert not lab.left_behind, f"processes outlived `make lab`: {lab.left_behind}"
    assert not list(course.root.rglob("gradebook.db"))


def test_the_launcher_offers_one_kernel(course):
    """Every notebook names the kernel ``python3``, the Python that runs the lab: the Launcher offers it alone, also to
    a learner whose earlier ``make setup`` installed a "Python (moe-course)" kernel for their user."""
    data_dir = run(str(VENV / "bin" / "jupyter"), "--data-dir", cwd=course.root, env=course.env).strip()
    earlier = Path(data_dir) / "kernels" / "moe-course"
    earlier.mkdir(parents=True)
    argv = [str(VENV / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "Python (moe-course)", "language": "python"}
    (earlier / "kernel.json").write_text(json.dumps(spec))
    try:
        with jupyter_lab(course) as lab:
            kernels = lab.json("/api/kernelspecs")["kernelspecs"]
    finally:
        shutil.rmtree(earlier)
    assert set(kernels) == {"python3"}, kernels
    assert not lab.left_behind, f"processes outlived `make lab`: {lab.left_behind}"


def checkpoint(notebook: Path) -> None:
    """What JupyterLab leaves beside a notebook it saved."""
    (notebook.parent / ".ipynb_checkpoints").mkdir(exist_ok=True)
    shutil.copyfile(notebook, notebook.parent / ".ipynb_checkpoints" / f"{notebook.stem}-checkpoint.ipynb")


def test_workspace_grade_and_clean_checkout(course):
    workspace = course.root / "workspace"
    answers = workspace / "exercises" / EXERCISE / f"{EXERCISE}_exercises.ipynb"
    shutil.copyfile(course.root / "solutions" / EXERCISE / f"{EXERCISE}_exercises.ipynb", answers)
    checkpoint(answers)
    checkpoint(workspace / LESSON)

    report = course.make("grade", f"ASSIGNMENT={EXERCISE}", timeout=600)
    score, max_score = next(line.split()[1:] for line in report.splitlines() if line.startswith("total"))
    assert float(score) == float(max_score) > 0, report
    assert (course.root / "feedback" / EXERCISE / f"{EXERCISE}_exercises.html").is_file()
    assert not list(course.root.rglob("gradebook.db"))

    # `make workspace` keeps the learner's copies and brings back one they deleted (to start it over).
    edited = answers.read_bytes()
    (workspace / LESSON).unlink()
    course.make("workspace")
    assert answers.read_bytes() == edited
    assert (workspace / LESSON).read_bytes() == (course.root / LESSON).read_bytes()

    # The exercises still match the solutions after the learner's work: nothing of it lands in the course's folders.
    pytest_in_copy = (str(VENV / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider")
    test = ("tests/test_grading.py", "-k", "exercises_are_generated and 01")
    run(*pytest_in_copy, *test, cwd=course.root, env=course.env)
    status = run("git", "status", "--porcelain", cwd=course.root, env=course.env)
    assert status == "", f"the learner's work shows up in git (not ignored):\n{status}"
