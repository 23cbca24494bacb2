# choreo-streams — the two commands a new user needs: `make demo` and `make test`.
# Everything the project needs is installed from here (pip into .venv, Kafka jars via Maven).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist processes for `make test` (each test module runs whole in one of them, with its
# own session broker): 2 halves the suite on the 2-core CI machine; 0 runs it in this process.
TEST_WORKERS ?= 2

.PHONY: help venv install broker-jars broker-start broker-stop lint test test-unit test-soak chaos fault-commerce demo bench bench-quick clean

help:
	@echo "make demo        run the commerce flow on the embedded local Kafka broker"
	@echo "make test        install everything and run the default test suite"
	@echo "make lint        ruff (lint and format check) and mypy over the whole tree; no broker needed"
	@echo "make test-soak   long fault and soak runs (marker: soak)"
	@echo "make chaos       the ledger through SIGKILLs, scaling, a wiped state dir and a broker restart"
	@echo "make fault-commerce  the commerce flow with the real PSP and sink through SIGKILLs, judged by their ledgers"
	@echo "make bench       benchmarks against the local broker (bench-quick: the short variant)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,faust,registry,lint]'
	@touch $(STAMP)

venv install: $(STAMP)

broker-jars: $(STAMP)
	$(BIN)/choreo broker jars

broker-start: broker-jars
	$(BIN)/choreo broker start

broker-stop: $(STAMP)
	$(BIN)/choreo broker stop

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: broker-jars
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-soak: broker-jars
	$(BIN)/python -m pytest -m soak $(PYTEST_ARGS)

CHAOS_ARGS ?=

chaos: broker-jars
	$(BIN)/python -m tests.engine.chaos $(CHAOS_ARGS)

FAULT_ARGS ?=

fault-commerce: broker-jars
	$(BIN)/python -m tests.engine.commerce_faults $(FAULT_ARGS)

BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,faust,registry,lint,bench]'
	@touch $(BENCH_STAMP)

bench: broker-jars $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

bench-quick: broker-jars $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py --quick $(BENCH_ARGS)

demo: broker-jars
	$(BIN)/choreo demo

clean:
	rm -rf $(VENV) .choreo .state .pytest_cache .hypothesis
