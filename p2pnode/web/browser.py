"""A headless browser for the pages' tests and screenshots: Playwright for Python driving the
system's Chromium (Debian's ``chromium`` package), never a browser Playwright downloads.

:func:`chromium` finds it, or installs it with apt-get where that can be done (root, Debian), and
otherwise says in one line why there is none; :func:`launch` starts it with the flags that keep
it from reaching anything but the pages it is sent to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
         "--disable-extensions", "--metrics-recording-only", "--no-default-browser-check"]
INSTALL_TIMEOUT_S = 900


def find() -> str | None:
    env = os.environ.get("P2PNODE_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def chromium(install: bool = True) -> tuple[str | None, str]:
    """(the browser's path, "") or (None, why there is none)."""
    path = find()
    if path or not install:
        return path, "" if path else "no chromium (Debian: apt-get install chromium)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "no chromium, and apt-get cannot install it here (not root, or not Debian)"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": INSTALL_TIMEOUT_S}
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        ok = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
                            env=env, check=False, **quiet).returncode == 0  # type: ignore[call-overload]
        if not ok:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=False, **quiet)  # type: ignore[call-overload]
            subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
                           env=env, check=False, **quiet)  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"no chromium: apt-get install chromium failed ({exc})"
    path = find()
    return path, "" if path else "no chromium: apt-get install chromium did not install it"


def launch(playwright: Any, path: str) -> Any:
    return playwright.chromium.launch(executable_path=path, args=FLAGS, headless=True)
