"""``p2pnode ledger`` and ``p2pnode reputation`` on a node's data dir, the node not running."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from p2pnode import cli
from p2pnode.identity import load_or_create
from p2pnode.ledger.store import FILE_NAME, Ledger
from p2pnode.wire.peer_id import peer_id_from_public_key, to_base58

OTHER = [peer_id_from_public_key(bytes(SigningKey(bytes([i]) * 32).verify_key)) for i in (1, 2)]


def make_node_ledger(d: Path) -> bytes:
    identity, _ = load_or_create(d)
    with Ledger.open(d / FILE_NAME, identity.signing_key) as ledger:
        for _ in range(4):
            ledger.append("verification", {"job": b"j" * 16, "method": "freivalds", "passed": True, "detail": "ok"},
                          peer=OTHER[0])
        ledger.append("verification", {"job": b"k" * 16, "method": "rerun", "passed": False, "detail": "bad"},
                      peer=OTHER[1])
    return identity.peer_id


def test_show_export_verify_file_and_reputation(tmp_path: Path, capsys) -> None:
    a = tmp_path / "a"
    owner = make_node_ledger(a)
    assert cli.main(["ledger", "show", "--data-dir", str(a), "--kind", "verification", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["data"]["passed"] for x in lines] == [True] * 4 + [False]
    assert cli.main(["ledger", "verify", "--data-dir", str(a), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 6
    for fmt in ("jsonl", "cbor"):
        out = tmp_path / f"a.{fmt}"
        assert cli.main(["ledger", "export", "--data-dir", str(a), "--format", fmt, "-o", str(out)]) == 0
        assert "exported 6 entries" in capsys.readouterr().out
        assert cli.main(["ledger", "verify", "--file", str(out), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["entries"] == 6 and report["owner"] == to_base58(owner)
    assert cli.main(["reputation", "--data-dir", str(a), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["peer"] for r in rows] == [to_base58(OTHER[0]), to_base58(OTHER[1])]
    assert rows[1]["distrusted"] and rows[1]["cheats"] == 1 and rows[0]["streak"] == 4


def test_verify_file_reports_a_tampered_export(tmp_path: Path, capsys) -> None:
    a = tmp_path / "a"
    make_node_ledger(a)
    out = tmp_path / "a.jsonl"
    cli.main(["ledger", "export", "--data-dir", str(a), "-o", str(out)])
    lines = out.read_text().splitlines()
    entry = json.loads(lines[3])
    record = bytearray(base64.b64decode(entry["record"]))
    record[-70] ^= 1
    entry["record"] = base64.b64encode(bytes(record)).decode()
    lines[3] = json.dumps(entry)
    out.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert cli.main(["ledger", "verify", "--file", str(out)]) == 2
    assert "entry 2" in capsys.readouterr().err


def test_verify_file_refuses_readable_fields_that_disagree_with_the_signed_record(tmp_path: Path, capsys) -> None:
    a = tmp_path / "a"
    identity, _ = load_or_create(a)
    with Ledger.open(a / FILE_NAME, identity.signing_key) as ledger:
        ledger.append("receipt", {"role": "requester", "job": b"j" * 16, "receipt": b"r" * 80, "workload": "matmul",
                                  "accepted": True, "paid": 1}, peer=OTHER[0])
        ledger.append("credit", {"job": b"j" * 16, "amount": -1}, peer=OTHER[0])
    out = tmp_path / "a.jsonl"
    assert cli.main(["ledger", "export", "--data-dir", str(a), "-o", str(out)]) == 0
    honest = out.read_text().splitlines()
    assert cli.main(["ledger", "verify", "--file", str(out)]) == 0

    def verify_with(line: int, edit: Any) -> tuple[int, str]:
        lines = list(honest)
        obj = json.loads(lines[line])
        edit(obj)
        lines[line] = json.dumps(obj)
        out.write_text("\n".join(lines) + "\n")
        capsys.readouterr()
        code = cli.main(["ledger", "verify", "--file", str(out)])
        return code, capsys.readouterr().err

    code, err = verify_with(2, lambda o: o["entry"]["data"].update(paid=1000000))
    assert code == 2
    assert "entry 1:" in err and "entry.data.paid says 1000000" in err and "signed record says 1" in err
    code, err = verify_with(3, lambda o: o["entry"]["data"].update(amount=True))  # -1 and true are not alike
    assert code == 2 and "entry.data.amount" in err
    code, err = verify_with(3, lambda o: o.update(seq=7))
    assert code == 2 and "entry 2:" in err and "field seq says 7" in err
    code, err = verify_with(2, lambda o: o["entry"].pop("peer"))
    assert code == 2 and "entry.peer says nothing" in err
    code, err = verify_with(2, lambda o: o.pop("entry"))  # only the record: nothing readable to disagree
    assert code == 0, err
