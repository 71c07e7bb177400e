"""The ``generate`` workload: a decoder-only transformer generating text for a shard of prompts,
or (``mode = "score"``) a checker's teacher-forced pass over prompts and committed tokens
(``specs/model-jobs.md``, Generation; the rows and the rule: :mod:`p2pnode.verify.tokens`).

Parameters (public, in the request for bids):

* ``model_bytes``; ``prompts`` (rows) and ``prompt_len`` (the width of ``in.prompt``: tokens, then
  ``-1``); ``max_new`` tokens at most per prompt; ``temperature`` (0: greedy) and ``seed``;
  ``eos`` (the end-of-text token, ``-1``: none); ``batch`` (prompts decoded together);
* ``kv`` = ``[layers, heads, head_dim, vocab, dtype]``: the model's dimensions, which the worker
  checks against the model before it runs; admission counts the cache from them
  (:meth:`memory`);
* ``fp_k``: fingerprint entries; ``gflop``: the requester's estimate; ``mode``: ``generate`` or
  ``score``.

Inputs: ``model``, ``in.prompt`` int32 ``[prompts, prompt_len]``, ``in.index`` int64 ``[prompts]``
(each prompt's number in the whole job, which seeds its draws), and for ``score`` ``in.tokens``
int32 ``[prompts, max_new]``: the committed tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from p2pnode.errors import WorkloadError
from p2pnode.exec.onnx_model import MAX_MODEL_BYTES, ModelError
from p2pnode.exec.work import Output
from p2pnode.exec.work import float_param as _float
from p2pnode.exec.work import int_param as _int
from p2pnode.exec.work import refuse_unknown as _unknown
from p2pnode.verify import tokens as tk

MAX_PROMPTS = 1_000_000
MAX_PROMPT_LEN = 1 << 16
MAX_NEW = 1 << 14
MAX_BATCH = 512
MAX_KV_BYTES = 64 << 30
MODES = ("generate", "score")


class GenerateWorkload:
    name = "generate"
    KEYS = frozenset({"model_bytes", "prompts", "prompt_len", "max_new", "temperature", "seed", "eos", "batch",
                      "kv", "fp_k", "gflop", "mode", "inputs"})

    def check(self, params: Mapping[str, Any]) -> dict[str, Any]:
        _unknown(params, set(self.KEYS))
        if params.get("inputs", "blob") != "blob":
            raise WorkloadError("generation jobs take their model and prompts as blobs (inputs=blob)")
        mode = params.get("mode", "generate")
        if mode not in MODES:
            raise WorkloadError(f"mode must be one of {MODES}")
        p: dict[str, Any] = {
            "model_bytes": _int(params, "model_bytes", 1, MAX_MODEL_BYTES),
            "prompts": _int(params, "prompts", 1, MAX_PROMPTS),
            "prompt_len": _int(params, "prompt_len", 1, MAX_PROMPT_LEN),
            "max_new": _int(params, "max_new", 1, MAX_NEW),
            "temperature": _float(params, "temperature", 0.0, 100.0, 0.0),
            "seed": _int(params, "seed", 0, 2**63 - 1, 0),
            "eos": _int(params, "eos", -1, 1 << 24, -1),
            "batch": _int(params, "batch", 1, MAX_BATCH, 16),
            "fp_k": _int(params, "fp_k", 1, 256, tk.FP_K),
            "gflop": _float(params, "gflop", 0.0, 1e12, 0.0),
            "mode": mode, "inputs": "blob",
        }
        kv = params.get("kv")
        if not isinstance(kv, (list, tuple)) or len(kv) != 5 or kv[4] not in tk.TOLERANCE:
            raise WorkloadError(f"kv must be [layers, heads, head_dim, vocab, dtype] with dtype one of "
                                f"{sorted(tk.TOLERANCE)}")
        dims = [_int({"d": v}, "d", 1, 1 << 24) for v in kv[:4]]
        p["kv"] = [*dims, str(kv[4])]
        if self.kv_bytes(p) > MAX_KV_BYTES:
            raise WorkloadError(f"the key/value cache of this job would take {self.kv_bytes(p)} bytes: "
                                "fewer prompts a batch, or fewer tokens")
        return p

    @staticmethod
    def kv_bytes(p: Mapping[str, Any]) -> int:
        """The cache at its largest: every layer's keys and values for a batch at full length, twice
        (the step's past and its present are both alive)."""
        layers, heads, head_dim, _, dtype = p["kv"]
        tokens = p["prompt_len"] + p["max_new"]
        batch = min(p["batch"], p["prompts"])
        return 2 * 2 * layers * heads * head_dim * batch * tokens * _itemsize(dtype)

    def input_spec(self, p: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        spec: dict[str, tuple[tuple[int, ...], str]] = {
            "model": ((p["model_bytes"],), "uint8"), "in.prompt": ((p["prompts"], p["prompt_len"]), "int32"),
            "in.index": ((p["prompts"],), "int64")}
        if p["mode"] == "score":
            spec["in.tokens"] = ((p["prompts"], p["max_new"]), "int32")
        return spec

    def flops(self, p: Mapping[str, Any]) -> float:
        return float(p["gflop"]) * 1e9

    def memory(self, p: Mapping[str, Any]) -> int:
        """The model (loaded, and its session's copies), the cache from the model's dimensions and
        the longest sequence, and the logits of a prefill (or of a whole teacher-forced pass)."""
        vocab = p["kv"][3]
        batch = min(p["batch"], p["prompts"])
        logits = batch * (p["prompt_len"] + p["max_new"]) * vocab * 4 * 2
        return 4 * p["model_bytes"] + self.kv_bytes(p) + logits + self.output_bytes(p) + (64 << 20)

    def comparison(self, p: Mapping[str, Any]) -> str:
        return "tokens"

    def output_bytes(self, p: Mapping[str, Any]) -> int:
        return p["prompts"] * (12 * p["max_new"] + 4 + 8 * tk.positions(p["max_new"]) * p["fp_k"])

    def run(self, p: Mapping[str, Any], ops: Any, progress: Any,
            inputs: Mapping[str, np.ndarray] | None = None) -> Output:
        from p2pnode.exec import decoder

        if inputs is None or not hasattr(ops, "session"):
            raise WorkloadError("generation runs on an ONNX Runtime backend (ort-cpu, ort-cuda)",
                                code="backend_unavailable")
        sess, info = ops.session(np.ascontiguousarray(inputs["model"]).tobytes())
        dspec = decoder.spec(info)
        if dspec.to_wire()[:5] != list(p["kv"]):
            raise ModelError(f"the model is {dspec.to_wire()} (layers, heads, head_dim, vocab, dtype), "
                             f"the job says {p['kv']}")
        prompts = np.asarray(inputs["in.prompt"])
        if prompts.size and (prompts.max() >= dspec.vocab or (prompts[:, 0] < 0).any()):
            raise WorkloadError("a prompt is empty or has tokens outside the vocabulary")
        runner = decoder.Runner(sess, dspec, device=decoder.cache_device(sess))
        common: dict[str, Any] = {"temperature": p["temperature"], "seed": p["seed"], "batch": p["batch"],
                                  "k": p["fp_k"], "pad": max(0, p["eos"]), "progress": progress}
        index = np.asarray(inputs["in.index"])
        if p["mode"] == "score":
            committed = np.asarray(inputs["in.tokens"])
            if ((committed >= dspec.vocab) | (committed < -1)).any():
                raise WorkloadError("committed tokens outside the vocabulary")
            arrays = runner.teacher(prompts, index, committed, **common)
        else:
            arrays = runner.generate(prompts, index, max_new=p["max_new"], eos=p["eos"], **common)
        return Output(arrays, {})

    def agree(self, p: Mapping[str, Any], x: Output, y: Output) -> bool:
        """``x`` stands against the reference ``y`` by :func:`p2pnode.verify.tokens.mismatches`."""
        return not tk.mismatches(x.arrays, y.arrays, tk.TOLERANCE[p["kv"][4]])


def teacher_work(params: Mapping[str, Any], inputs: Mapping[str, np.ndarray], output: Output,
                 idx: Any) -> tuple[dict[str, Any], dict[str, np.ndarray], Output]:
    """The teacher-forced pass over prompts ``idx`` of a generation job and the tokens the provider
    committed for them (a ``score`` job), and the provider's rows of those prompts."""
    ix = np.asarray(idx, dtype=np.int64)
    n = max(1, int(params["prompts"]))
    sub = dict(params, prompts=len(ix), mode="score", gflop=float(params.get("gflop", 0.0)) * len(ix) / n)
    rows = {k: np.ascontiguousarray(v[ix]) for k, v in output.arrays.items()}
    sub_inputs = {"model": inputs["model"], "in.prompt": np.ascontiguousarray(inputs["in.prompt"][ix]),
                  "in.index": np.ascontiguousarray(inputs["in.index"][ix]),
                  "in.tokens": np.ascontiguousarray(rows["tokens"]).astype(np.int32)}
    return sub, sub_inputs, Output(rows, {})


def _itemsize(dtype: str) -> int:
    return 2 if dtype in ("float16", "bfloat16") else 4
