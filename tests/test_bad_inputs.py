"The bad-input catalogue: each mistake gives one line naming the problem and the fix, exit status 2, no traceback, nothing written."
import json, subprocess, sys
from pathlib import Path

import pytest

from conftest import ROOT

CLI = [sys.executable, "-c", "import sys; from recursive_loops.cli import main; sys.exit(main())"]
HUMAN = [f"Paragraph {i}: the council said on Monday that the plan for the new bridge over the river would cost more "
         f"than expected, and that work would start in spring {2000 + i}." for i in range(40)]


def _jsonl(rows): return "".join(json.dumps(r) + "\n" for r in rows)


# case -> (file to write as the dataset: name and bytes, or None; chain/experiment settings; expected words)
CASES = {
    "missing path": (None, dict(dataset="{tmp}/nope.jsonl"), "does not exist; give an existing"),
    "empty file": (("empty.jsonl", b""), {}, "is empty; it needs rows with a 'text' column"),
    "no text column": (("notext.jsonl", _jsonl([{"body": t} for t in HUMAN]).encode()), {}, "no 'text' column (columns: body); add one"),
    "non-UTF-8 bytes": (("latin.jsonl", _jsonl([{"text": t} for t in HUMAN]).encode().replace(b"council", b"c\xf6uncil")), {},
                        "is not valid UTF-8"),
    "all texts outside the bounds": (("short.jsonl", _jsonl([{"text": "too short"}] * 50).encode()), {},
                                     "fall outside the token bounds 20 < tokens < 200; widen"),
    "only duplicates": (("dups.jsonl", _jsonl([{"text": HUMAN[0]}] * 50).encode()), {},
                        "has 1 (after dropping 49 duplicates"),
    "ratio -0.1": ("ok", dict(ratios=[-0.1]), "ratio=-0.1 is invalid; allowed: a number in [0, 1]"),
    "ratio 1.5": ("ok", dict(ratios=[1.5]), "ratio=1.5 is invalid; allowed: a number in [0, 1]"),
    "ratio abc": ("ok", dict(ratios=["abc"]), "ratio='abc' is invalid; allowed: a number in [0, 1]"),
    "generations 0": ("ok", dict(generations=0), "generations=0 is invalid; allowed: an integer >= 1"),
    "n_train larger than the human pool": ("ok", dict(n_train=64), "the chain needs 100 unseen human texts"),
    "unknown model id offline": ("ok", dict(models=["no-such-org/no-such-model"]), "not in the Hugging Face cache while offline"),
    "unknown dataset name": (None, dict(dataset="bbc_newz"), "dataset: unknown name 'bbc_newz'; allowed: bbc_news"),
    "misspelt spec key": ("ok", dict(n_trian=8), "unknown key 'n_trian' in experiments.e; did you mean 'n_train'?"),
    "spec that is not YAML": ("ok", "broken", "not valid YAML"),
    "API key written in the spec": ("ok", dict(_metrics={"judges": [dict(name="q", backend="openai", api_key="sk-x")]}),
                                    "take no API key: put it in an environment variable and give that variable's name as api_key_env"),
    "generator misspelt": ("ok", dict(generator="vlm"), "generator='vlm' is invalid; allowed: hf or vllm"),
    "LoRA rank vLLM refuses": ("ok", dict(generator="vllm", lora_r=1024), "lora_r=1024 is above vLLM's largest LoRA rank 512; use generator: hf"),
    "judge server unreachable": ("ok", dict(_metrics={"judges": [dict(name="q", backend="openai", base_url="http://127.0.0.1:9/v1")]}),
                                 "metrics.judges[0] (q): judge server http://127.0.0.1:9/v1 is unreachable"),
}


def _spec(tmp: Path, data, settings) -> Path:
    if data is None: ds = settings.pop("dataset").format(tmp=tmp)
    elif data == "ok": ds = str(tmp / "ok.jsonl"); (tmp / "ok.jsonl").write_text(_jsonl([{"text": t} for t in HUMAN]))
    else: ds = str(tmp / data[0]); (tmp / data[0]).write_bytes(data[1])
    if settings == "broken": return _write(tmp, "name: t\nexperiments: [\n")
    metrics = settings.pop("_metrics", None)
    exp = dict(n_train=8, n_heldout=4, generations=2, ratios=[0.5]); exp.update(settings)
    return _write(tmp, f"name: t\nout_dir: {tmp}/out\ndatasets: [{ds}]\nchain: {{max_tokens: 200}}\n"
                       + (f"metrics: {json.dumps(metrics)}\n" if metrics else "") + f"experiments:\n  e: {json.dumps(exp)}\n")


def _write(tmp, text):
    (tmp / "s.yaml").write_text(text); return tmp / "s.yaml"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, case):
    data, settings, words = CASES[case]
    spec = _spec(tmp_path, data, dict(settings) if isinstance(settings, dict) else settings)
    r = subprocess.run(CLI + ["study", str(spec)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (case, r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, (case, r.stderr[-2000:])
    assert words in lines[0], (case, lines[0])
    assert not (tmp_path / "out").exists(), "nothing may be written for a bad input"
    print(f"| {case} | {lines[0][7:]} | {r.returncode} |")
    # --debug shows where it came from
    if case == "ratio 1.5":
        d = subprocess.run(CLI + ["study", str(spec), "--debug"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert d.returncode != 0 and "Traceback" in d.stderr


def test_truncated_artefacts_are_recomputed_never_read(tmp_path, tiny_model):
    "A generation file, chain.json and metrics.csv cut short on disk: the next run recomputes them and ends byte-identical."
    spec = _write(tmp_path, f"""name: t
out_dir: {tmp_path}/out
chain: {{model: {tiny_model}, n_train: 8, n_heldout: 4, n_generate: 4, max_new_tokens: 8, batch_size: 4, dtype: float32, generations: 3}}
metrics: {{n_eval: 4, reference_model: {tiny_model}}}
experiments:
  e: {{ratios: [0.5]}}
""")
    run = lambda: subprocess.run(CLI + ["study", str(spec), "--no-analysis"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    r = run(); assert r.returncode == 0, r.stderr[-3000:]
    rd = next((tmp_path / "out").rglob("chain.json")).parent
    files = ["gen_00/generated.jsonl", "gen_01/generated.jsonl", "gen_01/train.jsonl", "gen_02/generated.jsonl", "metrics.csv"]
    before = {f: (rd / f).read_bytes() for f in files}
    kept = {g: (rd / g / "manifest.json").read_bytes() for g in ("gen_00", "gen_02")}
    for f in ("gen_01/generated.jsonl", "metrics.csv", "chain.json"):
        b = (rd / f).read_bytes(); (rd / f).write_bytes(b[: len(b) // 2])
    r = run(); assert r.returncode == 0, r.stderr[-3000:]
    assert {f: (rd / f).read_bytes() for f in files} == before
    assert {g: (rd / g / "manifest.json").read_bytes() for g in kept} == kept, "intact generations are not recomputed"
    assert json.loads((rd / "chain.json").read_text())["config_hash"]
