"""``p2pnode submit generate`` as a process against real node processes: killed (SIGKILL) after some
shards, run again, it resumes without paying a shard twice; Ctrl-C stops it and says what it paid;
what it writes equals an uninterrupted run's, token for token."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from p2pnode import transformer_models as tm
from p2pnode.control.client import call
from tests.integration.test_cli import ENV, EXE, LIVE, NodeProcess, _stop_all

SHARDS = 12


def _requester_and_providers(data_dir: Path) -> tuple[NodeProcess, NodeProcess, NodeProcess]:
    """Two providers (each shard's checker is the other) and a requester that provides nothing."""
    first, second = NodeProcess(Path(f"{data_dir}-p")), NodeProcess(Path(f"{data_dir}-q-p"))
    requester = NodeProcess(data_dir, "--no-provide", "--bootstrap", first.addrs[0], "--bootstrap", second.addrs[0])
    call(data_dir / "control.sock", "wait", timeout=40, what="offers", count=2, timeout_s=30)
    return requester, first, second


def _ended(requester: NodeProcess) -> list[dict[str, Any]]:
    """The requester's job list once no job of it is live (waits on the node's answers)."""
    for _ in range(60):  # each reading is a command of its own: a second or so apart
        jobs: list[dict[str, Any]] = requester.json("jobs")  # type: ignore[assignment]
        if not [j for j in jobs if j["state"] in LIVE or j["state"] == "cancelling"]:
            return jobs
    raise AssertionError(f"jobs still live: {jobs}")


def test_a_killed_generate_resumes_without_paying_twice_and_writes_what_an_uninterrupted_run_does(
        data_dir: Path) -> None:
    folder = tm.write_model_dir(data_dir / "gpt", tm.decoder(tm.Config(seed=6)), tm.tokenizer(), eos=0)
    lines = tm.corpus(20_000)
    prompts = data_dir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": lines[7 * i][:60]}) + "\n" for i in range(2 * SHARDS)))
    submit = [*EXE, "submit", "generate", "--model", str(folder), "--prompts", str(prompts), "--max-new-tokens", "24",
              "--shard-rows", "2", "--providers", "1", "--data-dir", str(data_dir)]
    requester, *providers = _requester_and_providers(data_dir)
    sock = data_dir / "control.sock"
    try:
        # killed outright after some shards: the node sees its client go and cancels the rest
        killed = subprocess.Popen([*submit, "--output", str(data_dir / "out.jsonl")], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=ENV)
        call(sock, "wait", timeout=70, what="shards", count=2, timeout_s=60)
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=30)
        assert killed.returncode == -signal.SIGKILL
        (first_map,) = [j for j in _ended(requester) if j["workload"] == "map"]
        assert first_map["state"] == "cancelled", first_map
        first_kept = int(re.search(rf"(\d+) of {SHARDS} shards done and kept", first_map["outcome"]).group(1))
        assert 2 <= first_kept < SHARDS
        # run again, stopped by Ctrl-C: it says what it kept and paid
        again = subprocess.Popen([*submit, "--output", str(data_dir / "out.jsonl")], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=ENV)
        call(sock, "wait", timeout=70, what="shards", count=first_kept + 1, timeout_s=60)
        again.send_signal(signal.SIGINT)
        _, err = again.communicate(timeout=60)
        assert again.returncode == 130, err
        stopped = re.search(rf"p2pnode: stopped: map (\w+) cancelled \(its client went away\): (\d+) of {SHARDS} "
                            r"shards done and kept, paid (\d+) µcr \(job \d+\); the same command resumes it", err)
        assert stopped and stopped.group(1) == first_map["job"], err
        kept = int(stopped.group(2))
        assert first_kept < kept < SHARDS and int(stopped.group(3)) > 0
        _ended(requester)
        # the same command once more runs only what is left
        done = subprocess.run([*submit, "--output", str(data_dir / "out.jsonl"), "--json"], capture_output=True,
                              text=True, env=ENV, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["map"] == first_map["job"] and result["resumed"] == kept and result["shards"] == SHARDS
        assert result["generate"]["prompts"] == 2 * SHARDS
        # the ledger: over the three runs, one paid result per shard (every prompt is in the output,
        # so a shard paid twice would make one more), each verified; checks paid besides
        mode = {j["job"]: j["params"].get("mode") for j in requester.json("jobs")  # type: ignore[union-attr]
                if j["workload"] == "generate"}
        paid = [e["data"]["job"] for e in _ledger(requester, "receipt")
                if e["data"]["role"] == "requester" and e["data"]["paid"] > 0]
        verified = {e["data"]["job"] for e in _ledger(requester, "verification") if e["data"]["passed"]}
        shard_jobs = [job for job in paid if mode[job] == "generate"]
        assert len(shard_jobs) == len(set(shard_jobs)) == SHARDS and set(shard_jobs) <= verified, shard_jobs
        assert {mode[job] for job in paid} <= {"generate", "score"}
        # an uninterrupted run of the same prompts, from scratch, writes the same
        whole = subprocess.run([*submit, "--output", str(data_dir / "whole.jsonl"), "--fresh", "--json"],
                               capture_output=True, text=True, env=ENV, timeout=300, check=False)
        assert whole.returncode == 0, whole.stderr
        assert json.loads(whole.stdout)["resumed"] == 0
        ours, theirs = _generations(data_dir / "out.jsonl"), _generations(data_dir / "whole.jsonl")
        assert len(ours) == 2 * SHARDS and all(x["tokens"] for x in ours)
        assert ours == theirs
        assert "Traceback" not in "".join(requester.output + providers[0].output + providers[1].output)
    finally:
        _stop_all(requester, *providers)


def _ledger(node: NodeProcess, kind: str) -> list[dict[str, Any]]:
    out = node.cli("ledger", "show", "--kind", kind, "--last", "0", "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _generations(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
