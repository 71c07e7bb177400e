"""The dashboard's panels over a real ledger and a hardware reading."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from nacl.signing import SigningKey

from p2pnode.control import panels
from p2pnode.ledger.store import FILE_NAME, Ledger
from p2pnode.telemetry.probe import Hardware
from p2pnode.wire.capacity_ad import CpuInfo, GpuInfo

KEY = SigningKey(bytes(range(32)))


def _ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / FILE_NAME, KEY)


def test_credit_history_is_cumulative_and_reads_only_what_is_new(tmp_path: Path) -> None:
    history = panels.CreditHistory()
    with _ledger(tmp_path) as ledger:
        peer = ledger.owner
        assert history.update(ledger)["t"] == []
        for i, amount in enumerate((100, -40, 25)):
            ledger.append("credit", {"job": bytes([i]) * 16, "amount": amount}, peer=peer)
            ledger.append("penalty", {"code": "x"}, peer=peer)  # not credits: not in the series
        first = history.update(ledger)
        assert first["given"] == [100, 100, 125] and first["received"] == [0, 40, 40]
        assert first["total"] == {"given": 125, "received": 40}
        assert len(first["t"]) == 3 and first["t"] == sorted(first["t"])
        ledger.append("credit", {"job": b"\x09" * 16, "amount": -10}, peer=peer)
        second = history.update(ledger)
        assert second["received"][-1] == 50 and len(second["t"]) == 4  # the old points were not read again
        assert history.next_seq == ledger.count


def test_a_long_history_is_thinned_but_keeps_its_last_point(tmp_path: Path) -> None:
    history = panels.CreditHistory()
    with _ledger(tmp_path) as ledger:
        for i in range(2 * panels.MAX_HISTORY_POINTS + 10):
            ledger.append("credit", {"job": i.to_bytes(16, "big"), "amount": 1}, peer=ledger.owner)
        h = history.update(ledger)
        assert history.next_seq == ledger.count
    assert len(h["t"]) <= panels.MAX_HISTORY_POINTS + 2
    assert h["given"][-1] == 2 * panels.MAX_HISTORY_POINTS + 10 == h["total"]["given"]


def test_the_ledger_tail_is_newest_first_bounded_and_cut_short(tmp_path: Path) -> None:
    with _ledger(tmp_path) as ledger:
        for i in range(40):
            ledger.append("penalty", {"code": f"c{i}" + "x" * 240}, peer=ledger.owner)
        tail = panels.ledger_tail(ledger, 10)
        assert tail["count"] == 41
        assert [e["seq"] for e in tail["entries"]] == list(range(40, 30, -1))
        assert all(len(e["data"]["code"]) <= panels.MAX_DATA_TEXT + 1 for e in tail["entries"])
        assert len(panels.ledger_tail(ledger, 10**9)["entries"]) == 41
        assert panels.ledger_tail(ledger, -5)["entries"] == []
    assert panels.ledger_tail(None, 10) == {"entries": [], "count": 0}


def test_gpus_show_memory_use_and_slots_in_use() -> None:
    hw = Hardware(CpuInfo("EPYC", 16, 64 << 30, 32 << 30),
                  (GpuInfo(0, "NVIDIA H200", 141 << 30, 100 << 30, 37, "9.0", "570"),
                   GpuInfo(1, "NVIDIA H200", 141 << 30, 141 << 30, 0, "9.0", "570")))
    executor = SimpleNamespace(busy={0: 2, 1: 0}, slots_per_device=2, slots=4, running=2)
    view = panels.gpus(hw, executor, ("matmul", "onnx"), 120, False)
    assert [(g["index"], g["busy"], g["slots"], g["util"]) for g in view["gpus"]] == [(0, 2, 2, 37), (1, 0, 2, 0)]
    assert view["offered"] == ["matmul", "onnx"] and view["price"] == 120 and view["running"] == 2
    cpu_only = panels.gpus(Hardware(hw.cpu, ()), SimpleNamespace(busy={None: 1}, slots_per_device=1, slots=1,
                                                                  running=1), (), 100, True)
    assert cpu_only["cpu"]["busy"] == 1 and cpu_only["cpu"]["slots"] == 1 and cpu_only["paused"]
    assert panels.gpus(None, None, (), 100, False)["cpu"] is None


def test_a_long_ledger_is_read_a_bounded_share_per_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(panels, "SCAN_PER_UPDATE", 10)
    history = panels.CreditHistory()
    with _ledger(tmp_path) as ledger:
        for i in range(25):
            ledger.append("credit", {"job": i.to_bytes(16, "big"), "amount": 2}, peer=ledger.owner)
        assert history.update(ledger)["total"]["given"] == 2 * 9  # entries 0..9: the genesis and 9 credits
        assert history.update(ledger)["total"]["given"] == 2 * 19
        assert history.update(ledger)["total"]["given"] == 2 * 25 and history.next_seq == ledger.count == 26
