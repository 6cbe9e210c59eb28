"""The pinned install resolves on the public package index, for every platform the README names.

This machine's own pip configuration (extra indexes, local wheels, caps) is ignored: a pin that only resolves
here fails. Offline, the tests skip with a message, except in CI (CI=true), where an unreachable index fails.
"""

import json
import os
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints.txt"
INDEX = "https://pypi.org/simple"
TORCH, TRITON = "2.13.0", "3.7.1"  # triton is what torch 2.13.0's Linux wheels require, exactly


def pins() -> dict:
    """constraints.txt as {normalized name: version}."""
    lines = [line for line in CONSTRAINTS.read_text().splitlines() if line and not line.startswith("#")]
    return {canonicalize_name(Requirement(line).name): line.split("==")[1] for line in lines}


def mismatches(resolved: dict) -> dict:
    """The resolved packages whose version is not the pinned one: {name: (resolved, pinned)}."""
    pinned = pins()
    return {name: (v, pinned[name]) for name, v in resolved.items() if name in pinned and pinned[name] != v}


def requirements() -> list:
    """What `make lab` installs: the package's dependencies with the course and test extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return project["dependencies"] + extras["course"] + extras["test"]


@pytest.fixture(scope="module")
def index_reachable():
    try:
        urllib.request.urlopen(f"{INDEX}/pip/", timeout=15).close()
    except OSError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the package index {INDEX} cannot be reached in CI: {error}")
        pytest.skip(f"offline: the package index {INDEX} cannot be reached ({error}), so resolution is not checked")


def resolved_versions(report: dict) -> dict:
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}


def test_pins_resolve_with_pip_on_this_platform(index_reachable, tmp_path):
    """What a learner's `make lab` does here, with a clean pip: every pin is what gets installed."""
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "--quiet",
           "--no-cache-dir", "--index-url", INDEX, "--report", str(tmp_path / "report.json"),
           "-c", str(CONSTRAINTS), *requirements()]  # fmt: skip
    # --isolated skips environment variables and the user's config, not the machine-wide one: no config file at all
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    versions = resolved_versions(json.loads((tmp_path / "report.json").read_text()))
    assert versions["torch"] == TORCH
    if sys.platform == "linux":
        assert versions["triton"] == TRITON
    assert mismatches(versions) == {}


# (uv's platform, macOS version for its wheel tags, Python): pip cannot resolve for another platform, because it
# evaluates the dependencies' markers (torch's `platform_system == "Linux"`) for the machine it runs on.
TARGETS = [
    ("x86_64-manylinux_2_28", None, "3.11.5"),
    ("x86_64-manylinux_2_28", None, "3.13"),
    ("aarch64-apple-darwin", "14.0", "3.11.5"),
]


@pytest.fixture(scope="module")
def uv_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("uv-cache")  # fresh: every answer comes from the index, once per run


@pytest.mark.parametrize(("platform", "macos", "python"), TARGETS)
def test_pins_resolve_for_every_platform_the_readme_names(index_reachable, uv_cache, tmp_path, platform, macos, python):
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    if macos:
        env["MACOSX_DEPLOYMENT_TARGET"] = macos  # torch 2.13.0's macOS wheels are tagged macosx_14_0_arm64
    (tmp_path / "requirements.in").write_text("\n".join(requirements()) + "\n")
    cmd = [Path(sys.executable).parent / "uv", "pip", "compile", "--no-config", "--quiet", "--cache-dir", uv_cache,
           "--default-index", INDEX, "--python-platform", platform, "--python-version", python,
           "-c", CONSTRAINTS, tmp_path / "requirements.in", "-o", tmp_path / "resolved.txt"]  # fmt: skip
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    resolved = dict(line.split("==") for line in (tmp_path / "resolved.txt").read_text().splitlines() if "==" in line)
    assert resolved["torch"] == TORCH
    assert resolved.get("triton") == (TRITON if "linux" in platform else None)  # Triton ships no macOS build
    assert mismatches(resolved) == {}


def test_environment_yml_installs_the_same_pinned_set():
    """conda's pip step gets the same constraints and extras as `make lab`, on a Python the pins support."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_lines == ["-c constraints.txt", "-e .[course,test]"]
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"  # conda-forge's newest 3.11 (the pins need 3.11.5 or newer)
    assert "[course,test]" in (REPO / "Makefile").read_text()
