# One Makefile for humans and CI. `make demo` and `make test` bootstrap .venv on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned here only: any other torch request pulls a multi-GB CUDA build on these machines.
TORCH_BOOTSTRAP ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast test-docker test-executorch lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_BOOTSTRAP)"
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	@touch $@

demo: venv
	$(VENV)/bin/torchkeep demo

# The whole suite, slow tests included (no GPU needed; GPU tests skip cleanly). The Docker image
# build runs on its own (`make test-docker`, CI runs both): it needs a Docker engine and minutes.
test: venv
	$(PY) -m pytest -n 2 --dist loadfile -m "not docker" $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow" $(PYTEST_ARGS)

# scripts/docker-smoke.sh under pytest: builds the CPU image, runs it, checks it like a user would.
test-docker: venv
	$(PY) -m pytest -m docker tests/test_docker_smoke.py $(PYTEST_ARGS)

# ExecuTorch 1.5.1 runs with torch 2.13.0 only when installed without its dependency pins
# (docs/guide/export.md), so it lives in a side directory on PYTHONPATH, outside the dev venv.
EXECUTORCH_DIR ?= .executorch
test-executorch: venv
	$(PIP) install --quiet --no-deps --upgrade --target $(EXECUTORCH_DIR) executorch==1.5.1 torchao==0.18.0 ruamel.yaml tabulate
	PYTHONPATH=$(EXECUTORCH_DIR) $(PY) -c "import executorch.exir, executorch.runtime"
	PYTHONPATH=$(EXECUTORCH_DIR) $(PY) -m pytest -m "not docker" tests/export/test_targets.py -k executorch $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: venv
	@for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
