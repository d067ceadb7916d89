"""Judges against a real vLLM server (the bundled SmolLM2, OpenAI-compatible API on 127.0.0.1): logprob scores,
the cache, one-line errors, the audit inside 04_metrics, and an API key that never reaches a file.

The server comes from .venv-vllm (`make judge-venv`, which `make test` builds). Without it the tests skip,
unless RECURSIVE_LOOPS_REQUIRE_VLLM=1 (set by .ci/run): then they fail."""
import json, os, subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_nb, tiny_chain
from recursive_loops.judges import Judge, JudgeError, OpenAIBackend, PROMPTS
from recursive_loops.models import ServerError, free_port, start_server, stop_server
from recursive_loops.data import load_texts

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
KEY = "sk-planted-" + "5c1e0d7a9b3f4e62"  # the server demands it: a request without it is refused
pytestmark = pytest.mark.judge_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not VLLM_PYTHON.exists():
        msg = f"{VLLM_PYTHON} missing: `make judge-venv` builds the judge server's virtualenv"
        if os.environ.get("RECURSIVE_LOOPS_REQUIRE_VLLM") == "1": pytest.fail(msg)
        pytest.skip(msg)
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    try:
        proc, url, secs = start_server("smollm2-135m", python=str(VLLM_PYTHON), log_path=log,
                                             env={"VLLM_API_KEY": KEY}, timeout=900)
    except ServerError as e:
        pytest.fail(f"{e}\n--- server log ---\n{log.read_text()[-4000:]}")
    print(f"judge server up in {secs:.0f} s at {url}")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def texts():
    t = load_texts("bbc_news")["text"].tolist()
    return [" ".join(x.split()[:64]) for x in t[::97][:12]]


def test_openai_backend_scores_from_logprobs_and_caches(server, texts, tmp_path, monkeypatch):
    monkeypatch.setenv("RL_TEST_JUDGE_KEY", KEY)
    spec = dict(name="quality", backend="openai", model="smollm2-135m", base_url=server, api_key_env="RL_TEST_JUDGE_KEY", concurrency=8)
    j = Judge(spec, tmp_path / "scores.sqlite")
    res = j.results(texts)
    assert j.requests == len(texts) and j.cached == 0
    assert all(r["method"] in ("logprobs", "logprobs-digits") and 0 <= r["score"] <= 100 and 0 < r["mass"] <= 1 for r in res), res
    again = Judge(spec, tmp_path / "scores.sqlite")
    assert np.array_equal(again.score(texts[::-1]), np.array([r["score"] for r in res])[::-1])
    assert again.requests == 0 and again.cached == len(texts) and again._backend is None  # not even a connection
    lean = Judge(dict(spec, name="lean", prompt="lean-v1"), tmp_path / "scores.sqlite")
    lean.score(texts[:2]); assert lean.requests == 2  # another prompt version is another cache key


def test_one_line_errors(server, monkeypatch):
    monkeypatch.delenv("RL_TEST_NO_KEY", raising=False)
    with pytest.raises(JudgeError, match="refused the API key; set the environment variable named by api_key_env"):
        OpenAIBackend(server, "smollm2-135m", PROMPTS["quality-v1"], api_key_env="RL_TEST_NO_KEY").check()
    monkeypatch.setenv("RL_TEST_JUDGE_KEY", KEY)
    with pytest.raises(JudgeError, match="does not serve model 'llama-70b'; it serves: smollm2-135m"):
        OpenAIBackend(server, "llama-70b", PROMPTS["quality-v1"], api_key_env="RL_TEST_JUDGE_KEY").check()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(JudgeError, match=r"is unreachable \(.*\); start it \(make judge-server\) or fix base_url") as e:
        OpenAIBackend(dead, "smollm2-135m", PROMPTS["quality-v1"]).check()
    assert "\n" not in str(e.value)


