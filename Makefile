# The course's two commands: `make lab` (set up and open JupyterLab) and `make test` (set up and run every test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ASSIGNMENT ?=
JOBS ?= 1
ASSIGNMENTS := $(notdir $(wildcard solutions/*))
LAB_ARGS ?=

# Which torch build: the one the package index gives (CUDA on Linux x86_64, CPU on macOS), or TORCH=cpu for the
# CPU-only build from PyTorch's own index (about 200 MB instead of about 3 GB of CUDA wheels; no GPU needed).
TORCH ?=
ifeq ($(TORCH),cpu)
TORCH_INDEX := --extra-index-url https://download.pytorch.org/whl/cpu
else ifneq ($(TORCH),)
$(error TORCH must be empty or cpu, got "$(TORCH)")
endif
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

# JupyterLab refuses to run as root unless told; containers often are root.
AS_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup workspace lab formgrader test lint grade autograde exercises lessons clean

# A virtual environment in the repo with the pinned dependencies and the package in editable mode.
# torch is installed first, alone, so the chosen build is what every later requirement sees.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	@if [ -z "$(TORCH)" ] && [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi > /dev/null; then \
		echo "No NVIDIA GPU found: 'make clean && make lab TORCH=cpu' installs torch without the CUDA wheels."; fi
	$(PIP) pip
	$(PIP) $(TORCH_INDEX) torch
	$(PIP) -e ".[course,test]"
	touch $(STAMP)

setup: $(STAMP)

# Your copies of the lessons and exercises, in the git-ignored workspace/ (copied once, never overwritten).
workspace: setup
	$(PY) -m moe_course.workspace

# JupyterLab on your workspace; lab/ holds its settings for learners (nbgrader's own buttons are off: `make grade`
# is the check that runs the hidden tests).
lab: workspace
	JUPYTER_CONFIG_PATH="$(CURDIR)/lab" $(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)/workspace" \
		--LabApp.default_url=/lab/tree/notebooks/00_setup.ipynb $(AS_ROOT) $(LAB_ARGS)

# Instructors: JupyterLab on the whole course with nbgrader's Formgrader, toolbar and menus.
formgrader: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/formgrader $(AS_ROOT) $(LAB_ARGS)

lint: setup
	$(VENV)/bin/ruff check moe_course tests benchmarks conftest.py
	$(VENV)/bin/ruff format --check moe_course tests benchmarks conftest.py

# Library, grading pipeline and every notebook of notebooks/ and solutions/ (executed by nbval). conftest.py runs it
# all on PyTorch's generic CPU kernels (ATEN_CPU_CAPABILITY=default), not the AVX2 or AVX-512 ones that made the
# lessons' outputs: a checked output that only one kind of CPU reproduces fails here.
test: lint
	$(PY) -m pytest tests notebooks solutions --nbval-lax --nbval-current-env -p no:cacheprovider

# Autograde your copy in workspace/exercises/, hidden tests included: make grade ASSIGNMENT=02_moe_layer
# (after `make workspace`, which gives a copy made under an exercise's earlier name the name it is graded by)
grade: workspace
	@test -n "$(ASSIGNMENT)" || { echo "usage: make grade ASSIGNMENT=<one of: $(ASSIGNMENTS)>"; exit 2; }
	$(PY) -m moe_course.grading $(ASSIGNMENT)

# Instructors: grade every submitted/<student>/<assignment>/, each submission alone, into gradebook.db, autograded/
# and feedback/: make autograde ASSIGNMENT=02_moe_layer [JOBS=2] (JOBS submissions graded at once)
autograde: setup
	@test -n "$(ASSIGNMENT)" || { echo "usage: make autograde ASSIGNMENT=<one of: $(ASSIGNMENTS)>"; exit 2; }
	$(PY) -m moe_course.grading --class $(ASSIGNMENT) --jobs $(JOBS)

# Regenerate the student notebooks in exercises/ from solutions/ (instructors, after editing a solution).
exercises: setup
	$(PY) -c "import sys; from pathlib import Path; from moe_course.grading import release; \
	[release(Path('.'), a, Path('exercises') / a) for a in sys.argv[1:]]" $(ASSIGNMENTS)

# Maintainers: run every lesson in place with this CPU's own kernels, recording them in the notebook (after editing a
# lesson, or LESSONS=notebooks/08_inference.ipynb for one); prints each lesson's seconds.
LESSONS ?= $(wildcard notebooks/*.ipynb)
lessons: setup
	env -u ATEN_CPU_CAPABILITY $(PY) -m moe_course.notebooks $(LESSONS)

# Everything `make` made except your workspace/ (delete that yourself if you mean to).
clean:
	rm -rf $(VENV) submitted autograded feedback gradebook.db .nbgrader.log
