"""The chain's `generator: vllm` against a real vLLM server (.venv-vllm, `make judge-venv`): a two-generation chain
runs on one server, and at a near-zero temperature its samples are exactly the greedy text of the same adapter
merged into the model in transformers.

Without .venv-vllm the test skips, unless RECURSIVE_LOOPS_REQUIRE_VLLM=1 (set by .ci/run): then it fails."""
import os

import pytest
import torch

from conftest import ROOT
from recursive_loops.models import chat_prompt, load_model
from recursive_loops.training import train_lora
from recursive_loops.chain import ChainConfig, gen_dir, run_chain
from recursive_loops.core import derive_seed, read_json, read_jsonl

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
pytestmark = pytest.mark.judge_server


def test_chain_samples_on_vllm_with_its_own_adapter(tmp_path, monkeypatch):
    if not VLLM_PYTHON.exists():
        msg = f"{VLLM_PYTHON} missing: `make judge-venv` builds the vLLM virtualenv"
        if os.environ.get("RECURSIVE_LOOPS_REQUIRE_VLLM") == "1": pytest.fail(msg)
        pytest.skip(msg)
    monkeypatch.setenv("RECURSIVE_LOOPS_VLLM_PYTHON", str(VLLM_PYTHON))
    cfg = ChainConfig(model="smollm2-135m", n_train=8, generations=2, n_generate=6, n_heldout=4, max_new_tokens=16,
                      batch_size=4, epochs=3, lr=1e-2, temperature=1e-4, generator="vllm", dtype="float32",  # the server runs fp32 on CPU
                      run_dir=str(tmp_path / "chain"))
    out = run_chain(cfg)
    m0, m1 = (read_json(gen_dir(out, g) / "manifest.json") for g in (0, 1))
    assert m0["generator"] == m1["generator"] == "vllm" and m0["vllm_server_start_s"] == m1["vllm_server_start_s"] > 0  # one server
    assert m0["determinism"]["mode"] == "vllm-cpu" and not m0["determinism"]["reproducible"]  # no per-request seeds on CPU
    assert "load_lora_adapter" in (out / "vllm_server.log").read_text()
    texts = [r["text"] for r in read_jsonl(gen_dir(out, 0) / "generated.jsonl")]
    assert len(texts) == 6 and len(set(texts)) == 1, texts  # temperature ~0: every sample is the greedy text
    # the same adapter again (CPU training is deterministic), merged, greedy in transformers
    instr = read_json(out / "chain.json")["instruction"]
    base, tok = load_model("smollm2-135m", cfg.dtype, "cpu")
    ids = tok(chat_prompt(tok, instr), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad(): plain = base.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:]
    pm, _ = train_lora(base, tok, instr, [r["text"] for r in read_jsonl(gen_dir(out, 0) / "train.jsonl")], cfg,
                       derive_seed(cfg.seed, "train", 0))
    merged = pm.merge_and_unload()
    with torch.no_grad(): greedy = merged.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:]
    assert greedy.tolist() != plain.tolist()  # the adapter moves the model, so the match below means it was applied
    assert texts[0] == tok.decode(greedy, skip_special_tokens=True).strip(), (texts[0], tok.decode(greedy))
