"JupyterLab as users open it: the project's kernel registered, a server on 127.0.0.1, 03_chain read through the contents API and its fast cells run through a kernel of that server."
import json, os, secrets, signal, subprocess, sys, time, uuid
import urllib.request
from pathlib import Path

import pytest

from recursive_loops.docs import not_run, skip_flags
from recursive_loops.models import free_port

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "recursive-loops"  # the name `make lab` registers


def register_kernel(prefix: Path) -> Path:
    "What `make lab` does first (there into the user's Jupyter folder; here into `prefix`): the venv's Python as a named kernel."
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", KERNEL,
                    "--display-name", "Python (recursive_loops)"], check=True, capture_output=True)
    return prefix / "share" / "jupyter" / "kernels" / KERNEL


def get(url: str, token: str, data: dict | None = None, method: str | None = None):
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
                                 data=None if data is None else json.dumps(data).encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
        return r.status, (json.loads(body) if body and r.headers.get_content_type() == "application/json" else body)


def execute(ws, session: str, code: str, timeout: float = 600) -> tuple[str, list[str]]:
    "Run `code` in the kernel behind websocket `ws`: (status, [text outputs]); an error's name and value come back as the status."
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": msg_id, "username": "test", "session": session, "msg_type": "execute_request", "version": "5.3"},
                        "parent_header": {}, "metadata": {}, "channel": "shell",
                        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False,
                                    "stop_on_error": True}}))
    texts, status, idle, t0 = [], None, False, time.time()
    while status is None or not idle:
        if time.time() - t0 > timeout: raise TimeoutError(f"no reply in {timeout} s to: {code[:80]}")
        m = json.loads(ws.recv())
        if m.get("parent_header", {}).get("msg_id") != msg_id: continue
        kind, content = m["msg_type"], m["content"]
        if kind == "stream": texts.append(content["text"])
        elif kind in ("execute_result", "display_data"): texts.append(content["data"].get("text/plain", ""))
        elif kind == "error": status = f"{content['ename']}: {content['evalue']}"
        elif kind == "execute_reply" and status is None: status = content["status"]
        elif kind == "status" and content["execution_state"] == "idle": idle = True
    return status, texts


@pytest.fixture
def lab_server(tmp_path):
    "JupyterLab on 127.0.0.1 at a free port, with the project's kernel registered in a private Jupyter folder; stopped afterwards."
    spec = register_kernel(tmp_path / "jupyter")
    assert json.loads((spec / "kernel.json").read_text())["argv"][0] == sys.executable
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter" / "share" / "jupyter"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}", "--ServerApp.port_retries=0"]
                            + (["--allow-root"] if os.geteuid() == 0 else []),
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None: raise RuntimeError(f"JupyterLab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
            try:
                if get(f"{url}/api/status", token)[0] == 200: break
            except OSError: time.sleep(0.5)
        else: raise TimeoutError("JupyterLab did not answer in 60 s")
        yield url, token, port
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(30)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait(10)
        log.close()
    assert proc.poll() is not None  # the server (and its kernels, in its process group) are gone


def test_lab_serves_the_chain_notebook_and_runs_its_fast_cells(lab_server, tmp_path):
    import websocket
    url, token, port = lab_server
    status, page = get(f"{url}/lab", token)
    assert status == 200 and b"JupyterLab" in page
    status, model = get(f"{url}/api/contents/nbs/03_chain.ipynb?content=1", token)
    assert status == 200 and model["type"] == "notebook"
    nb = model["content"]
    assert len(nb["cells"]) == len(json.loads((ROOT / "nbs" / "03_chain.ipynb").read_text())["cells"])
    # which cells are fast: nbdev's own reading of the directives, as nbdev_test and the docs use it
    from nbdev.process import NBProcessor
    (tmp_path / "fetched.ipynb").write_text(json.dumps(nb))
    cells = NBProcessor(tmp_path / "fetched.ipynb", process=True).nb.cells
    flags = skip_flags(ROOT)
    fast = [c for c in cells if not not_run(c, flags)]
    assert 10 < len(fast) < len([c for c in cells if c.cell_type == "code"])  # slow cells exist, and are skipped
    status, sess = get(f"{url}/api/sessions", token, {"path": "nbs/03_chain.ipynb", "type": "notebook", "name": "03_chain.ipynb",
                                                      "kernel": {"name": "recursive-loops"}}, "POST")
    assert status == 201 and sess["kernel"]["name"] == "recursive-loops"
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/kernels/{sess['kernel']['id']}/channels?token={token}", timeout=600)
    try:
        session = uuid.uuid4().hex
        for i, c in enumerate(fast):
            st, out = execute(ws, session, c.source)
            assert st == "ok", f"fast cell {i} of 03_chain failed in the lab kernel: {st}\n{c.source[:300]}"
        st, out = execute(ws, session, "import os, sys; print(type(cfg).__name__, os.getcwd(), sys.executable)")
        assert st == "ok" and out[0].split() == ["ChainConfig", str(ROOT / "nbs"), sys.executable], out
    finally: ws.close()
    assert get(f"{url}/api/sessions/{sess['id']}", token, method="DELETE")[0] == 204
