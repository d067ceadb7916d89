"A worker runs its chains' notebooks in one kernel: the same files as a fresh kernel per notebook, every notebook recorded, and killed at random moments it loses nothing."
import json, os, random, signal, shutil, subprocess, time
from pathlib import Path

import pytest

from conftest import ROOT
from test_sweep import CLI, cli, _chains, _manifests, slurm  # noqa: F401  (the local SLURM fixture)


def _spec(path: Path, out: Path, model: str, kernel: str, kind: str = "local") -> Path:
    "Two chains (two ratios) of the tiny model, run in turn by one worker (on SLURM: one array task, two threads)."
    path.write_text(f"""
name: t
out_dir: {out}
chain: {{model: {model}, n_train: 16, n_heldout: 4, n_generate: 8, max_new_tokens: 16, batch_size: 4, dtype: float32, generations: 3}}
metrics: {{n_eval: 4, reference_model: {model}}}
experiments:
  sweep: {{ratios: [0.5, 1.0], seeds: [0]}}
executor: {{kind: {kind}, workers: 1, kernel: {kernel}, slurm: {{cpus_per_task: 2, time_min: 20, chains_per_task: 2}}}}
""")
    return path


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, tiny_model):
    "The two chains run today's way, a fresh kernel per notebook: (their files, seconds)."
    d = tmp_path_factory.mktemp("fresh")
    t0 = time.time()
    r = cli("study", str(_spec(d / "fresh.yaml", d / "out", tiny_model, "fresh")), "--no-analysis")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _kernels(d / "out") == [None] * 4
    return _chains(d / "out"), time.time() - t0


def _kernels(out: Path) -> list[dict]:
    "The kernel each executed chain notebook records, in the order the worker ran them."
    nbs = [p for p in out.rglob("0[34]_*.ipynb") if (p.parent / "chain.json").exists()]
    recs = [json.loads(p.read_text())["metadata"].get("recursive_loops", {}).get("kernel") for p in nbs]
    return sorted(recs, key=lambda k: -1 if k is None else k["notebooks_before"])


def test_a_worker_kernel_gives_the_files_of_fresh_kernels(tmp_path, tiny_model, fresh):
    "Two chains in one worker's kernel (four notebooks, one after another: the second chain's run where the first one's names, modules and kept models are) against a fresh kernel per notebook: byte-identical training sets, generated texts and metrics."
    t0 = time.time()
    r = cli("study", str(_spec(tmp_path / "warm.yaml", tmp_path / "warm", tiny_model, "warm")), "--no-analysis")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(fresh[0]) == 2 and _chains(tmp_path / "warm") == fresh[0], "a chain run in a worker's kernel must give a fresh kernel's files"
    ks = _kernels(tmp_path / "warm")
    assert [k["notebooks_before"] for k in ks] == list(range(4)) and len({k["pid"] for k in ks}) == 1, ks
    print(f"2 chains of the tiny model, 1 worker: fresh kernels {fresh[1]:.0f} s, one warm kernel {time.time() - t0:.0f} s")


def test_a_slurm_task_is_a_worker_of_several_chains(tmp_path, tiny_model, fresh, slurm):
    "`chains_per_task: 2`: both chains in one array task and one kernel, with the files of the local fresh run."
    r = cli("study", str(_spec(tmp_path / "s.yaml", tmp_path / "slurm", tiny_model, "warm", "slurm")), "--no-analysis")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 chains in 1 tasks" in r.stderr and _chains(tmp_path / "slurm") == fresh[0], r.stderr[-2000:]
    ks = _kernels(tmp_path / "slurm")
    assert [k["notebooks_before"] for k in ks] == list(range(4)) and len({k["pid"] for k in ks}) == 1, ks


@pytest.mark.slow
def test_sigkill_a_worker_running_several_chains_loses_nothing(tmp_path, tiny_model):
    "The worker and its kernel killed together (a process group, as scancel or a lost node kills them) at random moments, then resumed: nothing finished is recomputed, and the files are those of an uninterrupted run of the same path."
    ref = tmp_path / "ref"
    t0 = time.time()
    r = cli("study", str(_spec(tmp_path / "ref.yaml", ref, tiny_model, "warm")), "--no-analysis")
    assert r.returncode == 0, r.stderr[-3000:]
    full = time.time() - t0
    out, spec = tmp_path / "killed", _spec(tmp_path / "killed.yaml", tmp_path / "killed", tiny_model, "warm")
    rng, kills, runs, recomputed = random.Random(1), 0, 0, 0

    def done() -> dict:
        return {c.parent.name + "/" + g: m for c in out.rglob("chain.json") for g, m in _manifests(c.parent).items()}

    while kills < 4:
        before = done() if out.exists() else {}
        p = subprocess.Popen(CLI + ["study", str(spec), "--no-analysis"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        runs += 1
        time.sleep(rng.uniform(0.1, 0.9) * full)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL); kills += 1
        p.communicate(timeout=600)
        recomputed += sum(done().get(g) != m for g, m in before.items())
        if p.returncode == 0: shutil.rmtree(out)  # it finished before the kill: start over so the kills hit work
        assert runs < 30, "the kills never landed"
    r = cli("study", str(spec), "--no-analysis")
    assert r.returncode == 0, r.stderr[-3000:]
    assert recomputed == 0 and _chains(out) == _chains(ref), "a worker killed and resumed must give an uninterrupted run's files"
    assert not list(out.rglob(".lock")) and not list(out.rglob(".tmp-*"))
    print(f"kills={kills} runs={runs} generations recomputed=0 identical=yes (uninterrupted {full:.0f} s)")
