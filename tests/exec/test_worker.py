"""A worker process as the executor runs it, seen from outside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from p2pnode.exec import frames


def test_a_worker_ignores_the_terminals_ctrl_c_and_prints_nothing() -> None:
    """Ctrl-C at a terminal reaches every process of the node's group; the node stops its workers
    itself, so a worker must neither die of it nor print a KeyboardInterrupt traceback into the
    node's log (its stderr is the node's)."""
    proc = subprocess.Popen([sys.executable, "-m", "p2pnode.exec.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(frames.pack({"op": "hello"}))
        proc.stdin.flush()
        assert frames.read_blocking(proc.stdout)["pid"] == proc.pid  # imported, serving, waiting on stdin
        proc.send_signal(signal.SIGINT)
        proc.stdin.write(frames.pack({"op": "hello"}))
        proc.stdin.flush()
        assert frames.read_blocking(proc.stdout)["pid"] == proc.pid  # still serving
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None and proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
