"""The ``p2pnode`` command against real node processes."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from p2pnode.identity import KEY_FILE

EXE = [sys.executable, "-m", "p2pnode"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")} | {"PYTHONUNBUFFERED": "1"}


class NodeProcess:
    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [*EXE, "run", "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0",
             "--no-mdns", "--metrics", "127.0.0.1:0", "--ad-interval", "2", "--ad-ttl", "6", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.addrs = [self.expect("listening on ").split()[-1]]
        self.metrics = self.expect("metrics on ").split()[-1]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line; output so far:\n{''.join(self.output)}") from None
            if line.startswith(prefix):
                return line.strip()

    def expect_containing(self, text: str, timeout: float = 30.0) -> str:
        for line in self.output:
            if text in line:
                return line
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line with {text!r}; output so far:\n{''.join(self.output)}") from None
            if text in line:
                return line

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*EXE, *args, "--data-dir", str(self.data_dir)],
                              capture_output=True, text=True, env=ENV, timeout=60)

    def json(self, command: str) -> object:
        out = self.cli(command, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@contextmanager
def running(data_dir: Path, *args: str) -> Iterator[NodeProcess]:
    node = NodeProcess(data_dir, *args)
    try:
        yield node
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


def wait_for(node: NodeProcess, what: str, count: int, timeout: float = 30.0) -> None:
    """Let the node itself wait (on its change events) until ``what`` reaches ``count``."""
    from p2pnode.control.client import call

    call(node.data_dir / "control.sock", "wait", timeout=timeout + 5, what=what, count=count, timeout_s=timeout)


def test_run_read_commands_metrics_and_clean_shutdown(data_dir: Path) -> None:
    other = Path(f"{data_dir}-b")
    try:
        with running(data_dir) as a:
            with running(other, "--bootstrap", a.addrs[0]) as b:
                b_id = b.json("id")["peer"]
                wait_for(a, "peers", 1)
                peers = a.json("peers")
                assert peers[0]["peer"] == b_id and peers[0]["penalty"] == 0
                wait_for(a, "market", 2)
                market = a.json("market")
                assert {m["peer"] for m in market} == {a.json("id")["peer"], b_id}
                assert all(m["offers"][0]["wl"] == "matmul" for m in market)
                status = a.json("status")
                assert status["peers"] == 1
                assert status["state"] in ("healthy", "issues")
                assert not any(r.startswith("no peers") for r in status["reasons"])
                assert status["market"] == 2 and status["ads_published"] >= 1
                ident = a.json("id")
                assert ident["running"] and ident["addrs"] == a.addrs
                human = a.cli("market")
                assert human.returncode == 0 and "matmul" in human.stdout
                human = a.cli("status")
                assert status["state"].upper() in human.stdout
                assert a.cli("peers").stdout.count(b_id) == 1
                with urllib.request.urlopen(f"{a.metrics}", timeout=10) as r:  # loopback only
                    text = r.read().decode()
                assert "p2pnode_peers 1.0" in text
                assert "p2pnode_ads_accepted_total" in text and "p2pnode_ad_propagation_seconds_count" in text
                # a job from the command line, with input arrays from files
                import numpy as np

                rng = np.random.default_rng(0)
                np.save(data_dir / "a.npy", rng.integers(-128, 128, size=(16, 24), dtype=np.int8))
                np.save(data_dir / "b.npy", rng.integers(-128, 128, size=(24, 8), dtype=np.int8))
                job = a.cli("submit", "matmul", "-p", "m=16", "-p", "n=8", "-p", "k=24", "-p", "dtype=int8",
                            "-p", "inputs=blob", "-i", f"a={data_dir / 'a.npy'}", "-i", f"b={data_dir / 'b.npy'}",
                            "-o", str(data_dir / "c.npy"), "--json")
                assert job.returncode == 0, job.stderr
                result = json.loads(job.stdout)
                assert result["state"] == "done" and result["peer"] == b_id
                assert result["outcome"].startswith("verified (Freivalds")
                want = np.load(data_dir / "a.npy").astype(np.int32) @ np.load(data_dir / "b.npy").astype(np.int32)
                assert np.array_equal(np.load(data_dir / "c.npy"), want)  # -o saved the verified product
                assert result["output"]["c"]["sample"] == want.reshape(-1)[:6].tolist()  # integers, not floats
                assert all(isinstance(x, int) for x in result["output"]["c"]["sample"])
                human = a.cli("submit", "train_step", "-p", "steps=20")
                assert human.returncode == 0 and "DONE" in human.stdout and "loss:" in human.stdout
                jobs = a.json("jobs")
                assert [j["state"] for j in jobs[:2]] == ["done", "done"]
                bad = a.cli("submit", "nope")
                assert bad.returncode == 1 and bad.stderr.startswith("p2pnode: error: unknown workload")
                assert b.stop() == 0
            assert a.stop() == 0
        assert any("shutting down" in line for line in a.output)
        assert not (data_dir / "control.sock").exists()
        assert "Traceback" not in "".join(a.output + b.output)
    finally:
        import shutil

        shutil.rmtree(other, ignore_errors=True)


def test_id_works_without_a_running_node(data_dir: Path) -> None:
    out = subprocess.run([*EXE, "id", "--json", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 0
    result = json.loads(out.stdout)
    assert result["running"] is False and result["peer"].startswith("12D3KooW")
    assert (data_dir / KEY_FILE).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["--listen", "/ip4/999.1.1.1/tcp/1"], "bad multiaddr"),
        (None, ["--listen", "/ip4/127.0.0.1/udp/1"], "only TCP"),
        (None, ["--bootstrap", "/ip4/127.0.0.1/tcp/1"], "needs a /p2p/"),
        ("key", [], "not a libp2p private key"),
        ("config", [], "not valid TOML"),
        (None, ["--price", "-5"], "price must not be negative"),
        ("port", [], "is in use"),
    ],
)
def test_bad_input_gives_one_clear_line(data_dir: Path, setup: str | None, args: list[str], message: str) -> None:
    listener = None
    listen = ["--listen", "/ip4/127.0.0.1/tcp/0"]
    if setup == "key":
        (data_dir / KEY_FILE).write_bytes(b"not a key")
        (data_dir / KEY_FILE).chmod(0o600)
    elif setup == "config":
        (data_dir / "config.toml").write_text("listen = [\n")
    elif setup == "port":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listen = ["--listen", f"/ip4/127.0.0.1/tcp/{listener.getsockname()[1]}"]
    try:
        out = subprocess.run(
            [*EXE, "run", "--data-dir", str(data_dir), "--no-mdns", "--metrics", "", *listen, *args],
            capture_output=True, text=True, env=ENV, timeout=60,
        )
    finally:
        if listener is not None:
            listener.close()
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pnode: error:"), out.stderr
    assert message in lines[0]
    assert "Traceback" not in out.stdout + out.stderr
    if setup == "key":
        assert (data_dir / KEY_FILE).read_bytes() == b"not a key"  # never overwritten


def test_read_command_without_a_node(data_dir: Path) -> None:
    out = subprocess.run([*EXE, "status", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == f"p2pnode: error: no node is running with data dir {data_dir} (no control.sock)"


def test_unreachable_bootstrap_warns_and_keeps_running(data_dir: Path) -> None:
    from p2pnode.identity import Identity

    boot = f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{Identity.generate().peer_id_b58}"
    with running(data_dir, "--bootstrap", boot) as node:
        node.expect_containing("unreachable", timeout=30)  # the node's own warning, as it is printed
        status = node.json("status")
        assert status["state"] == "issues"
        assert any(r.startswith(f"bootstrap peer unreachable: {boot}") for r in status["reasons"])
        assert node.proc.poll() is None
        assert node.stop() == 0


def test_control_socket_is_private(data_dir: Path) -> None:
    with running(data_dir) as node:
        mode = (data_dir / "control.sock").stat().st_mode & 0o777
        assert mode == 0o600
        assert (data_dir.stat().st_mode & 0o077) == 0
        assert node.stop() == 0


def test_swarm_launcher_converges_catches_its_cheater_and_leaves_no_process() -> None:
    out = subprocess.run([*EXE, "swarm", "--nodes", "4", "--json", "--timeout", "60", "--cheat", "garbage"],
                         capture_output=True, text=True, env=ENV, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["converged"] and result["clean_exit"] and result["nodes"] == 4
    assert result["propagation"]["ads_measured"] > 0
    assert [j["state"] for j in result["jobs"]] == ["done"] * 6
    assert result["jobs"][0]["outcome"].startswith("verified (Freivalds")
    # the requester checks everything: each infer and train_step result was re-run elsewhere
    reruns = [j for j in result["jobs"] if j["workload"] != "matmul"]
    assert reruns and all(j["outcome"].startswith(("verified: agrees with an independent run",
                                                   "verified by a referee")) for j in reruns), reruns
    # the cheater (node 1) is caught by its calibration job and ranked last
    last = result["reputation"][-1]
    assert last["distrusted"] and last["cheats"] >= 1
    assert all(j["provider"] != last["peer"] for j in result["jobs"])
    leftovers = subprocess.run(["pgrep", "-f", "p2pswarm-"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


@pytest.mark.parametrize(("args", "status", "message"), [
    (["run", "--ad-ttl", "nan"], 2, "'nan' is not a finite number"),
    (["submit", "matmul", "--deadline", "inf"], 2, "'inf' is not a finite number"),
    (["submit", "matmul", "-p", "m=inf", "-p", "n=4", "-p", "k=4"], 1, "'inf' is not a finite number"),
    (["submit", "matmul", "-p", "m=1e400"], 1, "not a finite number"),
])
def test_non_finite_numbers_give_one_clear_line(data_dir: Path, args: list[str], status: int, message: str) -> None:
    out = subprocess.run([*EXE, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, env=ENV,
                         timeout=60)
    assert out.returncode == status
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pnode: error:") and message in lines[0], out.stderr


def test_a_caller_whose_uid_cannot_be_read_is_refused(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trio

    from p2pnode.control import server
    from p2pnode.control.client import call
    from p2pnode.errors import ControlError

    monkeypatch.setattr(server, "_peer_uid", lambda sock: None)

    async def main() -> None:
        listener = await server.bind_control_socket(data_dir / "control.sock")
        handled: list[object] = []

        async def handler(request: dict[str, object], emit: object) -> object:
            handled.append(request)
            return "secret"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, listener, handler)
            with pytest.raises(ControlError, match="permission denied"):
                await trio.to_thread.run_sync(lambda: call(data_dir / "control.sock", "status"))
            assert handled == []
            nursery.cancel_scope.cancel()

    trio.run(main)