def test_metrics_stage_audits_scores_and_never_writes_the_key(server, tiny_model, tmp_path):
    "04_metrics through papermill with an openai judge: audit + scores beside metrics.csv; the key is nowhere on disk."
    rd = tmp_path / "chain"
    run_nb("03_chain", tmp_path / "03.ipynb", **tiny_chain(rd, tiny_model, generations=2))
    judges = [dict(name="quality_smollm2", backend="openai", model="smollm2-135m", base_url=server,
                   api_key_env="RL_TEST_JUDGE_KEY", audit_n=12, concurrency=8)]
    env = dict(os.environ, RL_TEST_JUDGE_KEY=KEY)
    cache = str(tmp_path / "scores.sqlite")

    def metrics():
        cmd = [str(ROOT / ".venv" / "bin" / "papermill"), "--log-output", str(ROOT / "nbs" / "04_metrics.ipynb"), str(rd / "04_metrics.ipynb"),
               "-p", "run_dir", str(rd), "-p", "n_eval", "4", "-p", "judge_cache", cache, "-y", json.dumps({"judges": judges})]
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        (rd / "papermill.log").write_text(p.stdout + p.stderr)  # the log too must not hold the key
        assert p.returncode == 0, p.stderr[-3000:]
    metrics()
    audit = json.loads((rd / "judges.json").read_text())[0]
    assert audit["judge"] == "quality_smollm2" and set(audit["tests"]) == {"shuffle", "truncate", "repeat", "noise"}
    assert audit["requests"] > 0 and all(t["n"] > 0 for t in audit["tests"].values())
    df = pd.read_csv(rd / "metrics.csv")
    q = df[df.metric == "quality_smollm2"]
    assert len(q) == 3 and (q.judge_audit == audit["verdict"]).all() and q.value.between(0, 100).all()
    assert len(pd.read_csv(rd / "judge_scores.csv")) == 3 * 4
    (rd / "metrics.csv").unlink()  # recompute: every text was scored before, the judge is asked nothing
    metrics()
    assert json.loads((rd / "metrics.manifest.json").read_text())["judge_requests"] == 0
    leaks = [str(p) for p in rd.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    leaks += [cache] if KEY.encode() in Path(cache).read_bytes() else []
    assert not leaks, f"the API key was written to {leaks}"
    assert "RL_TEST_JUDGE_KEY" in (rd / "04_metrics.ipynb").read_text()  # the variable's name is recorded, its value is not


def test_lean_end_to_end_on_the_server(server, tiny_model, tmp_path, monkeypatch):
    """Lean mixtures -> tiny chains -> 04_metrics with lean judges on the real server -> 05b_lean.
    lean-v2 gives each set a political share and its audit a not-political test; the bundled 135M model calls most tweets
    not political, so the labelled analysis runs on lean-v1's scores (a number for every text) to exercise the whole path."""
    from recursive_loops.core import write_jsonl
    from recursive_loops.chain import ChainConfig, run_chain
    from recursive_loops.metrics import run_metrics
    from recursive_loops.lean import write_lean_mixtures, run_lean, LEAN_LABELS
    monkeypatch.setenv("RL_TEST_JUDGE_KEY", KEY)
    left = ["We must raise the minimum wage and expand Medicare so that every working family can see a doctor.",
            "Climate change is an emergency: we need clean energy jobs and an end to fossil fuel subsidies now.",
            "Protect voting rights and pass universal background checks; the Senate must act for working people."]
    right = ["Cut taxes, secure the border and stop the reckless federal spending that is driving up inflation.",
             "We will defend the Second Amendment and stand with our police against the radical left's agenda.",
             "Lower taxes and less regulation let small businesses grow; Washington should get out of the way."]
    rows = [dict(text=f"{t} Statement {i}.", domain=d) for i in range(12) for d, ts in (("Democrat", left), ("Republican", right)) for t in ts]
    write_jsonl(tmp_path / "senators.jsonl", rows)
    files = write_lean_mixtures(str(tmp_path / "senators.jsonl"), [1.0, 0.0], tmp_path / "lean", min_tokens=5, max_tokens=60)
    base = dict(backend="openai", model="smollm2-135m", base_url=server, api_key_env="RL_TEST_JUDGE_KEY", audit_n=6, n_texts=6, concurrency=8)
    judges = [dict(base, name="lean2", prompt="lean-v2"), dict(base, name="lean1", prompt="lean-v1")]
    frames = []
    for f, share in zip(files, [1.0, 0.0]):
        for seed in (0, 1):
            rd = tmp_path / f"{f.stem}-s{seed}"
            # the facts a lean study's planner gives each chain (plan_lean_mix): its mixture's left share, on every metrics row
            run_chain(ChainConfig(**{**tiny_chain(rd, tiny_model, generations=2), "dataset": str(f), "seed": seed, "min_tokens": 5,
                                     "max_tokens": 60, "instruction": "Generate a twitter post.", "facts": dict(design="lean", left_share=share)}))
            frames.append(pd.read_csv(run_metrics(rd, n_eval=6, reference_model=None, judges=judges, judge_cache=str(tmp_path / "scores.sqlite"))))
    res = pd.concat(frames, ignore_index=True)
    pol = res[res.metric == "lean2_political"]
    assert len(pol) == 4 * 3 and pol.value.notna().all() and pol.value.between(0, 1).all()  # human + 2 generations, each chain
    audit = json.loads((tmp_path / "lean-1.0-s0" / "judges.json").read_text())[0]
    assert audit["judge"] == "lean2" and {"lean_accuracy", "not_political"} <= set(audit["tests"]) and audit["verdict"]
    assert (res[res.metric == "lean2"].judge_audit == audit["verdict"]).all()
    res.to_csv(tmp_path / "results.csv", index=False)
    eff = pd.read_csv(run_lean(tmp_path / "results.csv", "lean1", tmp_path / "out"))
    assert list(eff.left_share) == [1.0, 0.0] and (eff.n_seeds == 2).all() and eff.label.isin(LEAN_LABELS).all()
    assert eff.judge_audit.notna().all() and (tmp_path / "out" / "fig_lean.png").stat().st_size > 10_000
