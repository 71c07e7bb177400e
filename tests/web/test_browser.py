"""The pages in a real browser (Playwright driving the system's Chromium) against a real swarm:
three node processes started by ``p2pnode swarm up``, node 1 a cheater. One browser and one swarm
for the whole module; each test opens its own page.

Skipped with one line where Chromium is not installed and cannot be (see p2pnode.web.browser).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pnode.web.browser import chromium, launch

EXE = [sys.executable, "-m", "p2pnode"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")}
WAIT_MS = 60_000


def _cli(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=timeout, env=ENV, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests skipped: playwright is not installed (the test extra: pip install -e '.[test]')")
    path, why = chromium(install=True)
    if path is None:
        pytest.skip(f"browser tests skipped: {why}")
    with sync_playwright() as p:
        b = launch(p, path)
        yield b
        b.close()


class Swarm:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        out = _cli("swarm", "up", "--nodes", "3", "--cheat", "garbage:1", "--dir", str(folder), "--ui", "127.0.0.1:0",
                   timeout=300)
        self.view = re.search(r"swarm view: (\S+)", out).group(1)  # type: ignore[union-attr]

    def data_dir(self, i: int) -> str:
        return str(self.folder / f"node{i}")

    def login(self, i: int) -> str:
        return _cli("ui", "--data-dir", self.data_dir(i)).strip()

    def call(self, i: int, *args: str) -> Any:
        return json.loads(_cli(*args, "--data-dir", self.data_dir(i), "--json"))

    def submit(self, i: int, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*EXE, "submit", *args, "--data-dir", self.data_dir(i), "--json"], env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Swarm]:
    s = Swarm(Path(tmp_path_factory.mktemp("sw")))
    try:
        _catch_the_cheater(s)
        yield s
    finally:
        subprocess.run([*EXE, "swarm", "down", "--dir", str(s.folder)], env=ENV, capture_output=True, timeout=60,
                       check=False)


def _catch_the_cheater(s: Swarm) -> None:
    """Both requesters run small checked jobs until each distrusts node 1 (it answers garbage)."""
    cheater = s.call(1, "id")["peer"]
    for _ in range(12):
        distrusted = [any(e["peer"] == cheater and e["distrusted"] for e in s.call(i, "reputation")) for i in (0, 2)]
        if all(distrusted):
            return
        for i in (0, 2):
            if not distrusted[(0, 2).index(i)]:
                s.submit(i, "matmul", "-p", "m=64", "-p", "n=64", "-p", "k=64", "-p", "dtype=int8").communicate(timeout=120)
    raise AssertionError("the cheater was not caught in 12 rounds of jobs")


def _page(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    page.wait_for_selector("#live.ok", timeout=WAIT_MS)
    return page, errors


def test_a_page_without_the_token_is_refused(browser: Any, swarm: Swarm) -> None:
    for login in (swarm.login(0), swarm.view):
        root = login.split("/login")[0] + "/"
        context = browser.new_context()  # no session cookie
        page = context.new_page()
        answer = page.goto(root)
        assert answer.status == 401
        assert "token" in page.inner_text("body")
        answer = page.goto(root + "api/status")
        assert answer.status == 401
        answer = page.goto(login.split("token=")[0] + "token=wrong")
        assert answer.status == 401
        context.close()


def test_the_swarm_view_shows_every_node_and_the_cheater_caught(browser: Any, swarm: Swarm) -> None:
    page, errors = _page(browser, swarm.view)
    page.wait_for_function("() => document.querySelectorAll('#nodes tbody tr').length === 3", timeout=WAIT_MS)
    page.wait_for_function("() => document.getElementById('converged').textContent === 'converged'", timeout=WAIT_MS)
    rows = page.locator("#nodes tbody tr")
    assert "garbage" in rows.nth(1).inner_text()
    assert "cheater" in (rows.nth(1).get_attribute("class") or "")
    page.wait_for_selector("#cheaters td >> text=yes", timeout=WAIT_MS)
    assert page.locator("#reputation td", has_text="✗").count() >= 2  # each requester distrusts it
    assert "3 of 3 nodes up" in page.inner_text("#summary")
    page.wait_for_selector("#timeline .tick", timeout=WAIT_MS)
    assert not errors, errors
    page.close()


def test_a_job_appears_live_and_finishes_verified(browser: Any, swarm: Swarm) -> None:
    page, errors = _page(browser, swarm.login(0))
    page.goto(page.url.split("#")[0] + "#jobs")
    past_before = page.locator("#jobs-past tbody tr").count()
    job = swarm.submit(0, "train_step", "-p", "steps=150", "-p", "batch=256", "-p", "d_in=256", "-p", "d_hidden=256",
                       "--deadline", "120")
    try:
        page.wait_for_selector("#jobs-live tbody tr", timeout=WAIT_MS)
        live = page.locator("#jobs-live tbody tr").first.inner_text()
        assert "train_step" in live and "requester" in live
        job_id = page.locator("#jobs-live tbody tr td").first.inner_text().strip()
        out, _ = job.communicate(timeout=180)
    finally:
        job.kill()
    result = json.loads(out)
    assert result["state"] == "done", result
    assert result["job"].startswith(job_id)
    row = page.locator("#jobs-past tbody tr", has_text=job_id).first
    row.wait_for(timeout=WAIT_MS)
    assert "done" in row.inner_text()
    assert (result["checked"] or "not sampled") in row.inner_text()
    assert page.locator("#jobs-past tbody tr").count() > past_before
    assert not errors, errors
    page.close()


def test_pause_and_resume_from_the_page(browser: Any, swarm: Swarm) -> None:
    page, errors = _page(browser, swarm.login(2))
    button = page.locator("#pause")
    page.wait_for_function("() => !document.getElementById('pause').disabled", timeout=WAIT_MS)
    assert button.inner_text() == "Pause"
    button.click()
    page.wait_for_function("() => document.getElementById('pause').textContent === 'Resume'", timeout=WAIT_MS)
    assert swarm.call(2, "status")["paused"] is True
    peer2 = swarm.call(2, "id")["peer"]
    deadline = time.monotonic() + 60  # its next ad offers nothing, and the others hear it
    while any(e["offers"] for e in swarm.call(0, "market") if e["peer"] == peer2):
        assert time.monotonic() < deadline, "node 0 still sees node 2's offers"
        time.sleep(0.5)
    page.wait_for_selector("#health li.note >> text=paused", timeout=WAIT_MS)
    button.click()
    page.wait_for_function("() => document.getElementById('pause').textContent === 'Pause'", timeout=WAIT_MS)
    assert swarm.call(2, "status")["paused"] is False
    assert not errors, errors
    page.close()


def test_the_sharing_form_changes_the_price_everyone_sees(browser: Any, swarm: Swarm) -> None:
    page, errors = _page(browser, swarm.login(2))
    page.wait_for_function("() => document.querySelector('#sharing input[name=price]').value !== ''", timeout=WAIT_MS)
    page.fill("#sharing input[name=price]", "321")
    page.click("#sharing button[type=submit]")
    page.wait_for_selector("#sharing-said.ok", timeout=WAIT_MS)
    peer2 = swarm.call(2, "id")["peer"]
    deadline = time.monotonic() + 60
    while {o["price"] for e in swarm.call(0, "market") if e["peer"] == peer2 for o in e["offers"]} != {321}:
        assert time.monotonic() < deadline, "node 0 does not see node 2's new price"
        time.sleep(0.5)
    page.fill("#sharing input[name=workloads]", "matmul, nosuch")  # the node refuses it, in one line
    page.click("#sharing button[type=submit]")
    page.wait_for_selector("#sharing-said.warn", timeout=WAIT_MS)
    assert "unknown workload 'nosuch'" in page.inner_text("#sharing-said")
    own = next(e for e in swarm.call(2, "market") if e["peer"] == peer2)
    assert {o["wl"] for o in own["offers"]} == {"matmul", "infer", "train_step", "onnx", "train"}  # unchanged
    assert errors == ["Failed to load resource: the server responded with a status of 400 ()"]  # that refusal
    page.close()


def test_every_tab_of_the_dashboard_renders(browser: Any, swarm: Swarm) -> None:
    page, errors = _page(browser, swarm.login(0))
    base = page.url.split("#")[0]
    page.goto(base + "#jobs")  # the cheater's jobs, checked by Freivalds' test
    page.wait_for_selector("#jobs-past >> text=freivalds", timeout=WAIT_MS)
    page.wait_for_selector("#jobs-past >> text=rejected", timeout=WAIT_MS)
    page.goto(base + "#market")
    page.wait_for_function("() => document.querySelectorAll('#market tbody tr').length >= 2", timeout=WAIT_MS)
    page.goto(base + "#credits")
    page.wait_for_selector("#chart canvas", timeout=WAIT_MS)  # the vendored chart, drawn from the ledger
    assert "received" in page.inner_text("#credit-totals")
    page.goto(base + "#reputation")
    page.wait_for_selector("#reputation >> text=distrusted", timeout=WAIT_MS)
    page.goto(base + "#ledger")
    page.wait_for_selector("#ledger >> text=receipt", timeout=WAIT_MS)
    page.goto(base + "#logs")
    page.wait_for_function("() => document.getElementById('logs').textContent.length > 0", timeout=WAIT_MS)
    assert not errors, errors
    page.close()


CHURN = """
name = "churn-small"
description = "a provider killed mid-run and brought back"
seed = 4
duration = 24  # room after the restart: a node restarted on a busy machine takes seconds to be up

