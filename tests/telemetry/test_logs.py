"""Log lines: one per event, as text or JSON; job events are logged on both sides of a job."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from p2pnode.telemetry import logs
from tests.integration.swarm import swarm


def _record(msg: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            import sys

            info = sys.exc_info()
    return logging.LogRecord("p2pnode.jobs", logging.INFO, __file__, 1, msg, (), info)


def test_json_lines_are_one_object_per_line_with_the_traceback_inside() -> None:
    line = logs.JsonLines().format(_record("job ab: done\nreally", exc=True))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["msg"] == "job ab: done\nreally" and obj["level"] == "info" and obj["logger"] == "p2pnode.jobs"
    assert "ValueError" in obj["exc"] and obj["t"].endswith("Z")


def test_text_lines_escape_newlines_and_libp2p_stays_quiet() -> None:
    assert "\n" not in logs.OneLine("%(message)s").format(_record("a\nb", exc=True))
    logs.setup("info", "json")
    assert logging.getLogger("libp2p").getEffectiveLevel() == logging.CRITICAL
    assert isinstance(logging.getLogger().handlers[0].formatter, logs.JsonLines)
    logs.setup("debug")
    assert logging.getLogger("libp2p").getEffectiveLevel() == logging.DEBUG
    logs.setup("warning")


def test_library_info_lines_stay_out_at_every_level_but_debug(capsys: pytest.CaptureFixture[str]) -> None:
    import libp2p.network.auto_connector  # noqa: F401 - sets its own logger to INFO when imported

    chatty, failing = logging.getLogger("libp2p.network.auto_connector"), logging.getLogger("libp2p.network.swarm")
    try:
        for level, fmt in (("info", "json"), ("info", "text"), ("warning", "json"), ("error", "text")):
            logs.setup(level, fmt)
            chatty.info("Connections (0, in_flight=0) below target (100); initiating 100 new dials")
            failing.error("failed to dial 12D3KooW")
            logging.getLogger("p2pnode.node").error("ours")
            err = capsys.readouterr().err
            assert "initiating" not in err and "failed to dial" not in err, (level, fmt, err)
            assert err.count("\n") == 1 and "ours" in err
            if fmt == "json":
                assert json.loads(err)["msg"] == "ours"
        logs.setup("debug", "json")
        chatty.info("initiating 100 new dials")
        logging.getLogger("zeroconf").info("mdns chatter")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        assert [x["msg"] for x in lines] == ["initiating 100 new dials"]
    finally:
        logs.setup("warning")


async def test_both_sides_of_a_job_log_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p2pnode.jobs")
    async with swarm(2, workloads=["matmul"]) as nodes:
        requester, provider = (r.node for r in nodes)
        await requester.wait_until(lambda: provider.identity.peer_id in requester.table, timeout=20)
        rec = await requester.jobs.submit("matmul", {"m": 8, "n": 8, "k": 8, "dtype": "int8", "seed": 1},
                                          max_price=10**6, deadline_s=30)
        assert rec.state == "done"
        with trio.fail_after(5):
            while not any("as provider" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if rec.job[:8] in r.getMessage()]
    assert any(": bid " in m for m in lines)
    assert any("done as provider" in m and "paid" in m for m in lines)
    assert any("done as requester of matmul" in m for m in lines), lines




def test_a_taken_default_metrics_port_falls_back_and_a_chosen_one_is_an_error() -> None:
    import socket

    from p2pnode.errors import NetworkSetupError
    from p2pnode.telemetry.metrics import NodeMetrics

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    m = NodeMetrics()
    try:
        with pytest.raises(NetworkSetupError, match="--metrics"):
            m.serve(f"127.0.0.1:{port}")
        m.serve(f"127.0.0.1:{port}", any_port_if_taken=True)
        assert m.address.startswith("127.0.0.1:") and m.address != f"127.0.0.1:{port}"
    finally:
        m.close()
        holder.close()
