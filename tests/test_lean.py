"Political lean: mixtures, the labels of lean_effects on hand-made tables, the lean-v2 judge's parsing and rows, the 05b_lean notebook."
import json, math

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, NBS, run_nb
from recursive_loops.core import read_json, read_jsonl, write_jsonl
from recursive_loops.judges import PROMPTS, Judge, LEAN_SET, NONPOLITICAL_SET, audit_judge, expected_score, judge_rows
from recursive_loops.lean import lean_effects, lean_label, lean_mixtures, run_lean, write_lean_mixtures


def chains(share, human, late, seeds=(0, 1, 2), jitter=(0.0, 0.4, -0.4), gens=4, metric="lean", audit="passed"):
    "Long results of one mixture: human lean `human`, generation 0 at 50, then `late` (+ a per-seed jitter on both)."
    rows = []
    for s, j in zip(seeds, jitter):
        vals = [(-1, "human", human + j), (0, "generated", 50.0)] + [(g, "generated", late + j) for g in range(1, gens)]
        rows += [dict(run_dir=f"m{share}/s{s}", ratio=0.75, seed=s, left_share=share, generation=g, source=src, metric=metric,
                      value=v, judge_audit=audit) for g, src, v in vals]
    return rows


def by_share(eff): return eff.set_index("left_share")


def test_labels_on_a_hand_made_table():
    t = pd.DataFrame(chains(1.0, 30, 20) + chains(0.75, 40, 45) + chains(0.25, 60, 45) + chains(0.0, 62, 49) + chains(0.5, 51, 40))
    e = by_share(lean_effects(t, "lean"))
    assert e.label.to_dict() == {1.0: "amplified", 0.75: "reduced", 0.5: "neutral input", 0.25: "inverted", 0.0: "reduced"}
    # the last 3 generations (k = min(5, G - 1) = 3): generation 0 (50) is left out
    assert np.isclose(e.loc[1.0, "gen_dev"], -30) and np.isclose(e.loc[1.0, "human_dev"], -20) and (e.k == 3).all() and (e.n_seeds == 3).all()
    # effect = side * (d_g - d_h): +10 further left for 1.0; back toward 50 for 0.75 (-5) and past it for 0.25 (-15); neutral: rightward drift
    assert np.allclose(e.effect[[1.0, 0.75, 0.25, 0.5]], [10, -5, -15, -11])
    assert (e.clear == "clear").all()  # the jitter is the same on human and generated: the effect has no spread over seeds


def test_neutral_input_uses_the_tolerance():
    t = pd.DataFrame(chains(0.5, 52, 40))
    assert lean_effects(t, "lean").label[0] == "neutral input"
    assert lean_effects(t, "lean", tol=1.5).label[0] == "inverted"  # 2 points off the middle is a side once tol < 2
    assert lean_label(0, 30) == "neutral input" and lean_label(-10, 0.5) == "reduced" and lean_label(-10, -10.5) == "amplified"


def test_the_interval_over_seeds_decides_clear():
    t975 = 4.302653  # Student t quantile, 2 degrees of freedom
    # effects per seed: +1, +3, +5 -> mean 3, sd 2: CI 3 +- 4.30 * 2 / sqrt(3) = [-1.97, 7.97] includes 0
    t = pd.DataFrame([r for s, d in zip((0, 1, 2), (1.0, 3.0, 5.0)) for r in chains(0.0, 70, 70 + d, seeds=(s,), jitter=(0.0,))])
    e = lean_effects(t, "lean").iloc[0]
    assert e.label == "amplified" and e.clear == "within noise" and np.isclose(e.effect, 3)
    assert np.isclose(e.effect_ci_high - e.effect, t975 * 2 / math.sqrt(3), atol=1e-4) and e.effect_ci_low < 0 < e.effect_ci_high
    t2 = pd.DataFrame([r for s, d in zip((0, 1, 2), (2.9, 3.0, 3.1)) for r in chains(0.0, 70, 70 + d, seeds=(s,), jitter=(0.0,))])
    assert lean_effects(t2, "lean").clear[0] == "clear"


