# The two commands of the quick start:
#   make run [SAMPLE=N]   set up, then run sampleN (default 1) against the local stack
#   make test             set up, then run the whole test suite
# and, to look at what a sample kept:
#   make stack            start the local stack on its kept data, in the foreground (Ctrl-C stops it)
# Set-up is a Python virtual environment in .venv (requirements-dev.txt, then this project itself,
# editable, from pyproject.toml: `localbatch` and `python -m localbatch` then work from any
# directory) and Azurite in node_modules (npm ci, from the committed package-lock.json); both
# are redone only when their requirement files change.

PYTHON ?= python3
NPM ?= npm
SAMPLE ?= 1
PYTEST_ARGS ?=

VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
SAMPLE_SCRIPT := $(firstword $(wildcard sample$(SAMPLE)_*.py))

.PHONY: run test setup stack clean bench fuzz help

help:
	@echo "make run [SAMPLE=N]  set up, then run sampleN against the local stack (default: sample 1)"
	@echo "make test            set up, then run the whole test suite"
	@echo "make stack           set up, then run the local stack on the data samples kept, until Ctrl-C"
	@echo "make bench           set up, then run the benchmarks in bench/"
	@echo "make fuzz            set up, then fuzz localbatch with schemathesis (all operations; figures)"
	@echo "make setup           only create .venv and install Azurite"
	@echo "make clean           remove .venv, node_modules and the local stack's data"

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else "Python 3.9 or newer is needed; this is " + sys.version.split()[0])'
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  echo "$(PYTHON) cannot create virtual environments: install them with 'sudo apt-get install python3-venv'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --upgrade pip
	$(VENV_PYTHON) -m pip install --quiet -r requirements-dev.txt
	$(VENV_PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

node_modules/.installed: package.json package-lock.json
	@command -v node >/dev/null 2>&1 && command -v $(NPM) >/dev/null 2>&1 || { \
	  echo "Node.js 18 or newer and npm are needed for Azurite: install them with 'sudo apt-get install nodejs npm'"; exit 1; }
	$(NPM) ci --no-audit --no-fund --loglevel=error
	@touch $@

run: setup
	@test -n "$(SAMPLE_SCRIPT)" || { echo "No sample matches SAMPLE=$(SAMPLE) (sample$(SAMPLE)_*.py)"; exit 1; }
	$(VENV_PYTHON) $(SAMPLE_SCRIPT)

# localbatch and Azurite on the ports and data directory of configuration.cfg, in the foreground:
# what a sample kept (--keep-resources) is there to look at.
stack: setup
	$(VENV_PYTHON) -m common.stack

# pytest exits 5 when it collected no test at all: that is a failure here, not a silent success.
test: setup
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

# Figures, not pass/fail: see bench/ (tests never assert on wall-clock time).
bench: setup
	$(VENV_PYTHON) -m bench

# Every operation, positive and negative examples; fails on a 5xx other than 501 or a schema violation.
# FUZZ_ARGS: e.g. --examples 300 or --operation create_pool (see tests/fuzz/run.py).
FUZZ_ARGS ?=
fuzz: setup
	$(VENV_PYTHON) -m tests.fuzz $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) node_modules .localstack .pytest_cache *.egg-info build
