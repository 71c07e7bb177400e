"""The ``p2pnode`` command against real node processes."""

from __future__ import annotations

import json
import os
import queue
import re
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
    def __init__(self, data_dir: Path, *args: str, listen: str = "/ip4/127.0.0.1/tcp/0") -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [*EXE, "run", "--data-dir", str(data_dir), "--listen", listen,
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
        (None, ["--price", "-5"], "price: -5 is outside [0, 10^12]"),
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
    # the digits trained across the swarm: the weights of training locally with the same seeds
    train = result["train"]
    assert train["state"] == "done" and train["equal_to_local"] and train["losses"][-1] < train["losses"][0]
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


def test_control_requests_with_bad_numbers_are_refused_in_one_line(data_dir: Path) -> None:
    from p2pnode.control.client import call
    from p2pnode.errors import ControlError

    bad = [
        ("wait", {"what": "peers", "count": 1, "timeout_s": float("nan")}, "request holds NaN: numbers must be finite"),
        ("wait", {"what": "peers", "count": 1, "timeout_s": float("-inf")}, "request holds -Infinity"),
        ("wait", {"what": "peers", "count": 1, "timeout_s": 1e9}, "timeout_s must be between 0 and 300, not 1e+09"),
        ("wait", {"what": "peers", "count": 1, "timeout_s": -1}, "timeout_s must be between 0 and 300, not -1"),
        ("wait", {"what": "peers", "count": "one"}, "count must be a whole number, not 'one'"),
        ("wait", {"what": "peers", "count": True}, "count must be a whole number, not True"),
        ("submit", {"workload": "matmul", "max_price": 1e30}, "max_price must be a whole number, not 1e+30"),
        ("submit", {"workload": "matmul", "max_price": 10, "deadline": 1e300}, "deadline must be between"),
        ("map", {"model": "m.onnx", "input": "x.npy", "max_price": 10, "providers": 0}, "providers must be between"),
    ]
    with running(data_dir, "--no-provide") as node:
        for cmd, fields, message in bad:
            with pytest.raises(ControlError) as refused:
                call(data_dir / "control.sock", cmd, **fields)
            assert str(refused.value).startswith(message), (cmd, fields)
        assert node.json("status")["state"] in ("healthy", "issues")  # it goes on answering
        assert node.stop() == 0
    assert "Traceback" not in "".join(node.output) and "internal error" not in "".join(node.output)


def test_json_logs_stay_one_object_per_line_through_a_terminals_ctrl_c(data_dir: Path) -> None:
    """Ctrl-C at a terminal signals the node's whole process group (its workers too): standard
    output and error together must still be JSON objects, one per line, and no traceback."""
    proc = subprocess.Popen(
        [*EXE, "run", "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--metrics", "",
         "--log-format", "json", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    assert proc.stdout is not None
    try:
        lines = []
        for line in proc.stdout:  # up to the node's "listening on": its workers are running by then
            lines.append(line)
            if "listening on" in line:
                break
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        lines += out.splitlines(keepends=True)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    objects = [json.loads(line) for line in lines]  # every line parses
    messages = [o["msg"] for o in objects]
    assert any(m.startswith("listening on /ip4/127.0.0.1/") for m in messages)
    assert "received SIGINT, shutting down" in messages
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in lines)


LIVE = ("starting", "collecting", "running", "verifying")  # a requester's job that has not ended


def _requester_and_provider(data_dir: Path) -> tuple[NodeProcess, NodeProcess]:
    from p2pnode.control.client import call

    provider = NodeProcess(Path(f"{data_dir}-p"))
    requester = NodeProcess(data_dir, "--no-provide", "--bootstrap", provider.addrs[0])
    call(data_dir / "control.sock", "wait", timeout=40, what="offers", count=1, timeout_s=30)
    return requester, provider


def _stop_all(*nodes: NodeProcess) -> None:
    import shutil

    for node in nodes:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
        if node.data_dir.name.endswith("-p"):
            shutil.rmtree(node.data_dir, ignore_errors=True)


def test_ctrl_c_stops_a_map_in_the_node_says_what_it_paid_and_one_map_runs_once(data_dir: Path) -> None:
    """Ctrl-C on `submit map` cancels the map inside the node (its jobs at the provider too) and the
    client prints what was paid; a second run of the same map meanwhile is refused in one line;
    `p2pnode cancel` stops a rerun the same way, which then resumes the kept shards."""
    import numpy as np

    from p2pnode import models
    from p2pnode.control.client import call
    from p2pnode.exec import model_jobs, onnx_model

    rows, shard = 2400, 40  # 60 shards: the map is still running when the client is stopped
    job = model_jobs.prepare(models.cnn(channels=16), {"": models.images(rows, seed=4)})
    raw, _ = onnx_model.unpack(job.blob)
    (data_dir / "m.onnx").write_bytes(raw)
    np.save(data_dir / "x.npy", job.arrays["image"])
    submit = [*EXE, "submit", "map", "--model", str(data_dir / "m.onnx"), "--input", str(data_dir / "x.npy"),
              "--output", str(data_dir / "out.npy"), "--shard-rows", str(shard), "--providers", "1",
              "--data-dir", str(data_dir)]
    requester, provider = _requester_and_provider(data_dir)
    sock = data_dir / "control.sock"
    try:
        first = subprocess.Popen(submit, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        call(sock, "wait", timeout=70, what="shards", count=2, timeout_s=60)
        second = subprocess.run(submit, capture_output=True, text=True, env=ENV, timeout=60, check=False)
        assert second.returncode == 1
        assert re.fullmatch(r"p2pnode: error: map (\w+) is already running, started \d+ s ago: wait for it, or stop "
                            r"it with `p2pnode cancel \1`\n", second.stderr), second.stderr
        assert first.poll() is None
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130, err
        stopped = re.search(r"p2pnode: stopped: map (\w+) cancelled \(its client went away\): (\d+) of 60 shards "
                            r"done and kept, paid (\d+) µcr \(job \d+\); the same command resumes it", err)
        assert stopped, err
        map_id, kept, paid = stopped.group(1), int(stopped.group(2)), int(stopped.group(3))
        assert 2 <= kept < 60
        jobs = requester.json("jobs")
        (the_map,) = [j for j in jobs if j["workload"] == "map"]
        assert the_map["job"] == map_id and the_map["state"] == "cancelled" and the_map["price"] == paid
        assert not [j for j in jobs if j["state"] in LIVE], jobs  # no job of the map left running here
        shards = [j for j in jobs if j["workload"] == "onnx" and j["state"] == "done"]
        assert paid == sum(j["price"] for j in shards) > 0 and len(shards) >= kept
        call(provider.data_dir / "control.sock", "wait", timeout=40, what="busy", count=0, timeout_s=30)
        # `p2pnode cancel` stops a rerun, which resumed the kept shards
        third = subprocess.Popen([*submit, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=ENV)
        call(sock, "wait", timeout=70, what="shards", count=kept + 2, timeout_s=60)
        cancelled = requester.cli("cancel", map_id[:8])
        assert cancelled.returncode == 0, cancelled.stderr
        assert re.fullmatch(rf"cancelled: map {map_id}; paid \d+ µcr \(job \d+\)\n", cancelled.stdout), cancelled.stdout
        _, err = third.communicate(timeout=60)
        assert third.returncode == 1 and f"map {map_id} cancelled (by p2pnode cancel)" in err, err
        assert requester.cli("cancel", map_id[:8]).stderr.startswith("p2pnode: error: nothing running has an id")
        assert "Traceback" not in "".join(requester.output + provider.output)
    finally:
        _stop_all(requester, provider)


def test_a_client_that_goes_away_cancels_its_job_at_the_provider(data_dir: Path) -> None:
    """`submit WORKLOAD` stopped by Ctrl-C while its provider computes: the job is cancelled there."""
    requester, provider = _requester_and_provider(data_dir)
    try:
        client = subprocess.Popen([*EXE, "submit", "train_step", "-p", "steps=1000", "-p", "batch=1024", "-p", "d_in=256",
                                   "-p", "d_hidden=640", "--deadline", "300", "--max-price", str(10**9),
                                   "--data-dir", str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=ENV)
        assert client.stdout is not None
        for line in client.stdout:  # the human output, as it comes
            if "award to" in line:
                break
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=60)
        assert client.returncode == 130
        # what it paid: the calibration of the provider, met for the first time (the job itself: nothing)
        assert re.search(r"p2pnode: stopped: job \w{16} cancelled: its client went away; paid \d+ µcr "
                         r"\(calibration \d+\)\n", err), err
        (job,) = [j for j in requester.json("jobs") if j["workload"] == "train_step"]
        assert job["state"] == "cancelled" and job["outcome"] == "cancelled: its client went away"
        from p2pnode.control.client import call

        call(provider.data_dir / "control.sock", "wait", timeout=40, what="busy", count=0, timeout_s=30)
        (done,) = [j for j in provider.json("jobs") if j["job"] == job["job"]]
        assert done["state"] == "cancelled"
    finally:
        _stop_all(requester, provider)


@pytest.mark.parametrize(("args", "status", "message"), [
    (["submit", "matmul", "--max-price", "0"], 2,
     "argument --max-price: 0: a job pays at least 1 µcr (every provider charges at least 1 for a job)"),
    (["submit", "matmul", "-p", "m=4", "-p", "n=4", "-p", "k=4", "-o", "/nonexistent-dir/c.npy"], 1,
     "--output /nonexistent-dir/c.npy: the folder /nonexistent-dir does not exist"),
    (["submit", "map", "--model", "m.onnx", "--input", "x.npy", "-o", "/nonexistent-dir/y.npy"], 1,
     "the folder /nonexistent-dir does not exist"),
    (["submit", "infer", "--model", "m.onnx", "--input", "x.npy", "--verify", "freivalds"], 1,
     "--verify freivalds checks matrix products (matmul) only"),
    (["submit", "generate", "--model", "."], 1, "generate needs --model (a folder with model.onnx and tokenizer.json)"),
    (["submit", "generate", "--model", ".", "--prompts", "p.txt"], 1, "no such file: p.txt"),
])
def test_bad_submit_options_are_refused_before_anything_is_sent(data_dir: Path, args: list[str], status: int,
                                                                 message: str) -> None:
    """No node runs here: each is refused by the command itself, before it would ask one."""
    out = subprocess.run([*EXE, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, env=ENV,
                         timeout=60, cwd=data_dir, check=False)
    assert out.returncode == status
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pnode: error:") and message in lines[0], out.stderr
