"The package's import graph: no circles, every module only looks down, and models and servers come from the models layer only."
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "recursive_loops"
# lowest first: a module may import only modules of lower layers (the notebooks' order, except that the
# judges (04a) sit below the curation step (03c) that selects with them, the chain that curates, and the
# metrics (04) and properties (04b) that score texts with them)
LAYERS = ["core", "models", "inference", "data", "clusters", "training", "sampling", "judges", "curation", "network", "chain", "metrics", "properties",
          "regression", "modularity", "lean", "control", "topology", "scale", "figures", "docs", "spec", "plan", "cost", "executors", "analysis", "study", "cli", "bench"]
MODULES = sorted(p.stem for p in PKG.glob("*.py") if not p.stem.startswith("_"))


def package_imports(module: str) -> dict[str, set[str]]:
    "{imported module: names} for every import of a `recursive_loops` module in `module`, at any depth (inside functions too)."
    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse((PKG / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level == 1: target = name.split(".")[0]
            elif name.startswith("recursive_loops."): target = name.split(".")[1]
            elif name == "recursive_loops": target = None
            else: continue
            if target is None:  # from recursive_loops import chain
                for a in node.names: out.setdefault(a.name, set())
            else: out.setdefault(target, set()).update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("recursive_loops."): out.setdefault(a.name.split(".")[1], set())
    out.pop(module, None)  # a module importing itself (bench does, for its worker processes) is no circle
    return out


GRAPH = {m: package_imports(m) for m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    "A circle of imports, as a path that returns to its start, or None."
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1: return path[path.index(n):] + [n] if n in path else path + [n]
            if state.get(n) is None and (c := visit(n, path + [n])): return c
        state[m] = 2

    for m in sorted(graph):
        if state.get(m) is None and (c := visit(m, [m])): return c
    return None


def test_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_has_a_layer():
    assert set(MODULES) == set(LAYERS), f"place every module in LAYERS: missing {set(MODULES) - set(LAYERS)}, gone {set(LAYERS) - set(MODULES)}"


def test_no_import_circles():
    cycle = find_cycle({m: set(g) for m, g in GRAPH.items()})
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", MODULES)
def test_stages_only_look_down(module):
    up = {t for t in GRAPH[module] if t in LAYERS and LAYERS.index(t) >= LAYERS.index(module)}
    assert not up, f"{module} imports {sorted(up)}, which are not below it in {LAYERS}"


def test_models_and_servers_come_from_the_models_layer():
    "No stage takes a model loader, the embedder or the server life cycle from another stage."
    tree = ast.parse((PKG / "models.py").read_text())
    exported = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__all__")
    assert {"load_model", "load_embedder", "start_server", "stop_server", "check_vllm_python"} <= set(exported)
    for module, imports in GRAPH.items():
        for target, names in imports.items():
            if target != "models":
                taken = names & set(exported)
                assert not taken, f"{module} takes {sorted(taken)} from {target}; import them from recursive_loops.models"
