"""The one-file node binary (tools/build-binary), run as a volunteer would: a clean environment, no
virtualenv and no source tree on the path. It joins a swarm, serves checked jobs (a matrix product
checked by Freivalds' test, and an ONNX model on ONNX Runtime inside the binary), shows its
dashboard, and stops cleanly.

Slow (building takes minutes): ``tools/test -m slow -k binary`` builds dist/p2pnode and runs this;
``P2PNODE_BINARY=PATH`` tests a binary built already.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from p2pnode import __version__
from tests.web.http import request_sync

ROOT = Path(__file__).resolve().parents[1]
EXE = [sys.executable, "-m", "p2pnode"]
VENV_ENV = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def binary() -> Path:
    given = os.environ.get("P2PNODE_BINARY")
    if given:
        return Path(given)
    pytest.importorskip("PyInstaller", reason="the binary test builds with PyInstaller (the test extra)")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "binary" / "build.py")], capture_output=True,
                          text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout.strip())
    return ROOT / "dist" / "p2pnode"


def _clean_env(home: Path) -> dict[str, str]:
    """What a volunteer's shell has: no virtualenv, no PYTHONPATH, no Python of ours on the path."""
    return {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def _cli(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=timeout, env=VENV_ENV, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "swarm"
    _cli("swarm", "up", "--nodes", "2", "--dir", str(folder), "--no-ui", timeout=300)
    try:
        yield folder
    finally:
        subprocess.run([*EXE, "swarm", "down", "--dir", str(folder)], env=VENV_ENV, capture_output=True, timeout=60,
                       check=False)


def _tiny_model(path: Path) -> None:
    """y = relu(x @ W): an ONNX model of a few bytes, for ONNX Runtime in the binary to run."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, name="W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                              "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def test_the_binary_runs_a_verified_job_shows_its_dashboard_and_stops(binary: Path, swarm: Path,
                                                                      tmp_path: Path) -> None:
    env = _clean_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    t0 = time.monotonic()
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=120, check=False)
    version_s = time.monotonic() - t0
    assert version.returncode == 0 and version.stdout.strip() == f"p2pnode {__version__}", version.stderr

    state = json.loads((swarm / "swarm.json").read_text())
    boot = state["nodes"][0]["addr"]
    _cli("pause", "--data-dir", str(swarm / "node1"))  # node 0's jobs can only go to the binary
    data = tmp_path / "bin-node"
    t0 = time.monotonic()
    node = subprocess.Popen([str(binary), "run", "--data-dir", str(data), "--listen", "/ip4/127.0.0.1/tcp/0",
                             "--no-mdns", "--no-dht", "--metrics", "", "--ui", "127.0.0.1:0", "--bootstrap", boot],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        assert node.stdout is not None
        lines = []
        while not any(line.startswith("dashboard on ") for line in lines):
            line = node.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        start_s = time.monotonic() - t0
        peer = next(line.split()[-1] for line in lines if line.startswith("p2pnode "))
        deadline = time.monotonic() + 60
        while not any(e["peer"] == peer and e["offers"] for e in json.loads(_cli("market", "--data-dir",
                                                                               str(swarm / "node0"), "--json"))):
            assert time.monotonic() < deadline, "the swarm never listed the binary's node"
            time.sleep(0.5)

        job = json.loads(_cli("submit", "matmul", "-p", "m=64", "-p", "n=64", "-p", "k=128", "-p", "dtype=int8",
                              "--data-dir", str(swarm / "node0"), "--json"))
        assert job["state"] == "done" and job["peer"] == peer, job
        assert job["checked"] == "freivalds" and "verified" in job["outcome"]

        _tiny_model(tmp_path / "tiny.onnx")
        x = np.random.default_rng(1).standard_normal((40, 4)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        model = json.loads(_cli("submit", "infer", "--model", str(tmp_path / "tiny.onnx"), "--input",
                                str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
                                "--data-dir", str(swarm / "node0"), "--json", timeout=300))
        assert peer in model["by_provider"], model
        expected = np.maximum(x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10), 0)
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5)

        login = subprocess.run([str(binary), "ui", "--data-dir", str(data)], capture_output=True, text=True, env=env,
                               timeout=60, check=False).stdout.strip()
        address = login.split("//")[1].split("/")[0]
        assert request_sync(address, "GET", "/api/status").status == 401
        cookie = request_sync(address, "GET", "/login?token=" + login.split("token=")[1]).headers["set-cookie"]
        page = request_sync(address, "GET", "/", {"Cookie": cookie.split(";")[0]})
        assert page.status == 200 and b"/static/dashboard.js" in page.body
        asset = request_sync(address, "GET", "/static/vendor/uPlot.iife.min.js", {"Cookie": cookie.split(";")[0]})
        assert asset.status == 200 and len(asset.body) > 10_000
        jobs = json.loads(request_sync(address, "GET", "/api/jobs", {"Cookie": cookie.split(";")[0]}).body)
        assert any(j["role"] == "provider" and j["state"] == "done" for j in jobs)

        node.send_signal(signal.SIGTERM)
        out, _ = node.communicate(timeout=60)
        assert node.returncode == 0, out[-3000:]
        assert "Traceback" not in out
    finally:
        node.kill()
    size = binary.stat().st_size
    print(f"binary: {size / 2**20:.0f} MiB; --version {version_s:.2f} s; run to its dashboard {start_s:.2f} s")
