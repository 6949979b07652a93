# Two entry points on a fresh machine (as root): `make demo` and `make test`.
PYTHON ?= python3
DEMO_ARGS ?=   # e.g. --exit: run through and exit instead of keeping the lab up for the map
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean deps

deps: $(STAMP)

$(STAMP): setup.cfg pyproject.toml scripts/install-deps.sh
	./scripts/install-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

demo: deps
	$(PY) -m demo $(DEMO_ARGS)

test: deps
	$(PY) -m pytest

test-all: deps
	$(PY) -m pytest -m ''

bench: deps
	$(PY) -m bench

lint: deps
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
