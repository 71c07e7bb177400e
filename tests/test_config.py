from __future__ import annotations

import re
from pathlib import Path

import pytest

from p2pnode.config import KEYS, load
from p2pnode.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults(data_dir: Path) -> None:
    c = load(data_dir, env={})
    assert c.listen == ("/ip4/0.0.0.0/tcp/4001",)
    assert c.mdns and c.provide
    assert c.control_socket == data_dir / "control.sock"


def test_file_then_env_then_flags(data_dir: Path) -> None:
    (data_dir / "config.toml").write_text('price = 7\nmdns = false\nbootstrap = ["/ip4/127.0.0.1/tcp/1/p2p/x"]\n')
    c = load(data_dir, env={})
    assert (c.price, c.mdns, c.bootstrap) == (7, False, ("/ip4/127.0.0.1/tcp/1/p2p/x",))
    c = load(data_dir, env={"P2PNODE_PRICE": "8", "P2PNODE_MDNS": "yes"})
    assert (c.price, c.mdns) == (8, True)
    c = load(data_dir, env={"P2PNODE_PRICE": "8"}, flags={"price": 9, "mdns": None})
    assert (c.price, c.mdns) == (9, False)


def test_data_dir_from_environment(data_dir: Path) -> None:
    assert load(None, env={"P2PNODE_DATA_DIR": str(data_dir)}).data_dir == data_dir


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("price = [", "not valid TOML"),
        ("pirce = 3", "unknown key 'pirce'"),
        ("price = 'cheap'", "expected an integer"),
        ("mdns = 3", "expected true or false"),
        ("listen = '/ip4/127.0.0.1/tcp/1'\nad_ttl = 5\nad_interval = 10", "must exceed"),
        ("metrics = '0.0.0.0:9464'", "not a loopback"),
        ("ad_interval = 1.0", "at least 2 s"),
    ],
)
def test_bad_config_files_are_clear_errors(data_dir: Path, toml: str, message: str) -> None:
    (data_dir / "config.toml").write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(data_dir, env={})


def test_bad_environment_value(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$P2PNODE_PRICE"):
        load(data_dir, env={"P2PNODE_PRICE": "lots"})


def test_readme_documents_every_key() -> None:
    readme = (ROOT / "README.md").read_text()
    for key in KEYS:
        assert f"| `{key.name}` |" in readme, f"README lacks config key {key.name}"
        assert f"P2PNODE_{key.name.upper()}" in readme or "P2PNODE_<KEY>" in readme


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", float("nan"), float("inf")])
def test_non_finite_numbers_are_refused_everywhere(data_dir: Path, bad: object) -> None:
    for source in ("file", "env", "flag"):
        kwargs: dict[str, object] = {"env": {}}
        if source == "file":
            if not isinstance(bad, str):
                continue
            (data_dir / "config.toml").write_text(f"ad_ttl = {bad}\n")  # TOML spells them nan and inf
        elif source == "env":
            kwargs["env"] = {"P2PNODE_AD_TTL": str(bad)}
        else:
            kwargs["flags"] = {"ad_ttl": bad}
        with pytest.raises(ConfigError, match="finite"):
            load(data_dir, **kwargs)  # type: ignore[arg-type]
        (data_dir / "config.toml").unlink(missing_ok=True)


def test_one_version_string() -> None:
    from importlib.metadata import version

    from p2pnode import __version__

    assert version("p2pnode") == __version__
