"Kill anywhere, lose nothing: SIGKILL a chain (then its metrics) at random moments, resume, compare with an uninterrupted run that shares nothing."
import json, random, shutil, subprocess, sys, time

import pytest
from pathlib import Path

from conftest import ROOT, tiny_chain
from recursive_loops.core import read_json

SCRIPT = """
import json, sys
from recursive_loops.chain import ChainConfig, run_chain
from recursive_loops.metrics import run_metrics
p = json.loads(sys.argv[1])
run_metrics(run_chain(ChainConfig(**p["chain"])), n_eval=4, reference_model=p["model"])
"""


def _start(params):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(params)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _artefacts(rd: Path) -> dict:
    "The results a study reads: training sets, generated texts, metrics (manifests hold timings, so they differ)."
    files = [p for g in sorted(rd.glob("gen_*")) for p in (g / "train.jsonl", g / "generated.jsonl", g / "candidates.jsonl") if p.exists() or p.name != "candidates.jsonl"] + [rd / "metrics.csv"]
    return {p.relative_to(rd).as_posix(): p.read_bytes() for p in files}


def _done_manifests(rd: Path) -> dict:
    return {d.name: (d / "manifest.json").read_bytes() for d in sorted(rd.glob("gen_*")) if (d / "DONE").exists()}


@pytest.mark.parametrize("curate", [None, pytest.param(dict(rule="dedup", oversample=2), marks=pytest.mark.slow, id="curated")])
def test_sigkill_at_random_moments_loses_nothing(tmp_path, tiny_model, curate):
    "(The curated chain, in the slow tier, is killed in its curation step too: candidates, scores and the kept set must come back the same.)"
    chain = lambda rd: dict(model=tiny_model, chain=tiny_chain(rd, tiny_model, generations=4, n_train=16, n_generate=8, max_new_tokens=16, curate=curate))
    ref = tmp_path / "ref"
    t0 = time.perf_counter(); p = _start(chain(str(ref))); _, err = p.communicate(timeout=600); full = time.perf_counter() - t0
    assert p.returncode == 0, err[-2000:]

    rd = tmp_path / "killed"; rng = random.Random(0); kills, recomputed, runs = 0, 0, 0
    gen0 = str(tmp_path / "gen0")  # the killed chain shares its generation 0 (as a study's chains do), the reference does not
    alone = chain
    chain = lambda d: {**alone(d), "chain": {**alone(d)["chain"], "gen0_cache": gen0}}

    def run(kill: bool):
        nonlocal kills, recomputed, runs, full
        before = _done_manifests(rd) if rd.exists() else {}
        t = time.perf_counter(); p = _start(chain(str(rd))); runs += 1
        if kill:
            time.sleep(rng.uniform(0.15, 0.9) * full)
            if p.poll() is None: p.kill(); kills += 1
        _, err = p.communicate(timeout=600)
        if kill and p.returncode == 0: full = min(full, time.perf_counter() - t)  # it beat the kill: the reference run was slowed (a busy machine): aim the kills at this pace
        after = _done_manifests(rd) if rd.exists() else {}
        recomputed += sum(after.get(g) != m for g, m in before.items())   # a finished generation run again
        return p.returncode, err

    while kills < 5:
        code, _ = run(kill=True)
        if code == 0:  # it finished before the kill came: start over, so that the kills hit work
            shutil.rmtree(rd)
        assert runs < 40, "the kills never landed"
    code, err = run(kill=False)
    assert code == 0, err[-2000:]
    assert recomputed == 0
    assert _artefacts(rd) == _artefacts(ref), "a resumed chain, its generation 0 shared, must give byte-identical results"
    assert "gen0_shared" in read_json(rd / "gen_00" / "manifest.json") and not list(Path(gen0).rglob(".lock"))
    assert not list(rd.rglob(".tmp-*")) and not (rd / ".lock").exists(), "no partial file or lock left behind"
    print(f"kills={kills} runs={runs} generations recomputed={recomputed} identical=yes (uninterrupted run {full:.1f} s)")
