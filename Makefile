# The README's commands. Each target bootstraps .venv from the pinned requirements first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench docs lint clean

$(STAMP): requirements.txt requirements-runtime.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(VENV)/bin/sorterbot-cloud detector export >/dev/null
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sorterbot-cloud demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# torch threads of the benchmarks: 1 measures the figures in README.md on the shared
# 2-core machine; `make bench BENCH_THREADS=4` on a machine of your own
BENCH_THREADS ?= 1
bench: $(STAMP)
	$(VENV)/bin/sorterbot-cloud bench --threads $(BENCH_THREADS) all

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

lint: $(STAMP)
	$(VENV)/bin/ruff check sorterbot_cloud tests recipes

clean:
	rm -rf $(VENV) out var docs/_build
