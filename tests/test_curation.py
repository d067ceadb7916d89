"Curation between sampling and the pool (03c_curation): each rule keeps the right texts, the kept count is the chain's, `none` is the plain chain, a curated chain resumes to the same bytes, and its model output is measured apart from what it kept. The chains of each rule, the audited scorer and a whole control study are in the slow tier (`make test-e2e`)."
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_chain
from recursive_loops.chain import ChainConfig, run_chain, gen_dir, is_done
from recursive_loops.core import read_json, read_jsonl
from recursive_loops.curation import Curator, CurationSpec, keep_by_score, keep_dedup, keep_diverse, keep_random


def _files(rd: Path) -> dict:
    return {p.relative_to(rd).as_posix(): p.read_bytes() for g in sorted(rd.glob("gen_*"))
            for p in sorted(g.glob("*.jsonl"))}


def test_each_rule_keeps_the_right_texts_of_a_scored_pool():
    texts = ["the cat sat", "The  cat sat", "dogs bark at night", "rain fell on the town", "dogs bark at night!", "a new phone"]
    scores = [2.0, 2.0, 5.0, 1.0, 4.0, np.nan]
    emb = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0.99, 0.05, 0], [0, 0, 0, 1]], dtype=float)
    assert keep_by_score(scores, 3, highest=True) == [0, 2, 4]   # 5, 4 and the earlier of the tied 2s; NaN never before a number
    assert keep_by_score(scores, 3, highest=False) == [0, 1, 3]
    assert sorted(keep_diverse(emb, 4)) == [0, 2, 3, 5]             # one of each direction, none of the near copies
    kept, dup = keep_dedup(texts, emb, 4, 0.95, seed=0)
    assert kept == [0, 2, 3, 5] and dup[1]["kind"] == "exact" and dup[4]["kind"] == "near" and dup[4]["of"] == 2
    assert len(keep_random(6, 3, 0)) == 3 == len(set(keep_random(6, 3, 0))) and keep_random(6, 3, 0) == keep_random(6, 3, 0)
    # fluency (lower NLL = better): score_top keeps the lowest scores, score_bottom the highest
    cur = Curator(dict(rule="score_top", oversample=2, scorer=dict(name="fluency", backend="fluency")))
    cur.audit = dict(verdict="passed")  # the audit is tested on a real scorer below
    cur._judge = type("J", (), {"spec": cur.judge.spec, "score": lambda self, t: np.array(scores[:len(t)])})()
    kept_rows, cands, rec = cur.curate([dict(text=t) for t in texts], 2, seed=0)
    assert [r["text"] for r in kept_rows] == ["rain fell on the town", "the cat sat"][::-1] and rec["n_kept"] == 2 == sum(c["kept"] for c in cands)
    assert rec["score_kept"] == 1.5 and [c["score"] for c in cands][-1] is None


@pytest.mark.parametrize("bad, why", [(dict(rule="none", oversample=2), "rule random"), (dict(rule="score_top"), "needs a scorer"),
                                      (dict(rule="dedup", near=0), "near"), ("random", "mapping")])
def test_bad_curation_settings_fail_in_one_line(bad, why, tmp_path, tiny_model):
    with pytest.raises(ValueError, match=why):
        run_chain(ChainConfig(**tiny_chain(tmp_path / "c", tiny_model, curate=bad)))
    assert not (tmp_path / "c").exists()


def test_none_is_the_plain_chain_byte_for_byte(tmp_path, tiny_model):
    a = run_chain(ChainConfig(**tiny_chain(tmp_path / "plain", tiny_model)))
    b = run_chain(ChainConfig(**tiny_chain(tmp_path / "none", tiny_model, curate=dict(rule="none"))))
    assert _files(a) == _files(b) and not list(b.glob("gen_*/candidates.jsonl"))
    assert read_json(a / "chain.json")["config_hash"] == read_json(b / "chain.json")["config_hash"]


@pytest.mark.slow
@pytest.mark.parametrize("rule", [dict(rule="random", oversample=2), dict(rule="dedup", oversample=1.5), dict(rule="diversity", oversample=2)])
def test_a_curated_chain_keeps_its_count_and_records_every_candidate(rule, tmp_path, tiny_model):
    from recursive_loops.metrics import run_metrics
    cfg = ChainConfig(**tiny_chain(tmp_path / "c", tiny_model, ratio=1.0, n_train=8, n_generate=0, generations=2, curate=rule))
    rd = run_chain(cfg)
    m = int(np.ceil(cfg.n_to_generate * rule["oversample"]))
    for g in range(2):
        kept, cands = read_jsonl(gen_dir(rd, g) / "generated.jsonl"), read_jsonl(gen_dir(rd, g) / "candidates.jsonl")
        assert len(kept) == cfg.n_synthetic == 8 and len(cands) == m and sum(c["kept"] for c in cands) == 8
        assert [r["text"] for r in kept] == [c["text"] for c in cands if c["kept"]]   # the pool is exactly the kept candidates
        man = read_json(gen_dir(rd, g) / "manifest.json")
        assert man["curation"]["n_candidates"] == m and man["curation"]["rule"] == rule["rule"] and "curate" in man["timings"]
    train1 = read_jsonl(gen_dir(rd, 1) / "train.jsonl")
    assert {r["text"] for r in train1} <= {r["text"] for r in read_jsonl(gen_dir(rd, 0) / "generated.jsonl")}
    df = pd.read_csv(run_metrics(rd, n_eval=8, reference_model=None))
    assert set(df.source) == {"human", "generated", "sampled", "model"} and set(df[df.source == "sampled"].generation) == {0, 1}


