"Networks of models (03d_network, 03_chain's run_network, 05d_topology, 07e_study): who trains on whose texts, the 1-node identity, a network study locally and on SLURM with its generation barrier."
import json, subprocess, sys, time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, NBS, run_nb, tiny_chain
from recursive_loops.core import read_json, read_jsonl
from recursive_loops.chain import ChainConfig, run_chain, run_network, gen_dir, is_done
from test_sweep import cli, slurm  # noqa: F401  (the module's local SLURM fixture)


def _files(rd: Path) -> dict:
    return {p.relative_to(rd).as_posix(): p.read_bytes() for p in sorted(rd.rglob("*.jsonl")) if p.name != "attempts.jsonl"} | \
           {p.relative_to(rd).as_posix(): json.dumps(read_json(p)["matrix"]).encode() for p in sorted(rd.rglob("cross_nll/gen_*.json"))}


def test_who_trains_on_whose_texts(tmp_path, tiny_model):
    "A 4-node star at r = 1 with self_weight 0.25: the hub reads a quarter from itself and a quarter from each leaf; a leaf a quarter from itself and the rest from the hub; every text drawn comes from that source's own generated file; the human shards are disjoint."
    p = tiny_chain(tmp_path / "star", tiny_model, generations=2, n_train=8, ratio=1.0, network=dict(nodes=4, graph="star", self_weight=0.25, cross_nll=2))
    rd = run_chain(ChainConfig(**p))
    rec = read_json(rd / "network.json")
    assert rec["counts"] == [[2, 2, 2, 2], [6, 2, 0, 0], [6, 0, 2, 0], [6, 0, 0, 2]], rec["counts"]
    assert np.allclose(rec["mixing"][0], [0.25] * 4) and np.allclose(rec["mixing"][1], [0.75, 0.25, 0, 0])
    for k in range(4):
        rows = read_jsonl(gen_dir(rd / f"node-{k}", 1) / "train.jsonl")
        got = Counter(r["origin"] for r in rows)
        want = {("gen_00" if j == k else f"node-{j}/gen_00"): n for j, n in enumerate(rec["counts"][k]) if n}
        assert got == want, (k, got, want)
        for r in rows:  # each synthetic text is one its source generated
            src = rd / (r["origin"].split("/")[0] if "/" in r["origin"] else f"node-{k}") / "gen_00" / "generated.jsonl"
            assert r["text"] in {x["text"] for x in read_jsonl(src)}
        assert read_json(rd / f"node-{k}" / "chain.json")["network"]["reads"] == {f"node-{j}": n for j, n in enumerate(rec["counts"][k]) if n}
    human = [{r["origin"] for r in read_jsonl(gen_dir(rd / f"node-{k}", 0) / "train.jsonl")} for k in range(4)]
    assert all(not (human[i] & human[j]) for i in range(4) for j in range(i + 1, 4))
    C = np.array(read_json(rd / "cross_nll" / "gen_01.json")["matrix"])
    assert C.shape == (4, 4) and np.isfinite(C).all() and not list(rd.rglob("adapter"))


@pytest.mark.slow  # (03_chain's own cells check the same through run_chain in make test)
def test_a_one_node_network_is_the_plain_chain_through_papermill(tmp_path, tiny_model):
    "papermill nbs/03_chain.ipynb -p network '{nodes: 1}' writes the plain chain's files, byte for byte."
    plain, net = tmp_path / "plain", tmp_path / "net"
    run_nb("03_chain", tmp_path / "a.ipynb", **tiny_chain(plain, tiny_model))
    run_nb("03_chain", tmp_path / "b.ipynb", **tiny_chain(net, tiny_model), network=dict(nodes=1))
    ours = {p.relative_to(plain).as_posix(): p.read_bytes() for p in sorted(plain.rglob("*.jsonl"))}
    theirs = {p.relative_to(net / "node-0").as_posix(): p.read_bytes() for p in sorted((net / "node-0").rglob("*.jsonl"))}
    assert len(ours) == 6 and ours == theirs


def test_a_node_waits_for_its_sources(tmp_path, tiny_model):
    "Run one node ahead of the others (a SLURM stage out of order): refused in one line; the nodes of generation 0 run alone."
    p = tiny_chain(tmp_path / "ring", tiny_model, generations=2, network=dict(nodes=3, graph="ring"))
    run_network(ChainConfig(**p), only=[1], upto=0)
    assert is_done(gen_dir(tmp_path / "ring" / "node-1", 0)) and not (tmp_path / "ring" / "node-0").exists()
    with pytest.raises(ValueError, match="node-0 has not finished generation 0: the nodes of generation 1 wait for all of generation 0"):
        run_network(ChainConfig(**p), only=[1], upto=1)
    with pytest.raises(ValueError, match="other parameters"):
        run_network(ChainConfig(**{**p, "network": dict(nodes=3, graph="star")}))


def _spec(path: Path, out: Path, model: str, executor: str = "local") -> Path:
    path.write_text(f"""
name: tn
out_dir: {out}
chain: {{model: {model}, n_train: 8, n_heldout: 4, n_generate: 4, max_new_tokens: 8, batch_size: 4, dtype: float32, generations: 2}}
metrics: {{n_eval: 4, reference_model: {model}}}
experiments:
  net:
    ratios: [0.5]
    seeds: [0, 1]
    network:
      - {{nodes: 3, graph: isolated, shards: domains, cross_nll: 4}}
      - {{nodes: 3, graph: full, shards: domains, cross_nll: 4}}
analysis:
  network: {{experiment: net, n_eval: 4}}
executor:
  kind: {executor}
  slurm: {{cpus_per_task: 1, time_min: 20, array_parallelism: 6}}
""")
    return path


