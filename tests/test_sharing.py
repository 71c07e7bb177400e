"""What a volunteer shares: sizes, the time-of-day schedule, and the offered hardware."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.config import load
from p2pnode.errors import ConfigError
from p2pnode.sharing import Schedule, parse_size
from p2pnode.telemetry.probe import Hardware, offered
from p2pnode.wire.capacity_ad import CpuInfo, GpuInfo

MON = datetime(2026, 11, 23)  # a Monday


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return MON.replace(day=23 + day, hour=hour, minute=minute)


def test_sizes() -> None:
    assert parse_size("20G") == 20 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("1.5g") == 3 << 29
    assert parse_size("4096") == 4096
    for bad in ("", "G", "-1G", "20X", "0"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_an_overnight_window_runs_past_midnight() -> None:
    s = Schedule.parse(["18:00-08:00"])
    assert s.is_open(at(0, 18)) and s.is_open(at(0, 23, 59)) and s.is_open(at(1, 7, 59))
    assert not s.is_open(at(0, 8)) and not s.is_open(at(0, 17, 59)) and not s.is_open(at(0, 12))
    assert s.next_change(at(0, 12)) == at(0, 18)
    assert s.next_change(at(0, 20)) == at(1, 8)


def test_days_name_where_a_window_starts() -> None:
    s = Schedule.parse(["mon-fri 19:00-07:00", "sat,sun 00:00-24:00"])
    assert s.is_open(at(4, 23))  # Friday night
    assert s.is_open(at(5, 3))  # Saturday: both the Friday night and the weekend day
    assert s.is_open(at(6, 23, 59))  # Sunday, all day
    # Monday 06:00 would belong to a night that started on Sunday: none did (Sunday's whole-day
    # window ends at midnight)
    assert not s.is_open(at(0, 6)) and not s.is_open(at(0, 12))
    assert s.is_open(at(1, 6))  # Tuesday 06:00: Monday night's window
    assert Schedule.parse(["sun 19:00-07:00"]).is_open(at(0, 6))
    assert Schedule.parse(["sat+sun 10:00-12:00"]).is_open(at(5, 11))  # "+" as in P2PNODE_SCHEDULE
    assert Schedule.parse(["fri-mon 10:00-12:00"]).is_open(at(0, 11))  # ranges wrap the week


def test_empty_means_always_and_bad_windows_are_refused() -> None:
    assert Schedule.parse([]).is_open(at(2, 3)) and Schedule.parse([]).next_change(at(2, 3)) is None
    for bad in ("18-08", "25:00-08:00", "10:00-10:00", "someday 10:00-11:00", "10:61-11:00", "00:00-24:30"):
        with pytest.raises(ConfigError):
            Schedule.parse([bad])


@given(st.integers(0, 6), st.integers(0, 23), st.integers(0, 59), st.integers(0, 1439), st.integers(1, 1439))
def test_next_change_is_where_openness_flips(day: int, hour: int, minute: int, start: int, length: int) -> None:
    end = (start + length) % 1440
    s = Schedule.parse([f"{start // 60:02d}:{start % 60:02d}-{(end // 60) if end else 24:02d}:{end % 60:02d}"])
    t = at(day, hour, minute)
    nxt = s.next_change(t)
    assert nxt is not None and nxt > t
    assert s.is_open(nxt) != s.is_open(t)
    # nothing flips in between (windows start and end on minutes)
    step = t + timedelta(minutes=1)
    while step < nxt:
        assert s.is_open(step) == s.is_open(t)
        step += timedelta(minutes=1)


def test_config_keys() -> None:
    c = load(None, env={"P2PNODE_DATA_DIR": "/tmp/x", "P2PNODE_SCHEDULE": "sat+sun 10:00-12:00,22:00-06:00"},
             flags={"gpus": "0,2", "max_gpu_mem": "16G", "cpu_threads": 2, "max_jobs": 3, "slots": 2})
    assert c.gpu_indexes == (0, 2) and c.gpu_memory_cap == 16 << 30 and c.cpu_threads == 2
    assert c.schedule == ("sat+sun 10:00-12:00", "22:00-06:00")
    for flags in ({"gpus": "0,x"}, {"gpus": "1,1"}, {"max_gpu_mem": "lots"}, {"cpu_threads": -1},
                  {"max_jobs": 1000}, {"schedule": ["25:00-01:00"]}):
        with pytest.raises(ConfigError):
            load(None, env={"P2PNODE_DATA_DIR": "/tmp/x"}, flags=flags)


def _gpu(index: int) -> GpuInfo:
    return GpuInfo(index, f"GPU {index}", 80 << 30, 70 << 30, 5, "9.0", "580")


def test_offered_hardware_is_what_the_operator_shares() -> None:
    hw = Hardware(CpuInfo("cpu", 32, 64 << 30, 60 << 30), tuple(_gpu(i) for i in range(3)))
    assert offered(hw) == hw
    mine = offered(hw, gpus=(0, 2), max_gpu_mem=16 << 30, cpu_threads=4)
    assert [g.index for g in mine.gpus] == [0, 2]
    assert all(g.memory_total == 16 << 30 and g.memory_free == 16 << 30 for g in mine.gpus)
    assert mine.cpu.cores == 4 and mine.problems == ()
    missing = offered(hw, gpus=(1, 5))
    assert [g.index for g in missing.gpus] == [1]
    assert any("GPU 5" in p and "not found" in p for p in missing.problems)


def test_run_flags_reach_the_config(tmp_path: Any) -> None:
    from p2pnode.cli import _parser
    from p2pnode.run_flags import config_from as _config

    args = _parser().parse_args(["run", "--data-dir", str(tmp_path), "--gpus", "1", "--slots", "3", "--max-jobs", "2",
                                 "--max-gpu-mem", "8G", "--cpu-threads", "2", "--schedule", "sat,sun 00:00-24:00",
                                 "--schedule", "22:00-06:00"])
    c = _config(args)
    assert (c.gpu_indexes, c.slots, c.max_jobs, c.gpu_memory_cap, c.cpu_threads) == ((1,), 3, 2, 8 << 30, 2)
    assert c.schedule == ("sat,sun 00:00-24:00", "22:00-06:00")