[nodes]
providers = 3
requesters = 1

[[workloads]]
kind = "matmul"
params = { m = 64, n = 64, k = 256, dtype = "int8" }
rate = 1.0

[[faults]]
at = 3
action = "kill"
target = "providers:30%"

[[faults]]
at = 6
action = "restart"
target = "all"
"""


def test_the_view_of_a_scenario_run_shows_its_faults(browser: Any, tmp_path: Path) -> None:
    """``swarm run``: the page follows the scenario, its kill and restart on the timeline as they come."""
    (tmp_path / "churn.toml").write_text(CHURN)
    run = subprocess.Popen([*EXE, "swarm", "run", str(tmp_path / "churn.toml"), "--out", str(tmp_path / "out"),
                            "--ui", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**ENV, "COLUMNS": "400"})
    try:
        assert run.stdout is not None
        said = ""
        while not (m := re.search(r"swarm view: (\S+)", said)):
            line = run.stdout.readline()
            assert line, said[-2000:]
            said += line
        page, errors = _page(browser, m.group(1))
        page.wait_for_function("() => document.querySelectorAll('#nodes tbody tr').length === 4", timeout=WAIT_MS)
        assert "churn-small" in page.inner_text("#name")
        page.wait_for_selector("#timeline .tick.fault", timeout=WAIT_MS)  # the kill
        page.wait_for_selector("#events td >> text=restart", timeout=WAIT_MS)
        assert page.locator("#events td", has_text="kill").count() >= 1
        assert not errors, errors
        page.close()
        out, _ = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 0, out[-3000:]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["completed"]
