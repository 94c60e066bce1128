# make demo : set up .venv, generate the embedded demo and run the whole workflow on CPU
# make test : set up .venv and run the test suite (CI runs exactly this)
# Both are idempotent: .venv is (re)installed only when pyproject.toml changed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
# the workflow's rules call the `shazam` console script
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test lint venv clean-demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The demo's GPU jobs (toy teachers, toy models) are small enough to share a device, and on a
# CPU-only machine there is none to share: they may run side by side, one per core.
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --resources gpu=$(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check shazam tests benchmarks
	$(BIN)/ruff format --check shazam tests benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

clean-demo:
	rm -rf results logs resources/demo .snakemake
