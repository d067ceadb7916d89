"Study specs and executors: the CLI, a local study, the same study on a real (local, single-node) SLURM, scancel and resume."
import json, os, subprocess, sys, time
from pathlib import Path

import pytest

import local_slurm
from conftest import ROOT, measured

CLI = [sys.executable, "-c", "import sys; from recursive_loops.cli import main; sys.exit(main())"]


def cli(*args, timeout=900):
    return subprocess.run(CLI + list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_paper_design_dry_run():
    r = cli("study", "studies/paper.yaml", "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2,115 chains, 42,300 generations, 41,225 fine-tunes (1,075 generation 0s shared)" in r.stdout, r.stdout
    assert "GPU-h" in r.stdout and "clusters: 1600 chains" in r.stdout
    assert "modularity: 400 chains (merged)" in r.stdout and "political_lean: 25 chains (lean)" in r.stdout
    assert "lean judge: lean (lean-v2, meta-llama/Llama-3.3-70B-Instruct via openai)" in r.stdout and "-> 05b_lean ->" in r.stdout
    assert "human-text need not checked: twitter_100m (ratio_sweep): not reachable here" in r.stdout, r.stdout
    print(r.stdout)


def test_paper_spec_with_clusters_too_small_is_refused(tmp_path):
    "A cluster chain at N = 4000, r = 0.125, 20 generations eats 70,700 human texts: min_texts 4200 cannot feed it."
    body = (ROOT / "studies" / "paper.yaml").read_text()
    assert "min_texts: 80000" in body
    (tmp_path / "p.yaml").write_text(body.replace("min_texts: 80000", "min_texts: 4200"))
    r = cli("study", str(tmp_path / "p.yaml"), "--dry-run")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr)
    assert "experiments.clusters: chain twitter_100m cluster ?0 r=0.125 seed=0 needs 70,700 human texts (200 held out + 4000 + 19 x 3500)" in lines[0]
    assert "clusters.min_texts, the least an eligible cluster holds, is 4,200" in lines[0] and not r.stdout


def test_demo_spec_expands_and_status_reads_it():
    r = cli("study", "studies/demo.yaml", "--dry-run")
    assert r.returncode == 0 and "14 chains, 37 generations, 31 fine-tunes (6 generation 0s shared)" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("body, message", [
    ("name: t\nexperiments:\n  a: {ratoins: [0.5]}\n", "unknown key 'ratoins' in experiments.a; did you mean 'ratios'?"),
    ("name: t\nexperimnts:\n  a: {}\n", "unknown key 'experimnts' in the top level; did you mean 'experiments'?"),
    ("name: t\nexperiments:\n  a: {ratios: [1.5]}\n", "ratio=1.5 is invalid"),
    ("name: t\nexperiments:\n  a: {train_on: {pool: 2, of: b}}\n", "train_on: {'pool': 2, 'of': 'b'} is invalid"),
    ("name: t\nexperiments: [\n", "not valid YAML"),
    ("name: t\nanalysis: {shift: last_minus_human}\nexperiments:\n  a: {}\n", "analysis.shift='last_minus_human' is invalid; allowed: relative_to_gen0"),
    ("name: t\nexperiments:\n  a: {}\nhypotheses: {primary: {target: semantic_diversity, predictor: prop_ttr_150, direction: negative, effect: 0.01, alpha: 1.5, ratio: 0.5, generations: 3}}\n",
     "hypotheses.primary.alpha=1.5 is invalid; allowed: a number in (0, 1)"),
    ("name: t\nexperiments:\n  a: {}\nexecutor: {kernel: hot}\n", "executor.kernel: 'hot' is invalid; allowed: warm, fresh"),
    ("name: t\nexperiments:\n  a: {}\nexecutor: {slurm: {chains_per_task: 0}}\n", "executor.slurm.chains_per_task: 0 is invalid; allowed: an integer >= 1"),
])
def test_bad_spec_is_one_line_exit_2(tmp_path, body, message):
    (tmp_path / "s.yaml").write_text(body)
    r = cli("study", str(tmp_path / "s.yaml"))
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (ROOT / "runs" / "t").exists()


def _hypothesis_spec(tmp_path: Path, ratio: float = 0.5) -> Path:
    "A spec on 20 clusters x 2 seeds at r = 0.5, declaring a primary hypothesis at `ratio` with a pilot's SDs and VIF 1.5."
    path = tmp_path / "h.yaml"
    path.write_text(f"""
name: h
out_dir: {tmp_path}/out
chain: {{n_train: 8, n_heldout: 4, n_generate: 4, generations: 3}}
clusters: {{n_clusters: 20, min_texts: 64}}
experiments:
  clusters: {{train_on: every_cluster, ratios: [0.5], seeds: [0, 1]}}
hypotheses:
  primary: {{target: semantic_diversity, predictor: prop_selfbleu_diversity, direction: negative, effect: 0.005, ratio: {ratio}, generations: 3}}
  pilot: {{sd_seed: 0.013, sd_between: 0.005}}
  vif: 1.5
""")
    return path


def test_dry_run_prints_the_power_of_a_declared_primary_hypothesis(tmp_path):
    "A spec declaring hypotheses.primary: the dry run prints coefficient_power's power for the planned design and design_for_power's fewest clusters."
    import pandas as pd
    from recursive_loops.inference import coefficient_power, design_for_power
    r = cli("study", str(_hypothesis_spec(tmp_path)), "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    pw = coefficient_power(0.005, 0.005, 0.013, units=20, seeds=2, predictors=1, vif=1.5)
    assert (f"planned (experiments.clusters): 20 clusters (placeholders until clustered) x 2 seeds x 3 generations = 40 chains; "
            f"power {pw:.2f} for -0.005 per SD (1 predictor, VIF 1.5, 18 residual df)") in r.stdout, r.stdout
    one = design_for_power(pd.DataFrame([dict(sd_seed=0.013, sd_between=0.005, generations=3)]), 0.005, vif=1.5).iloc[0]
    assert f"fewest clusters for power 0.8: 1 seed each: {one.units:.0f} clusters ({one.chains:.0f} chains, {one.chain_generations:.0f} chain-generations)" in r.stdout
    assert f"underpowered: power {pw:.2f} < 0.8 at 20 clusters" in r.stdout and not (tmp_path / "out").exists()
    plain = cli("study", "studies/demo.yaml", "--dry-run")  # no hypotheses: nothing new
    assert plain.returncode == 0 and "hypothesis" not in plain.stdout and "power" not in plain.stdout


def test_a_run_refuses_a_primary_hypothesis_the_study_does_not_run(tmp_path):
    "Not only the dry run: a real run of a spec whose primary hypothesis names a ratio its experiment lacks stops in one line, before anything is written."
    r = cli("study", str(_hypothesis_spec(tmp_path, ratio=0.25)))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr[-2000:])
    assert "hypotheses.primary.ratio=0.25: experiments.clusters has no chain at that ratio" in lines[0]
    assert not (tmp_path / "out").exists()


def _spec(path: Path, out: Path, model: str, executor: str = "local", generations: int = 4) -> Path:
    path.write_text(f"""
name: t
out_dir: {out}
chain: {{model: {model}, n_train: 16, n_heldout: 4, n_generate: 8, max_new_tokens: 16, batch_size: 4, dtype: float32, generations: {generations}}}
metrics: {{n_eval: 4, reference_model: {model}}}
experiments:
  sweep: {{ratios: [0.5, 1.0], seeds: [0]}}
executor:
  kind: {executor}
  slurm: {{cpus_per_task: 1, time_min: 20, array_parallelism: 2}}
""")
    return path


def test_a_study_ends_with_its_appendix(tmp_path, tiny_model):
    "The study's executed notebooks as a browsable site: an index row per chain linking its notebooks, the figures; `appendix --keep` copies one chain's and the analysis notebooks."
    spec = tmp_path / "s.yaml"
    spec.write_text(f"""
name: t
out_dir: {tmp_path / "study"}
chain: {{model: {tiny_model}, n_train: 8, n_heldout: 4, n_generate: 4, max_new_tokens: 8, batch_size: 4, dtype: float32, generations: 2}}
metrics: {{n_eval: 4, reference_model: {tiny_model}}}
experiments:
  sweep: {{ratios: [0.5, 1.0]}}
analysis:
  figures: {{fig_dir: {tmp_path / "figs"}}}
""")
    r = cli("study", str(spec))
    assert r.returncode == 0, r.stderr[-3000:]
    site = tmp_path / "study" / "appendix"
    assert f"appendix -> {site / 'index.html'}" in r.stdout, r.stdout
    index = (site / "index.html").read_text()
    chains = sorted(p.parent.relative_to(tmp_path / "study").as_posix() for p in (tmp_path / "study").rglob("chain.json"))
    assert len(chains) == 2
    for rd in chains:
        for nb in ("03_chain", "04_metrics"):
            assert f'href="{rd}/{nb}.html"' in index, (rd, nb)
            page = (site / rd / f"{nb}.html").read_text()
            assert "#| export" not in page and "injected-parameters" in page  # directives hidden, the parameters papermill gave shown
    assert 'href="06_figures.html"' in index and "fig_heldout_nll.png" in index and (site / "_images").is_dir()
    before = (site / chains[0] / "03_chain.html").stat().st_mtime
    r = cli("appendix", str(spec), "--keep", str(tmp_path / "kept"))
    assert r.returncode == 0 and "kept 3 notebooks" in r.stdout, r.stdout + r.stderr[-2000:]
    assert (site / chains[0] / "03_chain.html").stat().st_mtime == before  # nothing changed: the page was not re-made
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["03_chain.ipynb", "04_metrics.ipynb", "06_figures.ipynb"]
    r = cli("appendix", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such study spec or study folder" in r.stderr, r.stderr


def _chains(out: Path) -> dict:
    "relative run dir -> results a study reads (training sets, generated texts, metrics)."
    res = {}
    for chain in sorted(out.rglob("chain.json")):
        rd = chain.parent
        files = [p for g in sorted(rd.glob("gen_*")) for p in (g / "train.jsonl", g / "generated.jsonl")]
        res[rd.relative_to(out).as_posix()] = {p.relative_to(rd).as_posix(): p.read_bytes() for p in files} | {"metrics.csv": measured(rd / "metrics.csv")}
    return res


def _manifests(rd: Path) -> dict:
    return {d.name: (d / "manifest.json").read_bytes() for d in sorted(rd.glob("gen_*")) if (d / "DONE").exists()}


@pytest.fixture(scope="module")
def slurm():
    reason, started = local_slurm.why_not(), []
    if reason is None:
        try: started = local_slurm.start()
        except Exception as e: reason = f"local SLURM did not start: {e}"
    if reason:
        if os.environ.get("RECURSIVE_LOOPS_REQUIRE_SLURM") == "1": pytest.fail(f"SLURM test required but: {reason}")
        pytest.skip(reason)
    yield
    subprocess.run(["scancel", "--name", "recursive_loops"], capture_output=True)
    left = local_slurm.stop(started)  # every daemon this test started, it stops (one that was up before is left up)
    assert not left, f"still running after the SLURM test: {left}"


def test_local_study_then_slurm_gives_the_same_and_resumes_after_scancel(tmp_path, tiny_model, slurm):
    # 1. the local executor, two worker processes (one thread each, as each SLURM task below gets one CPU:
    #    the same thread count gives byte-identical results)
    t0 = time.time()
    r = cli("study", str(_spec(tmp_path / "local.yaml", tmp_path / "local", tiny_model)), "--no-analysis", "--workers", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    local = _chains(tmp_path / "local")
    assert len(local) == 2 and (tmp_path / "local" / "results.csv").exists()
    t_local = time.time() - t0

    # 2. the same study on SLURM; cancel the r = 1 chain's array task once two generations are done
    out = tmp_path / "slurm"; spec = _spec(tmp_path / "slurm.yaml", out, tiny_model, "slurm")
    t0 = time.time()
    p = subprocess.Popen(CLI + ["study", str(spec), "--no-analysis"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target, cancelled = None, None
    while p.poll() is None and cancelled is None:
        time.sleep(0.2)
        target = next((c.parent for c in out.rglob("chain.json") if "ratio-1/" in c.parent.as_posix() + "/"), None)
        if target is not None and (target / "gen_01" / "DONE").exists() and (target / "attempts.jsonl").exists():
            job = json.loads((target / "attempts.jsonl").read_text().splitlines()[-1])["slurm_job"]
            subprocess.run(["scancel", job], check=True); cancelled = job
        assert time.time() - t0 < 600, "the SLURM study did not progress"
    _, err = p.communicate(timeout=600)
    assert cancelled, f"the chain finished before it could be cancelled: {err[-2000:]}"
    assert p.returncode == 1 and "kernel died" in err, err[-3000:]
    before = _manifests(target)
    assert 2 <= len(before) < 4, f"cancelled mid-chain: {sorted(before)}"
    st = cli("status", str(spec))
    assert st.returncode == 0 and "1 done" in st.stdout and "1 failed" in st.stdout and "kernel died" in st.stdout, st.stdout

    # 3. re-run: the finished chain is skipped, the cancelled one runs only its unfinished generations
    r = cli("study", str(spec), "--no-analysis")
    assert r.returncode == 0, r.stderr[-3000:]
    after = _manifests(target)
    recomputed = [g for g, m in before.items() if after[g] != m]
    assert recomputed == [] and len(after) == 4, recomputed
    attempts = {rd: len((out / rd / "attempts.jsonl").read_text().splitlines()) for rd in _chains(out)}
    assert sorted(attempts.values()) == [1, 2], attempts   # the finished chain was not run again
    slurm_res = _chains(out)
    assert slurm_res.keys() == local.keys(), (slurm_res.keys(), local.keys())
    assert slurm_res == local, "SLURM and local runs of the same spec must give byte-identical results"
    assert "1,696" not in r.stdout and "2 chains, 1 run, 1 already done, 0 failed" in r.stdout, r.stdout
    print(f"local {t_local:.0f} s; slurm run + scancel ({cancelled}) after {len(before)} generations + resume: "
          f"{time.time() - t0:.0f} s; generations recomputed: 0; results identical to local: yes")