def test_a_scorer_must_pass_its_audit(tmp_path, tiny_model):
    "The tiny random model's fluency cannot tell a text from its shuffle: the chain stops before it writes anything."
    bad = dict(rule="score_top", oversample=2, scorer=dict(name="tiny_fluency", backend="fluency", model=tiny_model, audit_n=16))
    with pytest.raises(ValueError, match="failed its audit"):
        run_chain(ChainConfig(**tiny_chain(tmp_path / "c", tiny_model, curate=bad)))
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_score_top_by_the_audited_fluency_proxy_keeps_the_most_fluent(tmp_path, tiny_model):
    rule = dict(rule="score_top", oversample=2, scorer=dict(name="fluency", backend="fluency", model="smollm2-135m", audit_n=16))
    rd = run_chain(ChainConfig(**tiny_chain(tmp_path / "c", tiny_model, ratio=1.0, generations=1, curate=rule)))
    cands = read_jsonl(gen_dir(rd, 0) / "candidates.jsonl")
    kept = [c["score"] for c in cands if c["kept"]]; dropped = [c["score"] for c in cands if not c["kept"]]
    assert max(kept) <= min(dropped)   # the kept are the lowest NLLs
    rec = read_json(gen_dir(rd, 0) / "manifest.json")["curation"]
    assert rec["audit"] == "passed" and rec["scorer"] == "fluency" and rec["score_kept"] <= rec["score_all"]


def test_a_killed_curated_chain_resumes_to_the_same_bytes(tmp_path, tiny_model):
    rule = dict(rule="dedup", oversample=2)
    ref = run_chain(ChainConfig(**tiny_chain(tmp_path / "ref", tiny_model, curate=rule)))
    rd = run_chain(ChainConfig(**tiny_chain(tmp_path / "killed", tiny_model, curate=rule)))
    for g in (1, 2): (gen_dir(rd, g) / "DONE").unlink()         # killed before generation 1's marker
    (gen_dir(rd, 1) / "candidates.jsonl").write_text("{}\n")   # ... with its candidates half-written
    for g in (1, 2): (gen_dir(rd, g) / "generated.jsonl").write_text("")
    run_chain(ChainConfig(**tiny_chain(tmp_path / "killed", tiny_model, curate=rule)))
    assert all(is_done(gen_dir(rd, g)) for g in range(3)) and _files(rd) == _files(ref)


def test_a_curated_chain_on_a_merged_pool_keeps_each_domains_share(tmp_path, tiny_model):
    "Per-text instructions (a merged dataset): each instruction samples its share of the candidates and keeps its share of the texts from its own; the metrics' unselected sample has the same shares."
    from recursive_loops.core import write_jsonl
    from recursive_loops.metrics import run_metrics, sampled_sets
    pool = tmp_path / "merged.jsonl"
    write_jsonl(pool, [dict(text=f"Text {i} about {d}: " + " ".join([d] * 22), domain=d, instruction=f"Write about {d}.")
                       for d in ("ants", "bees", "cats") for i in range(20)])
    rd = run_chain(ChainConfig(**tiny_chain(tmp_path / "c", tiny_model, dataset=str(pool), ratio=1.0, n_train=9, n_generate=0, generations=2,
                                            curate=dict(rule="dedup", oversample=2))))
    doms = ["ants", "bees", "cats"]
    for g in range(2):
        kept, cands = read_jsonl(gen_dir(rd, g) / "generated.jsonl"), read_jsonl(gen_dir(rd, g) / "candidates.jsonl")
        assert [sum(r["domain"] == d for r in kept) for d in doms] == [3, 3, 3]
        assert [sum(c["domain"] == d for c in cands) for d in doms] == [6, 6, 6] and [c["index"] for c in cands] == list(range(18))
        assert [sum(c["kept"] for c in cands if c["domain"] == d) for d in doms] == [3, 3, 3]
        assert [r["text"] for r in kept] == [c["text"] for c in cands if c["kept"]]
        man = read_json(gen_dir(rd, g) / "manifest.json")
        assert man["curation"]["n_candidates"] == 18 and man["curation"]["n_kept"] == 9 and set(man["curation"]["per_domain"]) == set(doms)
        assert man["instructions"] == {f"Write about {d}.": 3 for d in doms}
    gen = {g: read_jsonl(gen_dir(rd, g) / "generated.jsonl") for g in range(2)}
    cands = read_jsonl(gen_dir(rd, 1) / "candidates.jsonl")
    first = [c["text"] for d in doms for c in [c for c in cands if c["domain"] == d][:3]]  # each domain's first 3 candidates, kept or not
    assert sorted(sampled_sets(rd, gen, 32, 0)[1][1]) == sorted(first)
    df = pd.read_csv(run_metrics(rd, n_eval=9, reference_model=None))
    assert {"generated", "sampled"} <= set(df.source) and (rd / "domain_metrics.csv").exists()


