"The docs site: every stage notebook a page, nbdev's directives hidden, the committed appendix after the stages."
import json, re
from pathlib import Path

from conftest import ROOT, NBS
from recursive_loops.docs import build_docs, committed_appendix, study_specs


def test_docs_site_shows_every_notebook_without_nbdev_directives(tmp_path):
    # the site of the repository as it is, built into a scratch folder (cells not run: `make docs` runs them)
    page = build_docs(ROOT, proc=str(tmp_path / "proc"), out=str(tmp_path / "site"), execute=False)
    site = page.parent
    stages = sorted(p.stem for p in NBS.glob("*.ipynb") if not p.name.startswith("_") and p.stem != "index")
    index = page.read_text()
    for s in stages:
        html = (site / f"{s}.html").read_text()
        assert f'href="{s}.html"' in index, s
        code = " ".join(re.findall(r'<div class="highlight[^"]*"><pre>(.*?)</pre>', html, re.S))
        assert code and not re.search(r"(?m)^#\|", re.sub(r"<[^>]+>", "", code)), f"{s}: an nbdev directive is shown"
    # a hidden cell runs for nbdev_test but is not on the page: 06a_docs hides its notebook-only imports
    hidden = next(c for c in json.loads((NBS / "06a_docs.ipynb").read_text())["cells"] if "".join(c["source"]).startswith("#| hide"))
    first = "".join(hidden["source"]).splitlines()[1]
    assert first not in re.sub(r"<[^>]+>", "", (site / "06a_docs.html").read_text()), first
    for study, nbs in committed_appendix(ROOT).items():
        for nb in nbs:
            assert (site / "appendix" / study / f"{nb.stem}.html").exists() and f'href="appendix/{study}/{nb.stem}.html"' in index
    assert "Two commands" in index  # the home page is the README
    # the paper page, which the stage notebooks cite, and a results page per study, linked from the home page
    assert (site / "paper.html").exists() and 'href="paper.html"' in index
    assert not [s for s in stages if "STUDY.md" in (site / f"{s}.html").read_text()]  # they cite the paper page
    for study in study_specs(ROOT):
        assert (site / "results" / f"{study}.html").exists() and f'href="results/{study}.html"' in index, study
    assert "fig_ratio_sweep.png" in (site / "results" / "ratios.html").read_text()
