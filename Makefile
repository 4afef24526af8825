# Two commands do everything on a fresh machine: `make run` and `make test` (what CI runs).
# `make check` is the inner loop: lint, types and the unit tests, in a couple of minutes.
# The venv is rebuilt only when pyproject.toml changes; pip's cache (PIP_CACHE_DIR, by
# default ~/.cache/pip) keeps torch and the other large wheels, so they download once.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=
LINT_PATHS := services tests tools $(wildcard benchmarks)
# Tests that start no model and no cluster: the router's parts, the chart, the shared code.
UNIT_TESTS := tests/router tests/chart tests/common tests/local

# Tests talk to loopback only. pytest runs in a network namespace of its own whose one
# interface is `lo`, so nothing a test starts (simulated pods' addresses included) can send
# a packet off this machine.
ISOLATED := $(if $(filter 0,$(shell id -u)),unshare --net,unshare --net --map-root-user) \
	sh -c 'ip link set lo up && exec "$$0" "$$@"'

.PHONY: install run check test lint typecheck k8s-binaries fa3-wheel clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[router,worker,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

run: install
	$(VENV)/bin/qwen-image up

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: install
	$(VENV)/bin/mypy services

# kube-apiserver, etcd, controllers and kwok for tests/k8s, built from Go modules once per
# machine (about 9 minutes the first time) into ~/.cache/qwen-image-serving.
k8s-binaries:
	tools/k8s/build.sh

# FlashAttention-3 for ATTENTION_BACKEND=auto/flash3, built against this venv's PyTorch with nvcc
# from PyPI (about 100 s the first time; cached in ~/.cache/qwen-image-serving/fa3). Its
# kernels need a Hopper GPU; the tests check that it installs and loads here.
fa3-wheel: install
	PYTHON=$(PY) tools/fa3/build.sh build/fa3

check: lint typecheck
	$(ISOLATED) $(PY) -m pytest -q $(PYTEST_ARGS) $(UNIT_TESTS)

test: lint typecheck k8s-binaries fa3-wheel
	$(ISOLATED) $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
