"""The test-plans transport-interop entry point: listener and dialer coordinated through Redis."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")}


@contextmanager
def redis_on_loopback() -> Iterator[str]:
    """A real redis-server where installed; otherwise fakeredis' TCP server (RESP over TCP)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if shutil.which("redis-server"):
        proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # wait for its own word that it is ready
                if "Ready to accept connections" in line:
                    break
            else:
                raise AssertionError("redis-server exited before it was ready")
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait()
        return
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", port))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def run_pair(redis_addr: str, **extra: str) -> tuple[subprocess.CompletedProcess[str], subprocess.Popen[str]]:
    env = BASE_ENV | {"transport": "tcp", "security": "noise", "muxer": "yamux", "ip": "127.0.0.1",
                      "redis_addr": redis_addr, "test_timeout_seconds": "60"} | extra
    listener = subprocess.Popen([sys.executable, "-m", "p2pnode.interop"], env=env | {"is_dialer": "false"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dialer = subprocess.run([sys.executable, "-m", "p2pnode.interop"], env=env | {"is_dialer": "true"},
                            capture_output=True, text=True, timeout=90)
    return dialer, listener


def test_dialer_reports_handshake_and_ping_times() -> None:
    with redis_on_loopback() as addr:
        dialer, listener = run_pair(addr)
        try:
            assert dialer.returncode == 0, dialer.stderr[-3000:]
            lines = dialer.stdout.strip().splitlines()
            assert len(lines) == 1  # only the result goes to stdout
            result = json.loads(lines[0])
            assert set(result) == {"handshakePlusOneRTTMillis", "pingRTTMilllis"}
            assert 0 < result["pingRTTMilllis"] <= result["handshakePlusOneRTTMillis"] < 60_000
            assert listener.poll() is None  # the listener waits for the runner to stop it
        finally:
            listener.kill()
            listener.wait()


@pytest.mark.parametrize(("key", "value"), [("muxer", "mplex"), ("security", "tls"), ("transport", "quic-v1")])
def test_unsupported_combinations_fail_clearly(key: str, value: str) -> None:
    env = BASE_ENV | {"transport": "tcp", "security": "noise", "muxer": "yamux", "is_dialer": "true", key: value}
    out = subprocess.run([sys.executable, "-m", "p2pnode.interop"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and f"unsupported {key}" in out.stderr and out.stdout == ""
