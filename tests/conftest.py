"End-to-end checks: papermill runs of the stage notebooks, resume, bad inputs."
import json, os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RECURSIVE_LOOPS_PROGRESS", "0")
# Under pytest-xdist (`make test` runs two workers) the cores are shared: each worker's chains, kernels and
# servers use its share of them (two torch processes of two threads each on two cores ran up to 7x slower).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _share = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _k in ("RECURSIVE_LOOPS_THREADS", "OMP_NUM_THREADS"): os.environ.setdefault(_k, _share)


def _guard_network():
    "Nothing in the tests may reach the network: connections beyond this machine raise (kernels, SLURM and munge talk over loopback)."
    import ipaddress, socket
    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None:
            try: local = ipaddress.ip_address(host).is_loopback
            except ValueError: local = host in ("localhost", socket.gethostname())
            if not local: raise OSError(f"network access blocked in tests: {address}")
        return real(self, address)
    socket.socket.connect = connect


_guard_network()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    "A tiny random Llama (with the bundled tokenizer) for fast, real chains."
    from recursive_loops.models import make_tiny_model
    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def run_nb(name: str, out: Path, **params):
    "Execute nbs/<name>.ipynb with papermill from the repo root, as a user would."
    import papermill as pm
    return pm.execute_notebook(str(NBS / f"{name}.ipynb"), str(out), parameters=params, cwd=str(ROOT),
                               progress_bar=False, kernel_name="python3")


def tiny_chain(run_dir, model, **kw):
    "Parameters of a chain that runs in seconds with the tiny model."
    p = dict(model=model, run_dir=str(run_dir), n_train=8, generations=3, ratio=0.5, n_heldout=4, n_generate=4,
             max_new_tokens=8, batch_size=4, dtype="float32")
    p.update(kw)
    return p


def measured(table) -> str:
    "A chain's metrics.csv as text without the columns naming its folder (`run_dir`, `network_dir`): what two runs of one chain in two places share."
    import pandas as pd
    df = pd.read_csv(table, dtype=str, keep_default_na=False)
    return df.drop(columns=[c for c in ("run_dir", "network_dir") if c in df]).to_csv(index=False)


# Tests that share a costly module fixture or a machine-wide service run in one xdist worker, one after
# another: the local SLURM's daemons (fixture `slurm`, started and stopped per module; test_worker's `fresh`
# run is compared with a SLURM run) and the vLLM servers. The group is read off the test's id, because the
# controller that schedules sees only ids (xdist's own --dist loadgroup renames ids, which pytest 9.2 ignores).
def xdist_group(nodeid: str) -> str | None:
    "`slurm`, `vllm` or None (scheduled alone) for a test id."
    path, _, name = nodeid.partition("::")
    name = name.split("[")[0]
    if "slurm" in name or path.endswith("test_worker.py"): return "slurm"
    if "vllm" in name or path.endswith(("test_judges.py", "test_vllm_sampler.py")): return "vllm"
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    "xdist's loadscope, with the scope of a test its group (or the test alone)."
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str: return xdist_group(nodeid) or nodeid
    return ByGroup(config, log)


def pytest_collection_modifyitems(config, items):
    for item in items:  # the id rule must find every test that needs a group
        needs = "slurm" if {"slurm", "fresh"} & set(item.fixturenames) else \
                "vllm" if item.get_closest_marker("judge_server") else None
        if needs and xdist_group(item.nodeid) != needs:
            raise pytest.UsageError(f"{item.nodeid} needs the xdist group {needs!r}: name it so (conftest.xdist_group)")
    items.sort(key=lambda item: xdist_group(item.nodeid) is None)  # the long groups first, so that no worker ends with one alone
