"""``p2pnode run`` with a bad setting or a bad data dir: one line, exit status 1, never a
traceback or a hang, and nothing in the data dir changed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

EXE = [sys.executable, "-m", "p2pnode"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")} | {"PYTHONUNBUFFERED": "1"}


def _fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


CASES: list[tuple[str, Callable[[Path], object], list[str], str]] = [
    ("identity.key a directory", lambda d: (d / "identity.key").mkdir(), [], "identity.key is a directory"),
    ("identity.key a FIFO", lambda d: _fifo(d / "identity.key"), [], "identity.key is a FIFO"),
    ("ledger.sqlite a directory", lambda d: (d / "ledger.sqlite").mkdir(), [], "ledger.sqlite is a directory"),
    ("ledger.sqlite a FIFO", lambda d: _fifo(d / "ledger.sqlite"), [], "ledger.sqlite is a FIFO"),
    ("control.sock a directory", lambda d: (d / "control.sock").mkdir(), [], "control.sock is a directory"),
    ("control.sock a file", lambda d: (d / "control.sock").write_text("mine"), [], "control.sock is a regular file"),
    ("config.toml a FIFO", lambda d: _fifo(d / "config.toml"), [], "config.toml is a FIFO"),
    ("TOML nested too deep", lambda d: (d / "config.toml").write_text("x = " + "[" * 3000 + "]" * 3000), [],
     "nested too deep"),
    ("calibration a FIFO", lambda d: _fifo(d / "cal.json"), ["--calibration-file", "{d}/cal.json"], "is a FIFO"),
    ("calibration a device", lambda d: None, ["--calibration-file", "/dev/null"], "is a character device"),
    ("config file missing", lambda d: None, ["--config", "{d}/missing.toml"], "missing.toml: no such file"),
    ("schedule with a comma", lambda d: (d / "config.toml").write_text("schedule = 'sat,sun 0-24'"), [],
     "not a window"),
]


@pytest.mark.parametrize(("make", "args", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_data_dir_or_setting_is_one_line_at_start(
        data_dir: Path, make: Callable[[Path], object], args: list[str], message: str) -> None:
    make(data_dir)
    before = sorted(os.listdir(data_dir))
    out = subprocess.run(
        [*EXE, "run", "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--metrics", "",
         *(a.replace("{d}", str(data_dir)) for a in args)],
        capture_output=True, text=True, env=ENV, timeout=60, check=False)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1, out.stdout + out.stderr
    assert len(lines) == 1 and lines[0].startswith("p2pnode: error:") and message in lines[0], out.stderr
    assert sorted(os.listdir(data_dir)) == before  # no identity made, nothing replaced


def test_the_readme_schedule_example_works_from_the_environment(data_dir: Path) -> None:
    """``P2PNODE_SCHEDULE="sat,sun 00:00-24:00"`` is one window (``p2pnode id`` loads the config)."""
    out = subprocess.run([*EXE, "id", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60,
                         env=ENV | {"P2PNODE_SCHEDULE": "sat,sun 00:00-24:00"}, check=False)
    assert out.returncode == 0, out.stderr
