"""Screenshots of the node's dashboard and of the swarm view, for the README (``tools/screens``).

Starts a small real swarm (``p2pnode swarm up``, node 1 a cheater), runs jobs between its nodes
until the cheater is caught and credits have moved, opens the pages in Chromium (Playwright), and
writes PNGs (reduced to a palette, so each stays small) into docs/screens/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p2pnode.web.browser import chromium, launch

ROOT = Path(__file__).resolve().parents[1]
EXE = [sys.executable, "-m", "p2pnode"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")}
TABS = ("overview", "jobs", "credits", "market", "reputation", "ledger")


def cli(*args: str, timeout: float = 300) -> str:
    done = subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=timeout, env=ENV, check=False)
    if done.returncode:
        raise SystemExit(f"p2pnode {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def submit(folder: Path, i: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*EXE, "submit", *args, "--data-dir", str(folder / f"node{i}"), "--json"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def small(path: Path) -> None:
    """The PNG with an adaptive palette: a screenshot of flat colours loses nothing to see."""
    from PIL import Image

    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def work(folder: Path, nodes: int) -> None:
    """Jobs from every node but the cheater, in rounds, so credits move both ways over time."""
    for _ in range(4):
        jobs = [submit(folder, i, "matmul", "-p", "m=96", "-p", "n=96", "-p", "k=256", "-p", "dtype=int8")
                for i in range(nodes) if i != 1]
        for j in jobs:
            j.communicate(timeout=180)
        time.sleep(1.0)  # credits over time: a chart with steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screens")
    ap.add_argument("--nodes", type=int, default=4)
    args = ap.parse_args()
    path, why = chromium(install=True)
    if path is None:
        raise SystemExit(f"tools/screens: {why}")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="p2pscreens-", dir="/tmp"))
    out = cli("swarm", "up", "--nodes", str(args.nodes), "--cheat", "garbage:1", "--dir", str(folder),
              "--ui", "127.0.0.1:0")
    view = re.search(r"swarm view: (\S+)", out).group(1)  # type: ignore[union-attr]
    try:
        work(folder, args.nodes)
        login = cli("ui", "--data-dir", str(folder / "node0")).strip()
        running = submit(folder, 0, "train_step", "-p", "steps=400", "-p", "batch=256", "-p", "d_in=256",
                         "-p", "d_hidden=256", "--deadline", "300")
        with sync_playwright() as p:
            browser = launch(p, path)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(login)
            page.wait_for_selector("#live.ok", timeout=60_000)
            page.goto(login.split("/login")[0] + "/#jobs")
            page.wait_for_selector("#jobs-live tbody tr", timeout=120_000)
            time.sleep(1.5)
            for tab in TABS:
                page.goto(login.split("/login")[0] + f"/#{tab}")
                time.sleep(1.5)
                shot = args.out / f"dashboard-{tab}.png"
                page.screenshot(path=str(shot))
                small(shot)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(view)
            page.wait_for_selector("#cheaters td >> text=yes", timeout=120_000)
            time.sleep(1.5)
            page.screenshot(path=str(args.out / "swarm.png"), full_page=True)
            small(args.out / "swarm.png")
            browser.close()
        running.kill()
    finally:
        cli("swarm", "down", "--dir", str(folder))
    for png in sorted(args.out.glob("*.png")):
        print(f"{png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}  {png.stat().st_size // 1024} KiB")
    print(json.dumps({"swarm": str(folder)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
