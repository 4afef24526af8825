# Two commands do everything on a fresh machine: `make run` and `make test`.
# The venv is rebuilt only when pyproject.toml changes; pip's cache (PIP_CACHE_DIR, by
# default ~/.cache/pip) keeps torch and the other large wheels, so they download once.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=
LINT_PATHS := services tests $(wildcard benchmarks)

.PHONY: install run test lint typecheck unit clean

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

test: lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