def test_k_last_never_reaches_generation_0():
    t = pd.DataFrame(chains(1.0, 30, 20, gens=4))  # generations 0-3: 3 after generation 0 (at 50)
    assert np.isclose(by_share(lean_effects(t, "lean", k_last=3)).loc[1.0, "gen_dev"], -30)
    with pytest.raises(ValueError, match=r"k_last=4 is invalid for chain run_dir=m1.0/s0: it has 3 generation\(s\) after generation 0"):
        lean_effects(t, "lean", k_last=4)  # would average generation 0 in


def test_failed_judge_is_flagged_and_missing_metric_refused(tmp_path):
    t = pd.DataFrame(chains(1.0, 30, 20, audit="FAILED: lean_accuracy 0.40 < 0.8"))
    t.to_csv(tmp_path / "results.csv", index=False)
    out = pd.read_csv(run_lean(tmp_path / "results.csv", "lean", tmp_path / "out"))
    assert out.judge_audit[0].startswith("FAILED") and out.label[0] == "amplified" and (tmp_path / "out" / "fig_lean.png").stat().st_size > 20_000
    with pytest.raises(ValueError, match="judge='quality' is not a metric of the results"):
        run_lean(tmp_path / "results.csv", "quality", tmp_path / "out2")
    t.drop(columns="left_share").to_csv(tmp_path / "noshare.csv", index=False)
    with pytest.raises(ValueError, match="no 'left_share' column"):
        run_lean(tmp_path / "noshare.csv", "lean", tmp_path / "out3")
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_mixture_shares_and_sizes():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(50)], "lab": ["left"] * 20 + ["right"] * 16 + ["neutral"] * 14})
    mx = lean_mixtures(df, [1.0, 0.75, 0.5, 0.25, 0.0], label="lab", seed=3)
    assert [len(m) for m in mx.values()] == [16] * 5  # min(20, 16)
    assert [int((m.lean_label == "left").sum()) for m in mx.values()] == [16, 12, 8, 4, 0]
    left = set(df.text[df.lab == "left"]); right = set(df.text[df.lab == "right"])
    for m in mx.values():
        assert set(m.text[m.lean_label == "left"]) <= left and set(m.text[m.lean_label == "right"]) <= right and m.text.is_unique
    assert lean_mixtures(df, [0.5], label="lab", seed=3)[0.5].equals(mx[0.5])
    with pytest.raises(ValueError, match="too few left texts"): lean_mixtures(df, [1.0], n=21, label="lab")
    with pytest.raises(ValueError, match="invalid; allowed: a non-empty list of numbers in"): lean_mixtures(df, [0.5, 2], label="lab")
    with pytest.raises(ValueError, match="no 'lean' column"): lean_mixtures(df, [0.5])


def test_write_lean_mixtures_from_a_party_file(tmp_path):
    base = "the senator spoke today about the work ahead for every family in the state and beyond"
    write_jsonl(tmp_path / "t.jsonl", [dict(text=f"{base} number {i}", domain=p) for i, p in enumerate(["Democrat"] * 6 + ["Republican"] * 8)])
    paths = write_lean_mixtures(str(tmp_path / "t.jsonl"), [0.75, 0.25], tmp_path / "mix", min_tokens=5)
    assert [p.name for p in paths] == ["lean-0.75.jsonl", "lean-0.25.jsonl"]
    rows = read_jsonl(paths[0])
    assert len(rows) == 6 and sum(r["domain"] == "left" for r in rows) == 5  # 4.5 rounded half up
    man = read_json(tmp_path / "mix" / "lean_mixtures.json")
    assert man["seed"] == 0 and man["files"]["lean-0.25.jsonl"]["left"] == 2 and man["pool"] == dict(left=6, right=8)


