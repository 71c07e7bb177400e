"""The tools' own front doors: usage without arguments, and the fuzzing budget."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import fuzz_budget

ROOT = Path(__file__).resolve().parents[1]


def _tool(tmp_path: Path, name: str) -> Path:
    """A copy of the tool ``name`` (and the benchmarks it lists) beside a ``_venv.sh`` whose
    ``ensure_venv`` only says that it was called: these tests never create or install a venv."""
    tools = tmp_path / "tools"
    shutil.copytree(ROOT / "tools" / "bench", tools / "bench")
    shutil.copy2(ROOT / "tools" / name, tools / name)
    (tools / "_venv.sh").write_text('ensure_venv() { echo "ensure_venv called" >&2; exit 99; }\n')
    return tools / name


def _run(tool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=30, check=False)


def test_bench_run_without_a_name_lists_the_benchmarks(tmp_path: Path) -> None:
    out = _run(_tool(tmp_path, "bench/run"))
    assert out.returncode == 2 and "unbound variable" not in out.stderr
    assert out.stderr.startswith("usage: tools/bench/run NAME")
    for bench in (ROOT / "tools" / "bench").glob("*.py"):
        listed = f"\n  {bench.stem} " in out.stderr
        assert listed is not bench.stem.startswith("_"), bench.stem  # _name.py: a benchmark's helper


def test_bench_run_refuses_an_unknown_name_before_installing_anything(tmp_path: Path) -> None:
    out = _run(_tool(tmp_path, "bench/run"), "nosuch")
    assert out.returncode == 2 and "no benchmark named 'nosuch'" in out.stderr
    assert "ensure_venv called" not in out.stderr


@pytest.mark.parametrize("args", [["--seconds", "soon"], ["--seconds", "0"], ["--seconds"]])
def test_fuzz_refuses_a_bad_budget_before_installing_anything(tmp_path: Path, args: list[str]) -> None:
    out = _run(_tool(tmp_path, "fuzz"), *args)
    assert out.returncode == 2 and out.stderr.startswith("tools/fuzz: --seconds")
    assert "ensure_venv called" not in out.stderr


class _Clock:
    """Virtual time: each example of a round costs ``per_example`` seconds."""

    def __init__(self, per_example: float) -> None:
        self.t, self.per_example = 0.0, per_example
        self.rounds: list[int] = []

    def __call__(self) -> float:
        return self.t

    def run(self, n: int) -> None:
        self.rounds.append(n)
        self.t += n * self.per_example


@pytest.mark.parametrize("per_example", [0.0001, 0.01, 0.5, 3.0])
def test_a_share_is_spent_in_rounds_and_not_overrun_by_more_than_a_round(per_example: float) -> None:
    clock = _Clock(per_example)
    total = fuzz_budget.spend(60.0, clock.run, clock)
    assert total == sum(clock.rounds)
    assert clock.t >= 60.0 - per_example  # the share is used ...
    assert clock.t <= 60.0 + max(fuzz_budget.ROUND_S, per_example * fuzz_budget.FIRST_ROUND)  # ... and no more
    assert all(1 <= n <= fuzz_budget.MAX_ROUND for n in clock.rounds)


def test_a_spent_budget_still_runs_one_round() -> None:
    clock = _Clock(0.01)
    assert fuzz_budget.spend(0.0, clock.run, clock) == fuzz_budget.FIRST_ROUND and len(clock.rounds) == 1


def test_the_plugin_shares_the_budget_among_properties_and_state_machines(tmp_path: Path) -> None:
    """Two properties and a state machine, each asking for 3 examples: under a 3-second budget each
    runs many more, in rounds, and the plain test once."""
    (tmp_path / "test_props.py").write_text('''
import os
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

def _count(name):
    with open(os.path.join(os.environ["COUNTS"], name), "a") as f:
        f.write("x")

@settings(max_examples=3)
@given(st.integers())
def test_a(x):
    _count("a")

@given(st.binary())
def test_b(x):
    _count("b")

def test_plain():
    _count("plain")

class Machine(RuleBasedStateMachine):
    @rule()
    def step(self):
        pass

    def teardown(self):
        _count("machine")

Machine.TestCase.settings = settings(max_examples=3, stateful_step_count=2)
TestMachine = Machine.TestCase
''')
    env = {**os.environ, "P2PNODE_FUZZ_SECONDS": "3", "COUNTS": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.fuzz_budget", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path / "test_props.py")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    counts = {p.name: len(p.read_text()) for p in tmp_path.iterdir() if "." not in p.name}
    assert counts["plain"] == 1
    assert counts["a"] > 3 and counts["b"] > 3 and counts["machine"] > 3, counts
    assert "fuzz budget 3 s: 3 properties" in out.stdout
