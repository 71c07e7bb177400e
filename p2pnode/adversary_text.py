"""Dishonest providers of generated text (``generate`` jobs), for tests, scenarios and benchmarks
of the teacher-forced check (:mod:`p2pnode.verify.tokens`). :class:`~p2pnode.adversary.Adversary`
calls these; each returns what the cheater runs or sends instead of the honest thing.

Before the run (the model or the prompts it is given, :func:`cheat_inputs`):

* ``othermodel`` -- another model of the same shape: every weight matrix moved by 5 % noise (a
  differently trained or fine-tuned model);
* ``fewerlayers`` -- the last transformer block skipped: the weights of its matrix products
  zeroed, so only its biases remain (a cheaper, shallower model);
* ``lowprec`` -- lower precision than offered: every float32 weight rounded to bfloat16;
* ``halfprec`` -- the whole graph run in float16 (weights, activations, the cache), cast from and to
  float32 at its inputs and outputs: a provider that offers float32 and computes in half precision;
* ``prompt`` -- on a fraction of prompts, the prompt altered (its first token replaced).

After the run (what it commits, :func:`cheat_rows`), on a fraction of prompts:

* ``fabricate`` -- made-up tokens and fingerprints in place of the model's;
* ``truncate`` -- the generation cut short, ended with the end-of-text token as if the model
  stopped there.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np

MODEL_MODES = ("othermodel", "fewerlayers", "lowprec", "halfprec")
PROMPT_MODES = ("prompt", "fabricate", "truncate")


def cheat_inputs(mode: str, fraction: float, params: Mapping[str, Any], arrays: dict[str, np.ndarray],
                 rng: random.Random) -> dict[str, np.ndarray]:
    """The inputs a ``generate`` cheater runs on (``arrays`` unchanged for the other modes)."""
    if mode in MODEL_MODES:
        blob = np.ascontiguousarray(arrays["model"]).tobytes()
        return dict(arrays, model=np.frombuffer(_other_model(mode, blob, rng), dtype=np.uint8))
    if mode == "prompt" and params.get("mode", "generate") == "generate":
        prompt = np.array(arrays["in.prompt"], copy=True)
        vocab = int(params["kv"][3])
        for i in _some(len(prompt), fraction, rng):
            prompt[i, 0] = (int(prompt[i, 0]) + 1 + rng.randrange(vocab - 1)) % vocab
        return dict(arrays, **{"in.prompt": prompt})
    return arrays


def cheat_rows(mode: str, fraction: float, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
               rng: random.Random) -> dict[str, np.ndarray]:
    """The rows a ``generate`` cheater commits to (``arrays`` unchanged for the other modes)."""
    out = {k: np.array(v, copy=True) for k, v in arrays.items()}
    if mode not in ("fabricate", "truncate") or params.get("mode", "generate") != "generate":
        return out
    vocab, eos, max_new = int(params["kv"][3]), int(params["eos"]), int(params["max_new"])
    g = np.random.default_rng(rng.getrandbits(64))
    for i in _some(len(out["length"]), fraction, rng):
        length = int(out["length"][i])
        if mode == "fabricate":
            made = g.integers(0, vocab, size=length)
            if eos >= 0:  # well formed: the end-of-text token only where a generation ends
                made[made == eos] = (eos + 1) % vocab
                if length < max_new:
                    made[length - 1] = eos
            out["tokens"][i, :length] = made
            out["fp_val"][i] = g.standard_normal(out["fp_val"][i].shape).astype(np.float32)
        elif eos >= 0 and length > 1:
            keep = rng.randrange(1, length)
            out["tokens"][i, keep - 1] = eos
            out["tokens"][i, keep:] = -1
            out["margin"][i, keep:] = 0
            out["length"][i] = keep
            gone = -(-keep // 32)
            out["fp_idx"][i, gone:] = 0
            out["fp_val"][i, gone:] = 0
    return out


def _some(n: int, fraction: float, rng: random.Random) -> list[int]:
    return rng.sample(range(n), max(1, round(fraction * n))) if n and fraction > 0 else []


def _other_model(mode: str, blob: bytes, rng: random.Random) -> bytes:
    from onnx import numpy_helper

    from p2pnode.exec import onnx_model

    model = onnx_model.load(blob)
    if mode == "halfprec":
        return onnx_model.pack(_half(model).SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    g = np.random.default_rng(rng.getrandbits(64))
    targets = [t for t in model.graph.initializer if len(t.dims) >= 2 and t.data_type == 1]
    if mode == "fewerlayers":
        weights = [n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
        layers = sum(1 for i in model.graph.input if i.name.startswith("past_key_values.") and
                     i.name.endswith(".key")) or 1
        per_layer = (len(weights) - 1) // layers  # the last product is the language-model head
        targets = [inits[w] for w in weights[-1 - per_layer:-1]]
    for t in targets:
        w = numpy_helper.to_array(t).astype(np.float32)
        if mode == "othermodel":
            w = w * (1 + 0.05 * g.standard_normal(w.shape)).astype(np.float32)
        elif mode == "fewerlayers":
            w = np.zeros_like(w)
        else:  # bfloat16: the top 16 bits, rounded to nearest even
            bits = w.view(np.uint32)
            w = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
        t.CopyFrom(numpy_helper.from_array(w, t.name))
    return onnx_model.pack(model.SerializeToString())


def _half(model: Any) -> Any:
    """``model`` computing in float16: float32 initializers rounded (clipped to float16's range),
    casts to float32 made casts to float16, every float32 input cast down where it enters and
    every float32 output cast up where it leaves, so its signature is unchanged."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    for t in graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            w = np.clip(numpy_helper.to_array(t), -65504, 65504).astype(np.float16)
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
    casts = []
    for x in graph.input:
        if x.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = x.name + ".half"
            for node in graph.node:
                node.input[:] = [inner if i == x.name else i for i in node.input]
            casts.append(helper.make_node("Cast", [x.name], [inner], name=inner, to=TensorProto.FLOAT16))
    for y in graph.output:
        if y.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = y.name + ".half"
            for node in graph.node:
                node.output[:] = [inner if o == y.name else o for o in node.output]
                node.input[:] = [inner if i == y.name else i for i in node.input]
            casts.append(helper.make_node("Cast", [inner], [y.name], name=y.name + ".float", to=TensorProto.FLOAT))
    nodes = [*casts[:sum(1 for c in casts if c.output[0].endswith(".half"))], *graph.node,
             *(c for c in casts if not c.output[0].endswith(".half"))]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model
