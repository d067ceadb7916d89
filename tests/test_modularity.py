"The modularity stage (05a) as a user runs it: papermill on a table, and the merged datasets it reads."
import pandas as pd

from conftest import run_nb
from recursive_loops.core import read_jsonl
from recursive_loops.modularity import synthetic_table, merge_clusters, modularity_regression, modularity_summary

PROPS = ["prop_selfbleu_diversity", "prop_semantic_diversity"]


def test_papermill_finds_exactly_the_planted_cross_domain_effect(tmp_path):
    table = tmp_path / "t.csv"
    synthetic_table(n=40, cross={("tweets", "reddit:prop_selfbleu_diversity"): 0.03}, seed=3).to_csv(table, index=False)
    run_nb("05a_modularity", tmp_path / "m.ipynb", table=str(table), predictors=",".join(PROPS), out_dir=str(tmp_path / "out"))
    res = pd.read_csv(tmp_path / "out" / "modularity.csv")
    sig = res[(res.p_holm < 0.05) & ~res.own]
    assert list(zip(sig.shifted, sig.term)) == [("tweets", "reddit:prop_selfbleu_diversity")]
    s = pd.read_csv(tmp_path / "out" / "modularity_summary.csv").iloc[0]
    assert s.cross_significant == 1 and s.pairs_significant == 1 and s.verdict.startswith("modular")
    assert (tmp_path / "out" / "fig_modularity.png").stat().st_size > 10_000


def test_no_planted_effect_no_cross_domain_finding_and_many_break_modularity():
    null = modularity_summary(modularity_regression(synthetic_table(n=40, seed=5), ["shift_semantic_diversity"], PROPS)).iloc[0]
    assert null.cross_significant == 0 and null.own_significant == 3
    cross = {(a, f"{b}:prop_semantic_diversity"): 0.04 for a in ("news", "reddit", "tweets") for b in ("news", "reddit", "tweets") if a != b}
    many = modularity_summary(modularity_regression(synthetic_table(n=40, cross=cross, seed=5), ["shift_semantic_diversity"], PROPS)).iloc[0]
    assert many.pairs_significant == 6 and many.verdict.startswith("not modular")


def test_merged_dataset_equal_shares_and_instructions(tmp_path):
    parts = [dict(dataset="bbc_news", domain=d, instruction=f"Write about {d}.", cluster=d) for d in ("business", "tech", "politics")]
    rows = read_jsonl(merge_clusters(parts, tmp_path / "m.jsonl", 20, 60, seed=1))
    counts = pd.Series([r["domain"] for r in rows]).value_counts()
    assert set(counts.index) == {"business", "tech", "politics"} and counts.nunique() == 1 and counts.iloc[0] == 452  # tech's size: the smallest
    assert all(r["instruction"] == f"Write about {r['domain']}." for r in rows)
