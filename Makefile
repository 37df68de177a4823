# dcft_lab — every target sets itself up: a fresh machine needs only Python 3.11.
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A local data root (glue/<Task>/*.tsv, squad_v1.1/, xsum_test_sample/): DCFT_LAB_DATA=..., else ./data or ../shared/data
# when one exists. With a local copy the hub is off by default (HF_HUB_OFFLINE=1 unless HF_TOKEN is set; this
# machine has no hub access); without one the runs load the public datasets from the Hugging Face hub.
DCFT_LAB_DATA ?= $(firstword $(wildcard $(abspath data) $(abspath ../shared/data)))
ifneq ($(strip $(DCFT_LAB_DATA)),)
export DCFT_LAB_DATA
export HF_HUB_OFFLINE ?= $(if $(HF_TOKEN),0,1)
endif
export TOKENIZERS_PARALLELISM ?= false
# The exact CPU torch of this machine and CI; on a GPU machine install your CUDA torch first, then: make setup CONSTRAINTS=
CONSTRAINTS ?= constraints-cpu.txt
# Lightning prints its "LeafSpec is deprecated" warning from torch 2.13; harmless.
export PYTHONWARNINGS ?= ignore::DeprecationWarning,ignore::FutureWarning

SCALE ?= full
LAUNCHER ?= basic
DRY_RUN ?= 0

.PHONY: setup run test lint test-slow bench bench-quick reproduce-table1 reproduce report clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	@echo "installing dcft_lab into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]' > $(VENV)/install.log 2>&1 || { tail -30 $(VENV)/install.log; exit 1; }
	@touch $@

setup: $(VENV)/.installed

## The main job: DCFT on real all-MiniLM-L6-v2 weights, real SST-2 (subsample): a few minutes on 2 CPU cores
## (about 3 min of training here, plus a first-time install).
run: setup
	$(PY) -m dcft_lab.run experiment=quickstart $(ARGS)

## Fast suite: unit tests and in-process tiny runs, nothing outside the repository (about 4 min on 2 cores).
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

## Paper Table 1: SCALE=full (DeBERTaV3-base, needs the hub + GPUs; LAUNCHER=slurm|local|basic, DRY_RUN=1 prints),
## SCALE=cpu_v2 (study v2 on MiniLM: ~200 runs, about a day of 2-core background work; resumable) or SCALE=cpu (study
## v1: 140 runs, 53 h of job time; complete and committed, reruns only rewrite its reports).
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
