"""Transformers across real nodes on loopback: an encoder export embeds a tokenized text dataset
through ``map`` (bucketed by length, outputs in document order, equal to direct ONNX Runtime)."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import trio

from p2pnode import text_data
from p2pnode import transformer_models as tm
from p2pnode.control import work
from p2pnode.exec import generation_jobs, model_jobs, onnx_model
from p2pnode.node import Node
from p2pnode.services.mapper import MapService
from p2pnode.wire.peer_id import from_base58
from tests.integration.swarm import all_list_all, node_config, start_node, swarm

RICH = 10**9


@functools.cache
def tokenizer() -> Any:
    return tm.tokenizer()


def documents(n: int, seed: int = 1) -> list[str]:
    lines = tm.corpus(60_000)
    g = np.random.default_rng(seed)
    return [" ".join(lines[int(i)] for i in g.integers(0, len(lines), size=int(k)))
            for k in g.integers(1, 4, size=n)]


async def test_an_encoder_embeds_a_text_dataset_bucketed_across_providers_in_document_order() -> None:
    raw = tm.encoder(tm.Config(seed=3))
    docs = documents(150)
    arrays, notes = text_data.encode(tokenizer(), docs, ["input_ids", "attention_mask", "token_type_ids"], 128)
    assert "150 documents tokenized" in notes[0]
    job = model_jobs.prepare(onnx_model.pack(raw), arrays)
    assert job.row_independent and job.verify == "rows"  # the coupling detector confirms rows are apart
    assert job.order is not None and list(job.lengths) == sorted(arrays["attention_mask"].sum(1))
    direct = ort.InferenceSession(raw).run(None, arrays)
    async with swarm(3, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester = nodes[0].node
        result = await requester.maps.run(job, shard_rows=30, providers=2, max_price=RICH, deadline_s=60)
        assert result.shards == 5 and sum(result.by_provider.values()) == 150
        # shards are as long as their longest document: padding does not cost compute
        widths = sorted(r.params["feeds"]["input_ids"][1][0] for r in requester.jobs.records
                        if r.role == "requester" and r.workload == "onnx")
        assert widths[0] < widths[-1] == arrays["input_ids"].shape[1]
    assert np.allclose(result.outputs["embedding"], direct[0], rtol=1e-4, atol=1e-5)
    assert np.allclose(result.outputs["logits"], direct[1], rtol=1e-4, atol=1e-5)


def greedy(raw: bytes, prompt: list[int], max_new: int, eos: int) -> list[int]:
    """Direct greedy decoding, the whole sequence recomputed at each step (no cache)."""
    sess = ort.InferenceSession(raw)
    seq, made = list(prompt), []
    for _ in range(max_new):
        feed = {"input_ids": np.array([seq], np.int64), "attention_mask": np.ones((1, len(seq)), np.int64),
                "position_ids": np.arange(len(seq), dtype=np.int64)[None]}
        for name in (i.name for i in sess.get_inputs() if i.name.startswith("past_key_values")):
            feed[name] = np.zeros((1, 2, 0, 16), np.float32)
        tok = int(np.argmax(sess.run(["logits"], feed)[0][0, -1]))
        made.append(tok)
        seq.append(tok)
        if tok == eos:
            break
    return made


def prompts(n: int, seed: int = 2) -> list[list[int]]:
    enc = tokenizer().encode_batch(documents(n, seed))
    return [list(e.ids)[:24] for e in enc]


@asynccontextmanager
async def market(specs: list[dict[str, Any]]) -> AsyncIterator[tuple[Node, list[Node]]]:
    """A requester on 127.0.0.60 and a provider per spec on 127.0.0.61, .62, ...: addresses of their
    own, so that a checker is independent of the provider it checks."""
    async with trio.open_nursery() as nursery:
        providers = [(await start_node(nursery, node_config(listen=[f"/ip4/127.0.0.{61 + i}/tcp/0"], **flags))).node
                     for i, flags in enumerate(specs)]
        requester = (await start_node(nursery, node_config(listen=["/ip4/127.0.0.60/tcp/0"], provide=False,
                                                           bootstrap=[p.addrs()[0] for p in providers]))).node
        await requester.wait_until(lambda: len(requester.table) >= len(providers), 30)
        yield requester, providers
        nursery.cancel_scope.cancel()


async def test_generation_across_providers_equals_direct_greedy_decoding_token_for_token() -> None:
    raw = tm.decoder(tm.Config(seed=5))
    ps = prompts(12)
    job = generation_jobs.prepare(raw, {}, ps, max_new=20, eos=0, batch=4)
    async with market([{}, {}, {}]) as (requester, _):
        events: list[dict[str, Any]] = []
        result = await requester.maps.run(job, shard_rows=4, providers=2, max_price=RICH, deadline_s=60,
                                          on_event=events.append)
        outcomes = [r.outcome for r in requester.jobs.records if r.role == "requester" and r.workload == "generate"
                    and r.params.get("mode") == "generate"]
    assert result.shards == 3 and result.verify == "tokens" and result.checked_rows > 0
    # each shard checked by an independent checker's teacher-forced pass over sampled prompts
    assert len(outcomes) == 3 and all("teacher-forced pass" in o and o.startswith("verified") and "here" not in o
                                      for o in outcomes), outcomes
    assert any(e.get("tokens_per_s", 0) > 0 for e in events if e.get("event") == "shard")
    tokens, length = result.outputs["tokens"], result.outputs["length"]
    for i, p in enumerate(ps):  # in prompt order, each as direct decoding makes it
        assert list(tokens[i, :length[i]]) == greedy(raw, p, 20, 0)


async def test_submit_generate_saves_prompts_in_order_and_a_second_run_pays_nothing(tmp_path: Path) -> None:
    raw = tm.decoder(tm.Config(seed=6))
    folder = tm.write_model_dir(tmp_path / "gpt", raw, tokenizer(), eos=0)
    texts = documents(6, seed=4)
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": t[:80]}) for t in texts) + "\n")
    out = tmp_path / "out.jsonl"
    request = {"model": str(folder), "prompts": str(tmp_path / "prompts.jsonl"), "output": str(out), "max_new": 12,
               "max_price": RICH, "providers": 2, "deadline": 60}
    events: list[dict[str, Any]] = []

    async def emit(e: dict[str, Any]) -> None:
        events.append(e)

    async with market([{}, {}]) as (requester, _):
        first = await work.run_generate(requester.maps, request, emit)
        again = await work.run_generate(requester.maps, request, emit)
    assert first["generate"]["prompts"] == 6 and first["generate"]["tokens"] == first["saved"]["tokens"] > 0
    assert any(e.get("event") == "note" and "6 prompts tokenized" in e["text"] for e in events)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["prompt"] for x in lines] == [t[:80] for t in texts]
    for x in lines:
        ids = tokenizer().encode(x["prompt"]).ids
        assert x["tokens"] == greedy(raw, ids, 12, 0) and x["text"] == tokenizer().decode(x["tokens"])
    assert first["paid"]["total"] > 0 and again["already_done"] and again["paid"]["total"] == 0


async def test_a_provider_running_another_model_is_caught_and_its_shard_redone() -> None:
    """Four providers on addresses of their own; the first runs a shallower model than the job's.
    The checker's teacher-forced pass refutes its committed tokens, a referee agrees, the cheat goes
    to the ledger, and the shard is done again by an honest provider."""
    raw = tm.decoder(tm.Config(seed=5))
    ps = prompts(8, seed=3)
    job = generation_jobs.prepare(raw, {}, ps, max_new=16, eos=0, batch=4)
    async with market([{"adversary": "fewerlayers:1"}, {}, {}, {}]) as (requester, providers):
        cheater = providers[0].identity.peer_id
        maps = MapService(submit=requester.jobs.submit,
                          candidates=lambda *a: sorted(requester.jobs.candidates(*a), key=lambda ad: ad.peer_id != cheater),
                          now=requester.now, state_dir=requester.config.data_dir / "maps")
        result = await maps.run(job, shard_rows=8, providers=1, max_price=RICH, deadline_s=60)
        disputes = list(requester.trust.ledger.entries(kind="dispute"))  # type: ignore[union-attr]
        assert disputes and disputes[0].peer == cheater and disputes[0].data["wrong"] == "provider"
        assert requester.trust.distrusted(cheater)
    assert result.retries >= 1 and cheater not in {from_base58(p) for p in result.by_provider}
    tokens, length = result.outputs["tokens"], result.outputs["length"]
    assert all(list(tokens[i, :length[i]]) == greedy(raw, p, 16, 0) for i, p in enumerate(ps))
