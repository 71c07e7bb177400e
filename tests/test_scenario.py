from __future__ import annotations

import random
from pathlib import Path

import pytest

from p2pnode import scenario as sc
from p2pnode.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "tools" / "scenarios").glob("*.toml"))


def test_the_shipped_scenarios_load_and_say_what_they_expect() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"baseline", "cheaters", "sybil-flood", "churn", "partition", "terrible-network", "models"} <= names
    for path in SHIPPED:
        s = sc.load(path)
        assert s.expect and s.workloads and s.description and s.nodes >= 3, path


@pytest.mark.parametrize(("text", "message"), [
    ("bogus = 1", "unknown key"),
    ("[nodes]\nproviders = 0", "providers must be"),
    ("[[adversaries]]\nkind = 'wizard'", "kind 'wizard'"),
    ("[[adversaries]]\nkind = 'garbage'\ncount = 1\nfraction = 0.5", "count or fraction"),
    ("[[workloads]]\nkind = 'matmul'\nparams = { m = 0 }", "must be an integer"),
    ("[[faults]]\naction = 'kill'", "missing at"),
    ("[[faults]]\nat = 1\naction = 'explode'", "action 'explode'"),
    ("[[faults]]\nat = 1\naction = 'kill'\ntarget = 'aliens'", "target 'aliens'"),
    ("[expect]\nhappiness = 1", "unknown expectation"),
    ("duration = nan", "duration must be"),
])
def test_mistakes_are_named(text: str, message: str) -> None:
    import tomllib

    with pytest.raises(ConfigError, match=message):
        sc.parse(tomllib.loads(text))


def test_targets_scaling_and_shortening() -> None:
    s = sc.load(ROOT / "tools" / "scenarios" / "cheaters.toml")
    roles = {"providers": list(range(10)), "requesters": [10, 11], "checkers": [], "adversaries": [12]}
    rng = random.Random(1)
    assert sc.pick("providers", roles, rng) == list(range(10))
    assert len(sc.pick("providers:30%", roles, rng)) == 3 and len(sc.pick("providers:2", roles, rng)) == 2
    assert len(sc.pick("half", roles, rng)) == 6 and sc.pick("all", roles, rng) == list(range(13))
    small = s.scaled(6)
    assert 5 <= small.nodes <= 8 and all(a.count >= 1 for a in small.adversaries)
    churn = sc.load(ROOT / "tools" / "scenarios" / "churn.toml").shortened(10)
    assert churn.duration == 10 and [round(f.at, 1) for f in churn.faults] == [3.0, 6.2]
