"""A time budget for fuzzing: ``tools/fuzz --seconds N`` shares N seconds among the properties.

Hypothesis ends a property after a number of examples, never after a time: at the fuzz profile's
20,000 examples one slow property took a whole 5-minute run. Loaded as a pytest plugin
(``-p tests.fuzz_budget``) with ``P2PNODE_FUZZ_SECONDS`` set, every Hypothesis test (``@given``
functions and rule-based state machines) instead runs in rounds of fresh random examples until its
share is spent. Its share is what is left of the budget divided by the Hypothesis tests still to
run, so the time a quick property leaves goes to the others, and every one runs at least one
round. A failure ends its test at once, shrunk and kept in ``.hypothesis/`` as always. The other
tests run as they are, on the same budget's clock.
"""

from __future__ import annotations

import os
import time
import unittest
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import is_hypothesis_test, settings

BUDGET_ENV = "P2PNODE_FUZZ_SECONDS"
FIRST_ROUND = 10  # examples; later rounds are sized from the time an example took
MAX_ROUND = 5000
ROUND_S = 2.0  # a round's target length: short enough to stop near the share's end


def spend(share_s: float, run_round: Callable[[int], None], clock: Callable[[], float] = time.monotonic) -> int:
    """Call ``run_round(n)`` (run ``n`` examples) until ``share_s`` seconds are spent, at least
    once; returns how many examples were asked for in all."""
    start = clock()
    n, total = FIRST_ROUND, 0
    while True:
        t0 = clock()
        run_round(n)
        total += n
        per_example = max((clock() - t0) / n, 1e-6)
        left = share_s - (clock() - start)
        if left < per_example:
            return total
        n = max(1, min(MAX_ROUND, int(min(ROUND_S, left) / per_example)))


class FuzzBudget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = 0.0
        self.waiting = 0  # Hypothesis tests still to run
        self.examples: dict[str, int] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            apply = _settings_hook(item)
            if apply is not None:
                self.waiting += 1
                item.runtest = self._budgeted(item, item.runtest, apply)  # type: ignore[method-assign]
        self.deadline = time.monotonic() + self.seconds

    def _budgeted(self, item: pytest.Item, runtest: Callable[[], None],
                  apply: Callable[[settings | None, int], settings]) -> Callable[[], None]:
        def run() -> None:
            share = max(0.0, self.deadline - time.monotonic()) / max(1, self.waiting)
            self.waiting -= 1
            original = apply(None, 0)

            def run_round(n: int) -> None:
                apply(original, n)
                runtest()

            try:
                self.examples[item.nodeid] = spend(share, run_round)
            finally:
                apply(original, -1)  # as it was

        return run

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        total = sum(self.examples.values())
        terminalreporter.write_line(f"fuzz budget {self.seconds:g} s: {len(self.examples)} properties, "
                                    f"{total} examples asked for")


def _settings_hook(item: pytest.Item) -> Callable[[settings | None, int], settings] | None:
    """For a Hypothesis test, ``apply(original, n)``: with ``n > 0``, set its settings to
    ``original`` with ``n`` random examples; ``n == 0`` reads them; ``n < 0`` puts ``original`` back.
    None for any other test."""
    cls = getattr(item, "cls", None)
    if cls is not None and issubclass(cls, unittest.TestCase) and isinstance(getattr(cls, "settings", None), settings):
        def apply_stateful(original: settings | None, n: int) -> settings:
            if n == 0:
                return cls.settings  # type: ignore[no-any-return]
            cls.settings = original if n < 0 else settings(original, max_examples=n, derandomize=False)
            return cls.settings  # type: ignore[no-any-return]

        return apply_stateful
    func = getattr(getattr(item, "obj", None), "__func__", getattr(item, "obj", None))
    if func is None or not is_hypothesis_test(func):
        return None

    def apply_given(original: settings | None, n: int) -> settings:
        if n == 0:
            return func._hypothesis_internal_use_settings  # type: ignore[no-any-return]
        # the attribute @given reads on every call (hypothesis.core); set like @settings sets it
        func._hypothesis_internal_use_settings = (
            original if n < 0 else settings(original, max_examples=n, derandomize=False))
        return func._hypothesis_internal_use_settings  # type: ignore[no-any-return]

    return apply_given


def pytest_configure(config: pytest.Config) -> None:
    raw = os.environ.get(BUDGET_ENV)
    if raw:
        config.pluginmanager.register(FuzzBudget(float(raw)), "p2pnode-fuzz-budget")
