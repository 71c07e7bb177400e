"""Build dist/p2pnode, the one-file node binary (PyInstaller, tools/binary/p2pnode.spec), with the
Python that runs this script (it needs PyInstaller and the node's dependencies installed)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
                           "--distpath", str(ROOT / "dist"), "--workpath", str(ROOT / "build" / "pyinstaller"),
                           str(ROOT / "tools" / "binary" / "p2pnode.spec")], cwd=ROOT / "tools" / "binary", check=False)
    if done.returncode:
        print("tools/build-binary: PyInstaller failed (above)", file=sys.stderr)
        return done.returncode
    binary = ROOT / "dist" / "p2pnode"
    print(f"built {binary.relative_to(ROOT)}: {binary.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
