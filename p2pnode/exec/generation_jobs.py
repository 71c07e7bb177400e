"""Preparing a generation for the market (the requester's side, before any network): the decoder's
dimensions read from its graph (nothing of the model runs here), its hidden state exposed for the
fingerprints, and the prompts laid out as shards of a ``generate`` job.

A :class:`GenerationJob` is what :class:`~p2pnode.services.mapper.MapService` runs, as it runs a
:class:`~p2pnode.exec.model_jobs.ModelJob`: rows are prompts, put in order of length so that a
shard pads little; each shard is one job whose prompts are decoded in batches on its provider and
checked by sampled prompts (``verify = "tokens"``); outputs come back in the prompts' order, and a
prompt's draws are seeded by its number in the user's file, so sharding changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from p2pnode.exec import buckets, decoder, onnx_model
from p2pnode.exec.decoder import DecoderSpec
from p2pnode.exec.onnx_model import ModelError
from p2pnode.verify import tokens as tk

DEFAULT_BATCH = 16


@dataclass(frozen=True)
class GenerationJob:
    workload: ClassVar[str] = "generate"
    whole: ClassVar[bool] = False
    coupling: ClassVar[str] = ""
    row_independent: ClassVar[bool] = True
    verify: ClassVar[str] = "tokens"

    blob: bytes  # the model container, its hidden state exposed
    spec: DecoderSpec
    arrays: dict[str, np.ndarray]  # "prompt" int32 [n, width] (-1 after each), "index" int64: in length order
    rows: int
    max_new: int
    temperature: float
    seed: int
    eos: int
    batch: int
    flops_per_token: float
    order: np.ndarray  # row i of ``arrays`` is the user's prompt order[i]
    lengths: np.ndarray  # each prompt's tokens, in the order of ``arrays``

    @property
    def fp_k(self) -> int:
        return min(tk.FP_K, self.spec.heads * self.spec.head_dim if self.spec.hidden else self.spec.vocab)

    def settings(self) -> bytes:
        """What besides the model and prompts makes the job's answer (a map's identity)."""
        return json.dumps([self.max_new, self.temperature, self.seed, self.eos, self.batch]).encode()

    def shard(self, start: int, stop: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(params, inputs) of prompts ``start:stop`` as a ``generate`` job."""
        width = max(1, int(self.lengths[start:stop].max()))
        prompt = np.ascontiguousarray(self.arrays["prompt"][start:stop, :width])
        tokens = int(self.lengths[start:stop].sum()) + (stop - start) * self.max_new
        params: dict[str, Any] = {
            "model_bytes": len(self.blob), "prompts": stop - start, "prompt_len": width, "max_new": self.max_new,
            "temperature": self.temperature, "seed": self.seed, "eos": self.eos, "batch": self.batch,
            "kv": self.spec.to_wire(), "fp_k": self.fp_k, "gflop": round(self.flops_per_token * tokens / 1e9, 9),
            "mode": "generate", "inputs": "blob"}
        inputs = {"model": np.frombuffer(self.blob, dtype=np.uint8), "in.prompt": prompt,
                  "in.index": np.ascontiguousarray(self.arrays["index"][start:stop])}
        return params, inputs

    def restore(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return buckets.restore(outputs, self.order)

    def gflop(self) -> float:
        return self.flops_per_token * (int(self.lengths.sum()) + self.rows * self.max_new) / 1e9


def prepare(raw: bytes, external: Mapping[str, bytes], prompts: Sequence[Sequence[int]], *, max_new: int,
            temperature: float = 0.0, seed: int = 0, eos: int = -1, batch: int = DEFAULT_BATCH) -> GenerationJob:
    """The job of ``prompts`` (token ids) through the decoder export ``raw`` (checked, its hidden
    state exposed, packed with its ``external`` data)."""
    import onnx

    if not prompts:
        raise ModelError("there are no prompts")
    if any(len(p) == 0 for p in prompts):
        raise ModelError("a prompt has no tokens")
    model = onnx.load_model_from_string(raw)
    onnx_model._inline_external(model, external)
    decoder.expose_hidden(model)
    info = onnx_model.check_model(model)
    dspec = decoder.spec(info)
    if eos >= dspec.vocab or any(t < 0 or t >= dspec.vocab for p in prompts for t in p):
        raise ModelError(f"a token is outside the model's vocabulary of {dspec.vocab}")
    weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) >= 2)
    blob = onnx_model.pack(model.SerializeToString())
    lens = np.array([len(p) for p in prompts], dtype=np.int64)
    width = int(lens.max())
    table = np.full((len(prompts), width), -1, np.int32)
    for i, p in enumerate(prompts):
        table[i, :len(p)] = p
    order = np.argsort(lens, kind="stable")
    arrays: dict[str, np.ndarray] = {"prompt": np.ascontiguousarray(table[order]), "index": order.astype(np.int64)}
    attention = 4 * dspec.layers * dspec.heads * dspec.head_dim * (width + max_new)
    return GenerationJob(blob, dspec, arrays, len(prompts), max_new, float(temperature), int(seed), int(eos),
                         int(batch), 2.0 * weights + attention, order, lens[order])


def map_key(job: Any) -> bytes:
    """The settings a job adds to its map's identity (none for a row job)."""
    settings = getattr(job, "settings", None)
    return hashlib.sha256(settings()).digest() if settings is not None else b""
