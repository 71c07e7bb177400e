"""Transformers across real nodes on loopback: an encoder export embeds a tokenized text dataset
through ``map`` (bucketed by length, outputs in document order, equal to direct ONNX Runtime)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnxruntime as ort

from p2pnode import text_data
from p2pnode import transformer_models as tm
from p2pnode.exec import model_jobs, onnx_model
from tests.integration.swarm import all_list_all, swarm

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
