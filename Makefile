# dcft_lab — every target sets itself up: a fresh machine needs only Python 3.11.
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Data root laid out like ../shared/data (glue/, squad_v1.1/, xsum_test_sample/); override with DCFT_LAB_DATA=...
DCFT_LAB_DATA ?= $(abspath ../shared/data)
export DCFT_LAB_DATA
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= $(if $(HF_TOKEN),0,1)
# Lightning prints its "LeafSpec is deprecated" warning from torch 2.13; harmless.
export PYTHONWARNINGS ?= ignore::DeprecationWarning,ignore::FutureWarning

SCALE ?= full
LAUNCHER ?= basic
DRY_RUN ?= 0

.PHONY: setup run test lint test-slow bench bench-quick reproduce-table1 reproduce report clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	@echo "installing dcft_lab into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install -e '.[dev]' > $(VENV)/install.log 2>&1 || { tail -30 $(VENV)/install.log; exit 1; }
	@touch $@

setup: $(VENV)/.installed

## The main job: DCFT on real all-MiniLM-L6-v2 weights, real SST-2 (subsample), ~2 min on 2 CPU cores.
run: setup
	$(PY) -m dcft_lab.run experiment=quickstart $(ARGS)

## Fast suite: unit tests and in-process tiny runs, nothing outside the repository (2-3 min on 2 cores).
## The slow tests (subprocess / DDP / kill-and-resume / multirun runs, real data, real MiniLM): make test-slow.
## What goes where: README, "Tests".
test: setup
	WANDB_MODE=offline $(PY) -m pytest -q -m "not slow" --durations=5 $(ARGS)

## Lint (ruff, configured in pyproject.toml); CI runs it before the tests.
lint: setup
	$(PY) -m ruff check src tests scripts

## Only the slow tests (~12 min on 2 busy cores); CI (.ci/run) runs lint, test, then test-slow.
test-slow: setup
	WANDB_MODE=offline $(PY) -m pytest -q -m slow --durations=5 $(ARGS)

## Adapter speed / memory, side by side in one process; writes BENCHMARKS.md.
bench: setup
	$(PY) scripts/bench_adapters.py --write BENCHMARKS.md $(ARGS)

bench-quick: setup
	$(PY) scripts/bench_adapters.py --quick $(ARGS)

## Paper Table 1: SCALE=full (DeBERTaV3-base, needs the hub + GPUs; LAUNCHER=slurm|local|basic, DRY_RUN=1 prints)
## or SCALE=cpu (MiniLM on the local GLUE tasks, <= 2 h here; resumable). Then aggregates into table.md / figure.png.
reproduce-table1: setup
	$(PY) scripts/reproduce.py --table table1 --scale $(SCALE) --launcher $(LAUNCHER) $(if $(filter 1,$(DRY_RUN)),--dry-run) $(ARGS)

## Any paper table with a grid: make reproduce TABLE=table4|table5|table6 [LAUNCHER=slurm] [DRY_RUN=1]
TABLE ?= table1
reproduce: setup
	$(PY) scripts/reproduce.py --table $(TABLE) --scale $(SCALE) --launcher $(LAUNCHER) $(if $(filter 1,$(DRY_RUN)),--dry-run) $(ARGS)

report: setup
	$(PY) -m dcft_lab.report $(FOLDER) $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
