from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The suite draws the same examples on every run (derandomize), so a green run stays green and a
# red one is red again for whoever looks at it; exploring new inputs is the "fuzz" profile's job
# (HYPOTHESIS_PROFILE=fuzz, or tools/fuzz), which draws at random and keeps what it finds.
settings.register_profile("default", deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data dir: the control socket path must fit a Unix socket name (107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="p2pn-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
