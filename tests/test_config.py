from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pnode.config import KEYS, load
from p2pnode.errors import ConfigError
from p2pnode.identity import Identity
from tests.blocking import fails_after

ROOT = Path(__file__).resolve().parents[1]
PEER = Identity.generate().peer_id_b58


def test_defaults(data_dir: Path) -> None:
    c = load(data_dir, env={})
    assert c.listen == ("/ip4/0.0.0.0/tcp/4001",)
    assert c.mdns and c.provide
    assert c.control_socket == data_dir / "control.sock"


def test_file_then_env_then_flags(data_dir: Path) -> None:
    boot = f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}"
    (data_dir / "config.toml").write_text(f'price = 7\nmdns = false\nbootstrap = ["{boot}"]\n')
    c = load(data_dir, env={})
    assert (c.price, c.mdns, c.bootstrap) == (7, False, (boot,))
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
        ("ad_interval = 1.0", "30 ads a minute"),
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


# Every key's range or format: one bad value (or more) each, refused with a line naming the key --
_ADDR = "/ip4/127.0.0.1/tcp/4001"
BAD: list[tuple[str, object, str]] = [
    ("listen", [], "1-16 TCP multiaddrs"),
    ("listen", ["/ip4/127.0.0.1/udp/1"], "only TCP"),
    ("announce", [""], "an entry is empty"),
    ("announce", ["/ip4/0.0.0.0/tcp/4001"], "unspecified address"),
    ("announce", [f"/ip4/127.0.0.{i}/tcp/4001" for i in range(9)], "up to 8"),
    ("announce", ["/dns4/" + ".".join(["x" * 40] * 2) + ".example/tcp/4001"], "too long for a capacity ad"),
    ("bootstrap", [_ADDR], "needs a /p2p/"),
    ("bootstrap", ["not an address"], "bad multiaddr"),
    ("bootstrap", ["/dnsaddr/example.org/tcp/4001"], "a /dnsaddr/ bootstrap entry is"),
    ("network", "/nonexistent/bootstrap.txt", "no such file"),
    ("mdns", "maybe", "expected true or false"),
    ("dht", 3, "expected true or false"),
    ("reachability", "sometimes", "not auto, public or private"),
    ("upnp", "perhaps", "expected true or false"),
    ("relay_service", "always", "not auto, on or off"),
    ("relays", [_ADDR], "needs a /p2p/"),
    ("bulk", "sometimes", "expected true or false"),
    ("bulk_port", 65536, "outside [0, 65535]"),
    ("perf", "x", "expected true or false"),
    ("provide", "x", "expected true or false"),
    ("use_gpu", "x", "expected true or false"),
    ("workloads", ["mine"], "unknown workload 'mine'"),
    ("workloads", ["matmul", "matmul"], "named twice"),
    ("workloads", ["matmul"] * 9, "at most 8"),
    ("price", 10**40, "outside [0, 10^12]"),
    ("price", -1, "outside [0, 10^12]"),
    ("slots", 0, "outside [1, 64]"),
    ("gpus", ["x"], "not a GPU index"),
    ("gpus", ["0", "00"], "named twice"),
    ("gpus", [str(i) for i in range(17)], "at most 16"),
    ("max_jobs", 257, "outside [0, 256]"),
    ("max_gpu_mem", "lots", "not a size"),
    ("cpu_threads", -1, "outside [0, 1024]"),
    ("schedule", ["sometimes"], "not a window"),
    ("ad_interval", 1.0, "30 ads a minute"),
    ("ad_interval", 300.0, "outside [2, 300) s"),
    ("ad_ttl", 301.0, "outside (2, 300] s"),
    ("market_v1", "x", "expected true or false"),
    ("calibrate_seconds", 1e9, "outside [0.01, 30] s"),
    ("calibrate_seconds", 0.0, "outside [0.01, 30] s"),
    ("heartbeat", 1e-9, "outside [0.2, 60] s"),
    ("heartbeat", 61.0, "outside [0.2, 60] s"),
    ("metrics", "127.0.0.1:99999", "not host:port"),
    ("metrics", ":9464", "not host:port"),
    ("metrics", "0.0.0.0:9464", "not a loopback"),
    ("metrics_public", "x", "expected true or false"),
    ("ui", "127.0.0.1:99999", "not host:port"),
    ("ui", "0.0.0.0:7464", "not a loopback"),
    ("ui_public", "x", "expected true or false"),
    ("max_peers", 0, "outside [1, 100000]"),
    ("max_peers", 10**9, "outside [1, 100000]"),
    ("log_level", "loud", "not debug, info, warning or error"),
    ("log_format", "xml", "not text or json"),
    ("reciprocity", 1.0, "outside [0, 0.9]"),
    ("budget", -1, "outside [0, 2^63-1]"),
    ("budget", 2**64, "outside [0, 2^63-1]"),
    ("checker", "x", "expected true or false"),
    ("pretrusted", ["12D3KooWnotapeer"], "not a peer id"),
    ("reputation_half_life", 0.0, "outside [0.01, 3650] days"),
    ("reputation_half_life", 1e9, "outside [0.01, 3650] days"),
    ("check_rate_min", 0.0, "outside (0, 1]"),
    ("check_rate_min", 1.5, "outside (0, 1]"),
    ("calibrate_providers", "x", "expected true or false"),
    ("adversary", "saint", "not one of"),
    ("calibration_file", "/dev/null", "is a character device, not a regular file"),  # as /dev/zero, unread
    ("calibration_file", "/nonexistent/calibration.json", "no such file"),
    ("impair", "drop=2", "out of range"),
]


