# Two commands do everything on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
CP_VENV := .venv-cp
BIN := $(VENV)/bin
CORES ?= 2
SNAKEMAKE := $(BIN)/snakemake
export JAVA_HOME ?= /usr/lib/jvm/java-17-openjdk-amd64

.PHONY: setup demo demo-seeds test bench lint docs clean-demo

## setup: create the main environment (.venv) and the CellProfiler 4.2.8.1 one (.venv-cp) if missing
setup: $(VENV)/.installed $(CP_VENV)/.installed

$(VENV)/.installed: requirements/main.lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -r requirements/main.lock.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(CP_VENV)/.installed: requirements/cellprofiler-py39.lock.txt scripts/setup_cellprofiler.sh
	scripts/setup_cellprofiler.sh $(CP_VENV) requirements/cellprofiler-py39.lock.txt
	touch $@

## demo: run the whole pipeline on the embedded synthetic gallery (config.yaml)
## (CellResDM's training and sampling, the longest chain of jobs, go first: --prioritize)
demo: setup
	$(SNAKEMAKE) --cores $(CORES) --rerun-incomplete \
		--prioritize $$($(BIN)/python -m cellresdm.results predictions method=cellresdm)
	$(SNAKEMAKE) --cores $(CORES) --report $$($(BIN)/python -m cellresdm.results snakemake_report)

## demo-seeds: after `make demo`, retrain CellResDM and the one-pass methods with training seeds SEEDS (default 1 2)
## in demo_seeds/seed{N}/ and print the quality bars of every run and their spread over the seeds
SEEDS ?= 1 2
demo-seeds: setup
	CORES=$(CORES) scripts/demo_seeds.sh $(SEEDS)

## test: unit tests and tiny end-to-end runs of the Snakefile
test: setup
	$(BIN)/pytest -q --durations=15

## bench: speed measurements (prints figures; not a timed test)
bench: setup
	$(BIN)/pytest -q -s -p no:cacheprovider benchmarks/

## lint: ruff, snakefmt and snakemake --lint
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules/
	$(SNAKEMAKE) --lint

## docs: regenerate the outputs table of docs/design.md from cellresdm/results.py
docs: setup
	$(BIN)/python -m cellresdm.results --update-design docs/design.md

clean-demo:
	rm -rf "$$($(BIN)/python -c 'from cellresdm.results import DEFAULT_ROOT; print(DEFAULT_ROOT)')" .snakemake demo_seeds