@pytest.mark.slow
def test_a_control_study_runs_its_arms_and_quartiles_end_to_end(tmp_path, tiny_model):
    "A tiny control study: three arms x two seeds sharing generation 0, Self-BLEU quartile chains, 05c_control's tables and figures."
    import subprocess, sys
    from conftest import ROOT
    spec = tmp_path / "c.yaml"
    spec.write_text(f"""
name: c
out_dir: {tmp_path / "study"}
chain: {{model: {tiny_model}, n_heldout: 4, max_new_tokens: 8, batch_size: 4, dtype: float32, generations: 2, n_train: 8, n_generate: 8}}
metrics: {{n_eval: 8, reference_model: {tiny_model}}}
experiments:
  curation: {{ratios: [1.0], seeds: [0, 1], curate: [{{rule: none}}, {{rule: random, oversample: 2}}, {{rule: dedup, oversample: 1.5}}]}}
  quartiles: {{train_on: {{quartiles: selfbleu, keep: [1, 4]}}, ratios: [1.0], seeds: [0, 1]}}
analysis:
  control: {{experiment: curation, quartiles: quartiles}}
""")
    cli = [sys.executable, "-c", "import sys; from recursive_loops.cli import main; sys.exit(main())", "study", str(spec)]
    dry = subprocess.run(cli + ["--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "curation arms: dedup x1.5, none, random x2" in dry.stdout and "10 chains" in dry.stdout, dry.stdout + dry.stderr[-2000:]
    assert "16 fine-tunes (4 generation 0s shared)" in dry.stdout, dry.stdout  # the three arms of a seed train generation 0 once
    r = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "study"
    level = sorted(p.name for p in (out / "bbc_news" / "whole" / "ratio-1").iterdir())  # an arm's chains one level down, the uncurated ones as before
    assert [n.split("-")[0] + "-" + n.split("-")[1] for n in level] == ["dedup-x1.5", "random-x2", "seed-0", "seed-1"], level
    assert len(list((out / "gen0").iterdir())) == 2  # one generation 0 a seed, shared by its arms
    res = pd.read_csv(out / "results.csv")
    assert set(res.curate) == {"none", "random x2", "dedup x1.5"} and (res.source == "sampled").any()
    eff = pd.read_csv(out / "control" / "curation" / "control_effects.csv")
    assert set(eff.arm) == {"random x2", "dedup x1.5"} and set(eff.vs) == {"none", "random x2"} and (eff.n_seeds == 2).all()
    assert len(eff[(eff.arm == "dedup x1.5") & (eff.vs == "random x2")]) == eff.metric.nunique()
    costs = pd.read_csv(out / "control" / "curation" / "control_costs.csv").set_index("arm")
    assert costs.loc["random x2", "candidates_per_kept"] == 2 and costs.loc["none", "candidates_per_kept"] == 1 and costs.loc["none", "curate_s"] == 0
    q = pd.read_csv(out / "control" / "curation" / "quartile_effects.csv")
    assert set(q.property) == {"selfbleu"} and (q.n_seeds == 2).all() and (q.low_part == 1).all() and (q.high_part == 4).all()
    assert q.human_low.notna().all() and q.shift_low.notna().all()  # each part's human set and shift measured
    made = json.loads(next((out / "quartiles").glob("*/quartiles.json")).read_text())["files"]
    assert made["selfbleu-q1.jsonl"]["score_max"] <= made["selfbleu-q4.jsonl"]["score_min"]  # the parts are split by the property
    for f in ("fig_control.png", "fig_control_vs_random.png", "fig_control_curves.png", "fig_quartiles.png"):
        assert (out / "control" / "curation" / f).stat().st_size > 10_000, f


def test_a_study_whose_scorer_fails_its_audit_stops_before_writing(tmp_path, tiny_model):
    import subprocess, sys
    from conftest import ROOT
    spec = tmp_path / "c.yaml"
    spec.write_text(f"""
out_dir: {tmp_path / "study"}
chain: {{model: {tiny_model}, n_heldout: 4, max_new_tokens: 8, batch_size: 4, dtype: float32, generations: 1, n_train: 8}}
experiments:
  curation: {{ratios: [1.0], curate: [{{rule: none}}, {{rule: score_top, oversample: 2, scorer: {{name: tiny, backend: fluency, model: {tiny_model}, audit_n: 16}}}}]}}
""")
    r = subprocess.run([sys.executable, "-c", "import sys; from recursive_loops.cli import main; sys.exit(main())", "study", str(spec)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    last = r.stderr.strip().splitlines()[-1]  # (the audit's own lines are logged above it)
    assert r.returncode == 2 and last.startswith("error:") and "failed its audit" in last and "experiments.curation" in last, r.stderr[-2000:]
    assert not (tmp_path / "study").exists()
