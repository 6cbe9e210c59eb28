# The course's two commands: `make lab` (set up and open JupyterLab) and `make test` (set up and run every test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ASSIGNMENT ?=
ASSIGNMENTS := $(notdir $(wildcard solutions/*))

.PHONY: setup lab test lint grade exercises clean

# A virtual environment in the repo with the pinned dependencies and the package in editable mode.
# torch is installed first, alone, so the CPU build 2.13.0 is what every later requirement sees.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[course,test]"
	$(PY) -m ipykernel install --user --name moe-course --display-name "Python (moe-course)"
	touch $(STAMP)

setup: $(STAMP)

# JupyterLab refuses to run as root unless told; containers often are root.
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks/00_setup.ipynb $(if $(filter 0,$(shell id -u)),--allow-root)

lint: setup
	$(VENV)/bin/ruff check moe_course tests benchmarks
	$(VENV)/bin/ruff format --check moe_course tests benchmarks

# Library, grading pipeline and every notebook of notebooks/ and solutions/ (executed by nbval).
test: lint
	$(PY) -m pytest tests notebooks solutions --nbval-lax --nbval-current-env -p no:cacheprovider

# Autograde your copy in exercises/, hidden tests included: make grade ASSIGNMENT=02_moe_layer
grade: setup
	@test -n "$(ASSIGNMENT)" || { echo "usage: make grade ASSIGNMENT=<one of: $(ASSIGNMENTS)>"; exit 2; }
	$(PY) -m moe_course.grading $(ASSIGNMENT)

# Regenerate the student notebooks in exercises/ from solutions/ (instructors, after editing a solution).
exercises: setup
	$(PY) -c "import sys; from pathlib import Path; from moe_course.grading import release; \
	[release(Path('.'), a, Path('exercises') / a) for a in sys.argv[1:]]" $(ASSIGNMENTS)

clean:
	rm -rf $(VENV) submitted autograded feedback gradebook.db .nbgrader.log