def test_every_key_has_a_bad_value_in_the_table() -> None:
    assert {k.name for k in KEYS} <= {name for name, _, _ in BAD}


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[f"{k}={v!r}"[:40] for k, v, _ in BAD])
def test_a_bad_value_of_any_key_is_one_clear_error(data_dir: Path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load(data_dir, env={}, flags={key: value})
    assert key in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("toml", "message"), [
    ("price = 10000000000000000000000000000000000000000", "outside [0, 10^12]"),  # the ad would be malformed
    ('announce = [""]', "an entry is empty"),
    ('metrics = "127.0.0.1:99999"', "not host:port"),
    ("heartbeat = 1e-9", "outside [0.2, 60] s"),
    ("calibrate_seconds = 1e9", "outside [0.01, 30] s"),
    ('calibration_file = "/dev/null"', "not a regular file"),
    ("x = " + "[" * 5000 + "]" * 5000, "nested too deep"),
])
def test_bad_files_from_the_field_are_clear_errors(data_dir: Path, toml: str, message: str) -> None:
    (data_dir / "config.toml").write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(data_dir, env={})


def test_readme_shows_what_each_key_accepts() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| `")}
    for key in KEYS:
        assert f"| {key.accepts} |" in rows[f"`{key.name}`"], f"README: {key.name} accepts {key.accepts}"


# Lists in the environment ---------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "windows"), [
    ("sat,sun 00:00-24:00", ("sat,sun 00:00-24:00",)),  # the README's example: one window
    ("mon-fri 19:00-07:00; sat,sun 00:00-24:00", ("mon-fri 19:00-07:00", "sat,sun 00:00-24:00")),
    ("mon-fri 19:00-07:00\nsat,sun 00:00-24:00\n", ("mon-fri 19:00-07:00", "sat,sun 00:00-24:00")),
    ('["mon-fri 19:00-07:00", "sat,sun 00:00-24:00"]', ("mon-fri 19:00-07:00", "sat,sun 00:00-24:00")),
    ("['sat,sun 00:00-24:00']", ("sat,sun 00:00-24:00",)),  # TOML's literal strings too
    ("mon-fri 19:00-07:00,sat,sun 00:00-24:00", ("mon-fri 19:00-07:00", "sat,sun 00:00-24:00")),
    ("sat+sun 10:00-12:00,22:00-06:00", ("sat+sun 10:00-12:00", "22:00-06:00")),  # commas between windows
])
def test_schedule_windows_with_commas_come_through_the_environment(
        data_dir: Path, raw: str, windows: tuple[str, ...]) -> None:
    assert load(data_dir, env={"P2PNODE_SCHEDULE": raw}).schedule == windows


def test_simple_comma_lists_still_work_in_the_environment(data_dir: Path) -> None:
    c = load(data_dir, env={"P2PNODE_LISTEN": "/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2", "P2PNODE_GPUS": "0,2",
                            "P2PNODE_WORKLOADS": '["matmul", "onnx"]'})
    assert c.listen == ("/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2")
    assert (c.gpus, c.workloads) == (("0", "2"), ("matmul", "onnx"))


def test_a_day_list_without_a_time_is_refused_from_the_environment(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="'sat,sun' is not a window"):
        load(data_dir, env={"P2PNODE_SCHEDULE": "mon 10:00-12:00,sat,sun"})


@pytest.mark.parametrize(("raw", "message"), [
    ('["matmul"', "not a TOML or JSON array"),
    ('["matmul"]\nprice = 1', "not a TOML or JSON array"),
    ("[1, 2]", "expected a list of strings"),
    ("[" * 5000, "not a TOML or JSON array"),
])
def test_a_bad_list_in_the_environment_is_one_clear_error(data_dir: Path, raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load(data_dir, env={"P2PNODE_WORKLOADS": raw})
    assert "$P2PNODE_WORKLOADS" in str(caught.value)


# The config file ------------------------------------------------------------------------------------
def test_a_named_config_file_must_exist_but_the_default_may_not(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(data_dir, config_file=data_dir / "missing.toml", env={})
    assert load(data_dir, env={}).price == 100  # <data-dir>/config.toml absent: the defaults
    (data_dir / "other.toml").write_text("price = 5\n")
    assert load(data_dir, config_file=data_dir / "other.toml", env={}).price == 5


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: os.mkfifo(p), "is a FIFO"),  # opening it would wait for a writer
    (lambda p: p.symlink_to("/dev/null"), "is a character device"),  # as /dev/zero, which never ends
    (lambda p: p.write_bytes(b"# " + b"x" * (2 << 20)), "over the limit of"),
])
def test_a_config_file_that_is_no_small_regular_file_is_refused_unread(
        data_dir: Path, make: Callable[[Path], object], message: str) -> None:
    make(data_dir / "config.toml")
    with fails_after(10), pytest.raises(ConfigError, match=message):
        load(data_dir, env={})



# Settings changed while the node runs -----------------------------------------------------------------
def test_a_runtime_change_is_checked_as_at_load(data_dir: Path) -> None:
    from p2pnode.config import RUNTIME_KEYS, change

    base = load(data_dir, env={})
    changed = change(base, {"price": "250", "schedule": ["mon-fri 19:00-07:00"], "checker": True})
    assert (changed.price, changed.schedule, changed.checker) == (250, ("mon-fri 19:00-07:00",), True)
    assert changed.listen == base.listen
    for key, value, message in [("price", -1, "price"), ("workloads", ["nosuch"], "unknown workload"),
                                ("schedule", ["sometimes"], "not a window"), ("max_gpu_mem", "lots", "not a size")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            change(base, {key: value})
    with pytest.raises(ConfigError, match="cannot change while the node runs"):
        change(base, {"listen": ["/ip4/127.0.0.1/tcp/1"]})
    assert set(RUNTIME_KEYS) == {"price", "workloads", "schedule", "max_gpu_mem", "checker"}
