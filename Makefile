# Two commands do everything on a fresh machine: `make run` and `make test` (what CI runs).
# `make check` is the inner loop: lint, types and the unit tests, in a couple of minutes.
# The venv holds exactly uv.lock's versions and is synced again only when uv.lock or
# pyproject.toml changes; uv's cache (UV_CACHE_DIR, by default ~/.cache/uv) keeps torch and
# the other large wheels, so they download once.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml uv.lock | sha1sum | cut -c1-12)
# uv itself is the version uv.lock records (the dev extra); the Dockerfiles read it the same way.
UV_VERSION := $(shell sed -n '/^name = "uv"$$/{n;s/^version = "\(.*\)"$$/\1/p}' uv.lock)
PYTEST_ARGS ?=
LINT_PATHS := services tests tools $(wildcard benchmarks)
# Tests that start no model and no cluster: the router's parts, the chart, the shared code.
UNIT_TESTS := tests/router tests/chart tests/common tests/local

# Tests talk to loopback only. pytest runs in a network namespace of its own whose one
# interface is `lo`, so nothing a test starts (simulated pods' addresses included) can send
# a packet off this machine.
ISOLATED := $(if $(filter 0,$(shell id -u)),unshare --net,unshare --net --map-root-user) \
	sh -c 'ip link set lo up && exec "$$0" "$$@"'

.PHONY: install lock run check test lint typecheck k8s-binaries fa3-wheel images skaffold-schema clean

install: $(STAMP)

# --inexact keeps the venv's own pip, which tools/fa3/build.sh fetches its compiler with.
$(STAMP): pyproject.toml uv.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(VENV)/bin/uv sync --quiet --frozen --inexact --all-extras
	@rm -f $(VENV)/.installed-*
	@touch $@

# Resolves pyproject.toml's ranges again into uv.lock (tests/test_lock.py fails while the two
# disagree); `make install` then installs what it wrote.
lock: install
	$(VENV)/bin/uv lock

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

# Both images, built with podman from the Dockerfiles (tools/images/build.sh: 16 minutes
# the first time on a 2-core machine, seconds when nothing changed; docs/kubernetes.md);
# tests/images runs them.
images:
	tools/images/build.sh

# skaffold's JSON schema from skaffold's Go module (once per machine), which
# tests/chart/test_chart_skaffold.py checks skaffold.yaml against.
skaffold-schema:
	tools/images/skaffold-schema.sh

check: lint typecheck skaffold-schema
	$(ISOLATED) $(PY) -m pytest -q $(PYTEST_ARGS) $(UNIT_TESTS)

test: lint typecheck k8s-binaries fa3-wheel images skaffold-schema
	$(ISOLATED) $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