def test_the_topology_study_dry_run():
    r = cli("study", "studies/topology.yaml", "--dry-run")
    assert r.returncode == 0 and "networks (36 node chains): full x4, isolated x4, ring x4" in r.stdout, r.stdout + r.stderr
    assert "9 chains, 108 generations, 84 fine-tunes (24 generation 0s shared)" in r.stdout and "-> 05d_topology" in r.stdout, r.stdout


@pytest.mark.slow
def test_a_network_study_runs_measures_and_compares(tmp_path, tiny_model):
    "A tiny network study (2 graphs x 2 seeds x 3 nodes) through 04_metrics per node, results.csv and 05d_topology; the status of its networks."
    spec = _spec(tmp_path / "s.yaml", tmp_path / "study", tiny_model)
    r = cli("study", str(spec), "--dry-run")
    assert r.returncode == 0 and "networks (12 node chains): full x3, isolated x3" in r.stdout, r.stdout + r.stderr
    assert "4 chains, 24 generations, 18 fine-tunes (6 generation 0s shared)" in r.stdout and "-> 05d_topology" in r.stdout, r.stdout
    r = cli("study", str(spec), "--workers", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    res = pd.read_csv(tmp_path / "study" / "results.csv")
    assert res.network_dir.nunique() == 4 and res.run_dir.nunique() == 12 and set(res.network) == {"isolated", "full"}
    assert set(res.cluster) == {"business", "entertainment", "politics"}  # shards: domains, in sorted order
    where = tmp_path / "study" / "bbc_news" / "whole" / "ratio-0.5"
    iso, full = (next(where.glob(f"network-{g}-x3/seed-0-*")) for g in ("isolated", "full"))
    assert (iso / "node-1" / "gen_00" / "generated.jsonl").read_bytes() == (full / "node-1" / "gen_00" / "generated.jsonl").read_bytes()  # a seed's generation 0, shared across graphs
    assert (iso / "node-1" / "gen_01" / "train.jsonl").read_bytes() != (full / "node-1" / "gen_01" / "train.jsonl").read_bytes()
    top = tmp_path / "study" / "topology" / "net"
    tab = pd.read_csv(top / "network_metrics.csv")
    assert {"centroid_distance", "beta_diversity", "cross_nll_gap", "alpha_diversity", "gamma_diversity", "spread_semantic_diversity",
            "shift_semantic_diversity"} <= set(tab.metric)
    assert tab.groupby(["network", "generation", "metric"]).seed.nunique().min() == 2
    assert (top / "fig_topology.png").stat().st_size > 10_000 and (top / "fig_topology_nodes.png").stat().st_size > 10_000
    eff = pd.read_csv(top / "topology_effects.csv")
    assert set(eff.network) == {"full"} and set(eff.vs) == {"isolated"} and (eff.n_seeds == 2).all()
    prim = eff[eff.family == "primary"]  # Holm within declared families
    assert set(prim.metric) == {"centroid_distance", "beta_diversity", "cross_nll_gap"} and set(eff.family) == {"primary", "secondary"}
    has_p = eff.dropna(subset=["p"])
    assert (has_p.p_holm >= has_p.p).all() and not (eff.clear & ~(eff.p_holm < 0.05)).any()
    st = cli("status", str(spec))
    assert st.returncode == 0 and "4 done" in st.stdout and "(3 nodes)" in st.stdout, st.stdout


@pytest.mark.slow
def test_a_network_study_on_slurm_waits_per_generation_and_matches_local(tmp_path, tiny_model, slurm):
    "The nodes of each generation run as concurrent SLURM tasks (one array per generation); the results are the local run's, byte for byte (one thread per task and per worker)."
    r = cli("study", str(_spec(tmp_path / "l.yaml", tmp_path / "local", tiny_model)), "--workers", "4", "--no-analysis")
    assert r.returncode == 0, r.stderr[-3000:]
    t0 = time.time()
    r = cli("study", str(_spec(tmp_path / "s.yaml", tmp_path / "slurm", tiny_model, "slurm")), "--no-analysis")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "networks, generation 0: 12 node tasks" in r.stderr and "networks, generation 1: 12 node tasks" in r.stderr, r.stderr[-3000:]
    for net in (tmp_path / "slurm").rglob("network.json"):
        nd = net.parent
        starts = {k: [json.loads(l)["start"] for l in (nd / f"node-{k}" / "attempts.jsonl").read_text().splitlines()] for k in range(3)}
        assert all(len(v) == 2 for v in starts.values()), starts  # one task per node and generation
        assert max(v[0] for v in starts.values()) <= min(v[1] for v in starts.values()), starts  # generation 1 began after every generation 0
    local = {p.parent.relative_to(tmp_path / "local").as_posix(): _files(p.parent) for p in (tmp_path / "local").rglob("network.json")}
    slurm_ = {p.parent.relative_to(tmp_path / "slurm").as_posix(): _files(p.parent) for p in (tmp_path / "slurm").rglob("network.json")}
    assert local.keys() == slurm_.keys() and local == slurm_
    print(f"SLURM network study (4 networks x 3 nodes x 2 generations): {time.time() - t0:.0f} s; identical to local: yes")
