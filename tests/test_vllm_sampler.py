"""The chain's `generator: vllm` against a real vLLM server (.venv-vllm, `make judge-venv`): an adapter loaded
into the server gives the merged model's greedy text, sampling returns the texts asked for, and a chain run
with it starts one server for all its generations.

Without .venv-vllm the tests skip, unless RECURSIVE_LOOPS_REQUIRE_VLLM=1 (set by .ci/run): then they fail."""
import os

import pytest
import torch

from conftest import ROOT
from recursive_loops.chain import (ChainConfig, VLLMSampler, chat_prompt, load_model, run_chain, gen_dir, train_lora)
from recursive_loops.core import read_json, read_jsonl
from recursive_loops.data import instruction_for

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
pytestmark = pytest.mark.judge_server


@pytest.fixture(autouse=True)
def need_vllm(monkeypatch):
    if not VLLM_PYTHON.exists():
        msg = f"{VLLM_PYTHON} missing: `make judge-venv` builds the vLLM virtualenv"
        if os.environ.get("RECURSIVE_LOOPS_REQUIRE_VLLM") == "1": pytest.fail(msg)
        pytest.skip(msg)
    monkeypatch.setenv("RECURSIVE_LOOPS_VLLM_PYTHON", str(VLLM_PYTHON))


def test_adapter_in_vllm_matches_merged_model(tmp_path):
    from openai import OpenAI
    from peft import LoraConfig, get_peft_model
    cfg = ChainConfig(n_train=8, max_new_tokens=24, gen_batch_size=8)
    m, tok = load_model("smollm2-135m", "float32", "cpu")
    pm = get_peft_model(m, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    for n, p in pm.named_parameters():
        if "lora_B" in n: torch.nn.init.normal_(p, std=0.02)  # an adapter that moves the model
    pm.save_pretrained(tmp_path / "adapter")
    merged = pm.merge_and_unload()
    instr = instruction_for("bbc_news")
    ids = tok(chat_prompt(tok, instr), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hf = merged.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):]
    base, _ = load_model("smollm2-135m", "float32", "cpu")
    with torch.no_grad():
        plain = base.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):]
    assert hf.tolist() != plain.tolist()  # the adapter changes the greedy text, so the comparison below means something
    with VLLMSampler(cfg, tmp_path / "server.log") as s:
        name = s.load(tmp_path / "adapter", "probe")
        r = OpenAI(base_url=s.url, api_key="EMPTY").completions.create(model=name, prompt=ids, max_tokens=16, temperature=0)
        assert r.choices[0].text == tok.decode(hf, skip_special_tokens=True), (r.choices[0].text, tok.decode(hf))
        s.unload(name)
        a = s.generate(tmp_path / "adapter", tok, instr, 20, seed=7)
        assert len(a) == 20 and all(a) and len(set(a)) > 15  # sampled (temperature 1.5), not one greedy text
        assert s.determinism()["mode"] == "vllm-cpu" and not s.determinism()["reproducible"]  # no per-request seeds on CPU
        print(f"server up in {s.start_s:.0f} s")


def test_chain_with_vllm_generator(tmp_path):
    cfg = ChainConfig(model="smollm2-135m", n_train=8, generations=2, n_generate=8, n_heldout=4, max_new_tokens=24,
                      generator="vllm", run_dir=str(tmp_path / "chain"))
    out = run_chain(cfg)
    m0, m1 = (read_json(gen_dir(out, g) / "manifest.json") for g in (0, 1))
    assert m0["generator"] == m1["generator"] == "vllm" and m0["vllm_server_start_s"] == m1["vllm_server_start_s"] > 0  # one server
    assert all(len(read_jsonl(gen_dir(out, g) / "generated.jsonl")) == 8 for g in (0, 1))
    assert "load_lora_adapter" in (out / "vllm_server.log").read_text()
