"""What a volunteer installs: the systemd unit verifies, the image builds where a Docker engine
runs, and the install script gives a working node on every Python the project supports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_service_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    unit = (ROOT / "deploy" / "p2pnode.service").read_text()
    for setting in ("User=p2pnode", "ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure",
                    "StateDirectory=p2pnode", "CapabilityBoundingSet=\n"):
        assert setting in unit
    exe = Path(sys.executable).with_name("p2pnode")
    assert exe.exists()
    (tmp_path / "p2pnode.service").write_text(unit.replace("/opt/p2pnode/.venv/bin/p2pnode", str(exe)))
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "p2pnode.service")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _docker_engine(), reason="no Docker engine runs here (the client alone cannot build)")
def test_the_cpu_image_builds_and_runs_the_node() -> None:
    tag = "p2pnode-test:cpu"
    subprocess.run(["docker", "build", "-f", "deploy/Dockerfile", "-t", tag, "."], cwd=ROOT, check=True, timeout=1800)
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("p2pnode ")


def _pythons() -> list[str]:
    root = Path.home() / ".pyenv" / "versions"
    found = []
    for minor in ("3.11", "3.12", "3.13"):
        exe = sorted(root.glob(f"{minor}.*/bin/python{minor}"))
        if exe:
            found.append(str(exe[-1]))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("python", _pythons() or [pytest.param("", marks=pytest.mark.skip(reason="no pyenv"))])
def test_the_install_script_gives_a_working_node(python: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    out = subprocess.run([str(ROOT / "tools" / "install"), "--python", python, "--venv", str(venv)],
                         capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("p2pnode ")
    ident = subprocess.run([str(venv / "bin" / "p2pnode"), "id", "--json", "--data-dir", str(tmp_path / "d")],
                           capture_output=True, text=True, timeout=120)
    assert ident.returncode == 0 and '"peer"' in ident.stdout, ident.stderr