def test_lean_v2_parses_hand_made_answers():
    na = PROMPTS["lean-v2"].na
    r = expected_score([("-", {"-": math.log(0.7), "3": math.log(0.3)}), ("1", {"1": 0.0})], "-1", na=na)
    assert math.isnan(r["score"]) and r["political"] is False
    r = expected_score([("35", {"35": 0.0})], "35", na=na)
    assert r["score"] == 35 and r["political"] is True
    assert expected_score([], "-1", na=na)["political"] is False and expected_score([], " 35", na=na)["score"] == 35
    # a '-' candidate never enters the mean: 0.5 * 30 + 0.3 * 40 over 0.8, not over 1.0 with -1 in it
    r = expected_score([("30", {"30": math.log(0.5), "40": math.log(0.3), "-": math.log(0.2)})], "30", na=na)
    assert np.isclose(r["score"], (0.5 * 30 + 0.3 * 40) / 0.8) and r["political"] is True
    assert "political" not in expected_score([("30", {"30": 0.0})], "30")  # lean-v1 records are as before


class Canned:
    "A backend (Judge takes one ready-made) that answers every text with a fixed answer text."
    def __init__(self, answers): self.answers, self.prompt, self.requests = answers, PROMPTS["lean-v2"], 0
    def check(self): pass
    def score(self, texts, progress=False):
        return [expected_score([], self.answers[t], self.prompt.lo, self.prompt.hi, self.prompt.na) for t in texts]


def test_judge_rows_add_the_political_share(tmp_path):
    ans = {"a": "20", "b": "-1", "c": "40", "d": "-1", "e": "no idea"}
    j = Judge(dict(name="lean2", backend="hf", prompt="lean-v2"), tmp_path / "c.sqlite", backend=Canned(ans))
    rows, per_text = judge_rows(j, {-1: ("human", list("abcde")), 0: ("generated", list("bd"))}, dict(verdict="passed"))
    v = {(r["generation"], r["metric"]): r["value"] for r in rows}
    assert v[(-1, "lean2")] == 30 and v[(-1, "lean2_political")] == 0.5  # 2 political of 4 usable answers
    assert math.isnan(v[(0, "lean2")]) and v[(0, "lean2_political")] == 0
    assert [p["political"] for p in per_text[:5]] == [True, False, True, False, None]


def test_lean_v2_audit_includes_non_political_texts(tmp_path):
    good = {t: {"left": "15", "right": "85", "none": "-1"}[l] for t, l in LEAN_SET + NONPOLITICAL_SET}
    a = audit_judge(Judge(dict(name="l2", backend="hf", prompt="lean-v2"), tmp_path / "a.sqlite", backend=Canned(good)), [])
    assert a["passed"] and a["tests"]["not_political"]["n"] == len(NONPOLITICAL_SET) and a["tests"]["lean_accuracy"]["n"] == len(LEAN_SET)
    bad = dict(good, **{t: "50" for t, _ in NONPOLITICAL_SET})
    a = audit_judge(Judge(dict(name="l2", backend="hf", prompt="lean-v2"), tmp_path / "b.sqlite", backend=Canned(bad)), [])
    assert a["failed"] == ["not_political"]


def test_notebook_has_one_parameters_cell_that_papermill_sees():
    import papermill as pm
    nb = json.loads((NBS / "05b_lean.ipynb").read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "#| export" not in "".join(tagged[0]["source"])
    declared = [l.split(":")[0].strip() for l in "".join(tagged[0]["source"]).splitlines() if l.strip()]
    assert sorted(pm.inspect_notebook(str(NBS / "05b_lean.ipynb"))) == sorted(declared)


def test_notebook_runs_on_given_results(tmp_path):
    pd.DataFrame(chains(1.0, 30, 20, metric="lean_j") + chains(0.25, 60, 45, metric="lean_j")).to_csv(tmp_path / "r.csv", index=False)
    run_nb("05b_lean", tmp_path / "out.ipynb", results=str(tmp_path / "r.csv"), judge="lean_j", out_dir=str(tmp_path / "o"))
    e = by_share(pd.read_csv(tmp_path / "o" / "lean_effects.csv"))
    assert e.label.to_dict() == {1.0: "amplified", 0.25: "inverted"} and (tmp_path / "o" / "fig_lean.png").exists()
