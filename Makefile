# Entry points on a fresh machine (as root): `make demo`, `make test`, and `make test-k8s`
# (Megalos on a real one-node Kubernetes: docs/install.md, "How this is tested").
PYTHON ?= python3
DEMO_ARGS ?=   # e.g. --exit: run through and exit instead of keeping the lab up for the map
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all test-k8s image deps-k8s kathara-venv bench lint clean deps

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

# The image (k8s/Dockerfile, with buildah), the one-node cluster (scripts/cluster.sh), and the
# tests in tests/k8s (marker `k8s`). A cluster that was up before is left up; one this target
# started is removed even when a test fails.
test-k8s: deps deps-k8s kathara-venv image
	@up_before=$$(scripts/cluster.sh status >/dev/null 2>&1 && echo yes); \
	$(PY) -m pytest -m k8s tests/k8s; rc=$$?; \
	[ -n "$$up_before" ] || scripts/cluster.sh down; \
	exit $$rc

image: deps-k8s
	scripts/image.sh all

deps-k8s:
	./scripts/install-deps.sh k8s

# Kathara 3.8.3 builds V1EnvVar(name, value) positionally, which the project's kubernetes client
# (keyword-only models) refuses: it runs from its own environment with a client it works with.
KATHARA_VENV := .venv-kathara
kathara-venv: $(KATHARA_VENV)/.installed

$(KATHARA_VENV)/.installed:
	$(PYTHON) -m venv $(KATHARA_VENV)
	$(KATHARA_VENV)/bin/python -m pip install -q 'kathara==3.8.3' 'kubernetes==33.1.0'
	touch $@

test-all: deps
	$(PY) -m pytest -m ''

bench: deps
	$(PY) -m bench

lint: deps
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(KATHARA_VENV) *.egg-info .pytest_cache .hypothesis
