from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pnode.errors import LocalError, NetworkSetupError
from p2pnode.identity import KEY_FILE
from p2pnode.market.capacity_table import CapacityTable
from p2pnode.node import Node
from tests.integration.swarm import all_list_all, node_config, start_node, swarm
from tests.telemetry.test_probe import H100, fake_nvml

EXE = [sys.executable, "-m", "p2pnode"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")} | {"PYTHONUNBUFFERED": "1"}


async def test_five_node_swarm_converges() -> None:
    async with swarm(5, line=True) as nodes:  # a line: ads must be forwarded up to 4 hops
        t0 = time.perf_counter()
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        elapsed = time.perf_counter() - t0
        for r in nodes:
            entries = r.node.market_view()
            assert len(entries) == 5
            assert all(e["offers"][0]["wl"] == "matmul" for e in entries)
            assert all(e["speed"]["matmul_f32_numpy"] > 0 for e in entries)
            # nothing refused but, on a busy machine, an older ad of a provider heard after its newer one
            assert set(r.node.rejected) <= {"stale"}, r.node.rejected
        print(f"5-node line converged {elapsed * 1000:.0f} ms after the last start")


async def test_a_stopped_nodes_ad_expires() -> None:
    async with swarm(3, line=False, ad_interval=2.0, ad_ttl=3.0) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        gone = nodes[2]
        gone.stop()
        await gone.stopped.wait()
        pid = gone.node.identity.peer_id
        for r in nodes[:2]:
            await r.node.wait_until(lambda r=r: pid not in r.node.table, timeout=10)
        # the others keep refreshing each other
        assert nodes[1].node.identity.peer_id in nodes[0].node.table


async def test_identity_persists_across_restarts(data_dir: trio.Path) -> None:
    config = node_config(data_dir)
    async with trio.open_nursery() as nursery:
        first = await start_node(nursery, config)
        peer = first.node.peer_id
        first.stop()
        await first.stopped.wait()
        key = (data_dir / KEY_FILE).read_bytes()
        second = await start_node(nursery, config)
        assert second.node.peer_id == peer
        assert second.node.addrs()[0].endswith(peer)
        assert (data_dir / KEY_FILE).read_bytes() == key
        second.stop()


async def test_gpu_fields_from_nvml_reach_other_nodes() -> None:
    nv = fake_nvml([H100, dict(H100, name="NVIDIA H100 PCIe", util=5)])
    async with trio.open_nursery() as nursery:
        gpu = await start_node(nursery, node_config(), nvml=nv)
        cpu = await start_node(nursery, node_config(bootstrap=[gpu.node.addrs()[0]]))
        pid = gpu.node.identity.peer_id
        await cpu.node.wait_until(lambda: pid in cpu.node.table, timeout=15)
        ad = cpu.node.table.get(pid).ad  # type: ignore[union-attr]
        assert [g.name for g in ad.gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"]
        assert ad.gpus[0].memory_total == H100["total"] and ad.gpus[1].utilization == 5
        assert ad.gpus[0].compute_capability == "9.0" and ad.gpus[0].driver == "580.159.04"
        # the GPU is advertised, but the offer names what can really run here: without torch or
        # CuPy (as in CI, where only the NVML library is faked) that is NumPy
        from p2pnode.exec.backends import available

        assert ad.offers[0].backend == available()[0]
        if "cuda" not in available() and "cupy" not in available():
            assert ad.offers[0].backend == "numpy"
        # and the CPU-only node fell back to its CPU
        mine = cpu.node.table.get(cpu.node.identity.peer_id).ad  # type: ignore[union-attr]
        assert mine.gpus == () and mine.cpu.cores >= 1 and mine.offers[0].backend == "numpy"
        assert gpu.node.status_view()["gpus"] == ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"]
        nursery.cancel_scope.cancel()


async def test_port_in_use_is_a_clear_error() -> None:
    async with trio.open_nursery() as nursery:
        first = await start_node(nursery, node_config())
        port = first.node.addrs()[0].split("/")[4]
        with pytest.raises(NetworkSetupError, match=f"port {port} is in use"):
            await Node(node_config(listen=[f"/ip4/127.0.0.1/tcp/{port}"])).run()
        nursery.cancel_scope.cancel()


async def test_unreachable_bootstrap_is_retried_until_it_comes_up() -> None:
    import socket

    from p2pnode.identity import Identity

    with socket.socket() as s:  # a free port for the late peer
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    late = Identity.generate()
    boot = f"/ip4/127.0.0.1/tcp/{port}/p2p/{late.peer_id_b58}"
    async with trio.open_nursery() as nursery:
        waiting = await start_node(nursery, node_config(bootstrap=[boot]))
        await waiting.node.wait_until(lambda: boot in waiting.node.keeper.unreachable, timeout=10)  # type: ignore[union-attr]
        status = waiting.node.status_view()
        assert status["state"] == "issues"
        assert any("bootstrap peer unreachable" in r for r in status["reasons"])
        late_node = Node(node_config(listen=[f"/ip4/127.0.0.1/tcp/{port}"]), identity=late)
        await nursery.start(late_node.run)
        await waiting.node.wait_until(
            lambda: late_node.identity.peer_id in waiting.node.table, timeout=20)
        assert boot not in waiting.node.keeper.unreachable  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_lost_bootstrap_peer_is_redialed() -> None:
    async with trio.open_nursery() as nursery:
        hub = await start_node(nursery, node_config())
        spoke = await start_node(nursery, node_config(bootstrap=[hub.node.addrs()[0]]))
        hub_id = hub.node.host.get_id()
        with trio.fail_after(10):
            while hub_id not in spoke.node.host.get_network().connections:
                await trio.sleep(0.05)
        await spoke.node.host.disconnect(hub_id)
        with trio.fail_after(15):
            while hub_id not in spoke.node.host.get_network().connections:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_no_valid_ad_is_dropped_at_the_highest_rate_allowed() -> None:
    """A provider's whole burst budget, published back to back, reaches two hops away intact."""
    async with swarm(3, line=True, ad_interval=60.0, ad_ttl=120.0) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        src, mid, far = (r.node for r in nodes)
        # what is left of src's budget at both hops (start-up ads and market syncs spent part of it,
        # more of it on a busy machine, where start-up takes longer)
        burst = int(min(n.table._rates.available(src.identity.peer_id, n._clock()) for n in (mid, far)))
        assert burst >= src.table.limits.rate_burst / 2
        accepted_before = far.metrics.ads_accepted._value.get()
        first = far.table.get(src.identity.peer_id).ad.seq  # type: ignore[union-attr]
        for _ in range(burst):
            await src.publish_ad()
        try:
            await far.wait_until(
                lambda: far.metrics.ads_accepted._value.get() - accepted_before >= burst, timeout=15)
        except trio.TooSlowError:  # say what became of the rest
            raise AssertionError(f"{far.metrics.ads_accepted._value.get() - accepted_before} of {burst} ads arrived; "
                                 f"refused by the middle: {mid.rejected}, by the far end: {far.rejected}") from None
        assert far.table.get(src.identity.peer_id).ad.seq > first  # type: ignore[union-attr]
        # none refused; an older ad that gossip offers after a sync brought a newer one is stale, and
        # superseded, not lost
        assert set(far.rejected) <= {"stale"} and set(nodes[1].node.rejected) <= {"stale"}


async def test_market_sync_hands_over_the_whole_table_in_one_exchange() -> None:
    # ads every 120 s: within this test, a table refills only through market sync
    async with swarm(4, line=False, ad_interval=120.0, ad_ttl=300.0) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        x, y = nodes[3].node, nodes[0].node
        fresh = CapacityTable(x.table.limits)  # as a newcomer's: empty, no history of anyone's ads
        x.table._entries, x.table._high_water, x.table._rates = fresh._entries, fresh._high_water, fresh._rates
        taken = await x.market.sync_from(y.identity.peer_id)
        # every other provider's ad, y's own among them, never x's own (an ad that gossip brought
        # in the meantime is already held, and not taken twice)
        others = {r.node.identity.peer_id for r in nodes[:3]}
        assert {e.ad.peer_id for e in x.table.entries(x._clock())} == others
        assert 1 <= taken <= 3 and x.market.synced >= taken


async def test_a_market_sync_with_forged_ads_costs_its_sender() -> None:
    from p2pnode.net.framing import FramedStream
    from p2pnode.wire import codec
    from p2pnode.wire.names import MARKET_PROTOCOL

    async with swarm(2, line=False, ad_interval=120.0, ad_ttl=300.0) as nodes:
        a, b = (r.node for r in nodes)
        await a.wait_until(lambda: b.identity.peer_id in a.table, timeout=15)
        good = next(e.raw for e in b.table.entries(b._clock()) if e.ad.peer_id == b.identity.peer_id)
        forged = bytearray(good)
        forged[-5] ^= 0xFF  # a flipped bit in the signed body

        async def liar(stream: Any) -> None:
            fs = FramedStream(stream, max_frame=1 << 20)
            await fs.send(codec.encode([bytes(forged), good]))
            await fs.close()

        b.host.set_stream_handler(MARKET_PROTOCOL, liar)
        before = a.penalties.score(b.identity.peer_id, a._clock())
        taken = await a.market.sync_from(b.identity.peer_id)
        assert taken == 0  # the forged ad is refused; the good one is already held (stale, no offence)
        assert a.penalties.score(b.identity.peer_id, a._clock()) > before
        assert sum(a.market.rejected.values()) >= 1  # the forged one, counted


# the swarm commands: logs, up's hint, down -------------------------------------------------------
def _fake_swarm(folder: Path, logs: dict[int, str], *, status: str = "up", pid: int = 0,
                node_pids: dict[int, int] | None = None) -> None:
    """A ``swarm.json`` as ``swarm up`` leaves it, for nodes ``logs`` (index -> log file name)."""
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    nodes = [{"index": i, "peer": f"peer{i}", "addr": f"/ip4/127.77.0.{i + 1}/tcp/1", "data_dir": str(folder / f"node{i}"),
              "log": str(folder / "logs" / name), "pid": (node_pids or {}).get(i, 0)} for i, name in logs.items()]
    (folder / "swarm.json").write_text(json.dumps({"pid": pid, "status": status, "nodes": nodes}))


def test_swarm_logs_print_whole_lines_and_each_host_log_once(tmp_path: Path) -> None:
    long = "x" * 300  # a traceback's line, a multiaddr: wider than any terminal
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "host0.log").write_text("".join(f"line {i}\n" for i in range(30)) + long + "\n")
    (tmp_path / "logs" / "host1.log").write_text("one\ntwo\n")
    _fake_swarm(tmp_path, {0: "host0.log", 1: "host1.log", 2: "host0.log"})  # in-process: hosts share logs
    out = subprocess.run([*EXE, "swarm", "logs", "--dir", str(tmp_path)], capture_output=True, text=True,
                         env=ENV | {"COLUMNS": "80"}, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"==> nodes 0, 2 ({tmp_path}/logs/host0.log) <=="
    assert lines[1:11] == [f"line {i}" for i in range(21, 30)] + [long]  # the last 10, the long one whole
    assert lines[11:] == [f"==> node 1 ({tmp_path}/logs/host1.log) <==", "one", "two"]
    tail = subprocess.run([*EXE, "swarm", "logs", "--dir", str(tmp_path), "--node", "1", "--tail", "1"],
                          capture_output=True, text=True, env=ENV, timeout=60, check=False)
    assert tail.stdout.splitlines() == [f"==> node 1 ({tmp_path}/logs/host1.log) <==", "two"]


def test_swarm_logs_follow_prints_new_lines_until_ctrl_c(tmp_path: Path) -> None:
    import queue
    import threading

    log = tmp_path / "logs" / "node0.log"
    _fake_swarm(tmp_path, {0: "node0.log", 1: "node1.log"})
    log.write_text("old\n")
    # started with SIGINT ignored, as a script's background job starts it (and as CI may): Ctrl-C
    # (SIGINT) still stops it
    proc = subprocess.Popen(["bash", "-c", 'trap "" INT; exec "$@"', "-", *EXE, "swarm", "logs", "-f", "--dir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None

    def pump() -> None:
        for line in stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    said: list[str] = []  # stderr, read as it comes (a full pipe would stall the child)
    stderr = proc.stderr
    assert stderr is not None
    reader = threading.Thread(target=lambda: said.extend(stderr), daemon=True)
    reader.start()

    def expect(line: str) -> None:
        while lines.get(timeout=30) != line:
            pass

    try:
        expect(f"==> node 1 ({tmp_path}/logs/node1.log) <==")  # the tails are out: following now
        with log.open("a") as f:
            f.write("new, half a li")
            f.flush()
            f.write("ne\n")
        expect(f"==> node 0 ({log}) <==")
        expect("new, half a line")
        (tmp_path / "logs" / "node1.log").write_text("node 1 starts\n")  # a log that appears later
        expect(f"==> node 1 ({tmp_path}/logs/node1.log) <==")
        expect("node 1 starts")
    finally:
        proc.send_signal(signal.SIGINT)
        # stdout is the pump thread's alone: communicate() would read it too, racing the pump
        try:
            proc.wait(timeout=30)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
    reader.join(timeout=30)
    err = "".join(said)
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_an_in_process_nodes_log_is_its_hosts(tmp_path: Path) -> None:
    from p2pnode.swarm.inproc import InProcessLauncher
    from p2pnode.swarm.launcher import NodeSpec

    launcher = InProcessLauncher(tmp_path, hosts=2, share_calibration=False)
    try:
        node = launcher._spawn(NodeSpec(3, "provider", "127.0.0.1", ["--price", "-1"]), [])  # fails at once
        assert node.ready.wait(60) and not node.alive
    finally:
        launcher.stop_all()
    assert node.log == tmp_path / "logs" / "host1.log"  # node 3 of 2 hosts runs on host 1
    assert "node 3 failed" in node.log.read_text() and "price: -1 is outside" in node.log.read_text()


def test_swarm_up_names_the_folder_in_its_hints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from p2pnode.swarm import background

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert "--dir" not in background.next_steps(background.default_dir())
    other = tmp_path / "my swarm"
    hints = background.next_steps(other)
    for action in ("status", "logs", "down"):
        assert f"`p2pnode swarm {action} --dir '{other}'`" in hints
    _fake_swarm(other, {0: "node0.log"}, status="up")
    with pytest.raises(LocalError, match=re.escape(f"p2pnode swarm down --dir '{other}'")):
        background.up(other, 1, "", console=None, timeout=1)  # the supervisor "alive": this test's pid


def test_swarm_down_twice_says_nothing_was_running(tmp_path: Path) -> None:
    from io import StringIO

    from p2pnode.swarm import background

    bystander = subprocess.Popen(["sleep", "60"])  # holds the pid the stopped supervisor had
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        _fake_swarm(tmp_path, {0: "node0.log", 1: "node1.log"}, status="down", pid=bystander.pid)
        for state in ("down", "up"):  # cleanly stopped; or its supervisor killed, its nodes gone
            if state == "up":
                _fake_swarm(tmp_path, {0: "node0.log", 1: "node1.log"}, status="up", pid=gone.pid,
                            node_pids={0: gone.pid, 1: gone.pid})
            printed = StringIO()
            with contextlib.redirect_stdout(printed):
                assert background.down(tmp_path, console=None) == 0
            assert printed.getvalue() == f"no swarm is running in {tmp_path}: nothing to stop\n"
        assert bystander.poll() is None  # never signalled
    finally:
        bystander.kill()
        bystander.wait()
