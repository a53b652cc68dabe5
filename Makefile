VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check ironflow tests benchmarks examples docs
	$(VENV)/bin/ruff format --check ironflow tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict ironflow/commands ironflow/interpreter ironflow/runtime/store/base.py

test: lint typecheck
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m examples.demo

bench: $(STAMP)
	$(PY) -m benchmarks.replay
	$(PY) -m benchmarks.engine

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
