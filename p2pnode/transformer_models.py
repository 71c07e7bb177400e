"""Tiny transformers and a tokenizer built on this machine (no model hub is reachable): the tests'
and the demo's stand-ins for people's exported models.

* :func:`encoder` -- a BERT-style encoder as Hugging Face Optimum exports one: int64
  ``input_ids``, ``attention_mask`` (and optionally ``token_type_ids``), dynamic batch and sequence
  axes; outputs a mean-pooled ``embedding`` ``[batch, dim]`` and ``logits`` ``[batch, classes]``.
* :func:`decoder` -- a GPT-2-style decoder exported *with past*: inputs ``input_ids``,
  ``attention_mask`` ``[batch, past + seq]``, ``position_ids`` and ``past_key_values.{i}.key`` /
  ``.value`` ``[batch, heads, past, head_dim]``; outputs ``logits`` ``[batch, seq, vocab]`` and
  ``present.{i}.key`` / ``.value``. The names are Optimum's, so a real export runs the same way.
* :func:`tokenizer` -- a byte-level BPE tokenizer trained with ``tokenizers`` on the docstrings of
  Python's own standard library (text every Python ships).

Weights are seeded random numbers, scaled so that logits spread (a tiny random model still makes
clear choices). Each builder returns the serialized ``ModelProto``; :func:`write_model_dir` lays
out a model folder as ``submit generate`` / ``submit map --text`` read it; :func:`genai_config` is
what ONNX Runtime GenAI needs beside the same decoder (the llm benchmark measures it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
NEG = -1e9  # an attention score that softmax turns into zero


@dataclass(frozen=True)
class Config:
    vocab: int = 384
    dim: int = 32
    heads: int = 2
    layers: int = 2
    ffn: int = 64
    max_positions: int = 256
    classes: int = 4
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class _Graph:
    """A graph under construction: nodes, initializers and fresh names."""

    def __init__(self, cfg: Config, dtype: str = "float32") -> None:
        self.cfg, self.nodes, self.inits = cfg, [], []  # type: ignore[var-annotated]
        self.rng = np.random.default_rng(cfg.seed)
        self.dtype = dtype  # every float tensor's type: weights, constants, activations, the cache
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def op(self, op: str, inputs: list[str], hint: str = "", **attrs: Any) -> str:
        from onnx import helper

        out = self.name(hint or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, value: Any, dtype: Any = None, hint: str = "c") -> str:
        """An initializer; a float one (``dtype`` None) is drawn in float32 and rounded once to
        the graph's type, so the variants of one seed hold the same weights, rounded."""
        from onnx import numpy_helper

        name = self.name(hint)
        if dtype is None and self.dtype == "bfloat16":
            self.inits.append(_bfloat16(np.asarray(value, dtype=np.float32), name))
        else:
            self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype or self.dtype), name))
        return name

    def weight(self, shape: tuple[int, ...], scale: float, hint: str) -> str:
        return self.const(self.rng.standard_normal(shape) * scale, hint=hint)

    def layer_norm(self, x: str, hint: str) -> str:
        d = self.cfg.dim
        g = self.const(1.0 + 0.1 * self.rng.standard_normal(d), hint=hint + ".g")
        b = self.const(0.1 * self.rng.standard_normal(d), hint=hint + ".b")
        return self.op("LayerNormalization", [x, g, b], hint, axis=-1, epsilon=1e-5)

    def linear(self, x: str, fan_in: int, fan_out: int, hint: str, gain: float = 1.0) -> str:
        w = self.weight((fan_in, fan_out), gain / fan_in ** 0.5, hint + ".w")
        b = self.const(0.02 * self.rng.standard_normal(fan_out), hint=hint + ".b")
        return self.op("Add", [self.op("MatMul", [x, w], hint + ".mm"), b], hint)

    def gelu(self, x: str) -> str:
        half = self.op("Mul", [x, self.const(0.5)])
        erf = self.op("Erf", [self.op("Mul", [x, self.const(2 ** -0.5)])])
        return self.op("Mul", [half, self.op("Add", [erf, self.const(1.0)])])

    def heads(self, x: str) -> str:
        """[b, s, dim] → [b, heads, s, head_dim]."""
        c = self.cfg
        shaped = self.op("Reshape", [x, self.const([0, 0, c.heads, c.head_dim], np.int64)])
        return self.op("Transpose", [shaped], perm=[0, 2, 1, 3])

    def merge(self, x: str) -> str:
        """[b, heads, s, head_dim] → [b, s, dim]."""
        t = self.op("Transpose", [x], perm=[0, 2, 1, 3])
        return self.op("Reshape", [t, self.const([0, 0, self.cfg.dim], np.int64)])

    def attend(self, q: str, k: str, v: str, bias: str) -> str:
        kt = self.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = self.op("Mul", [self.op("MatMul", [q, kt]), self.const(self.cfg.head_dim ** -0.5)])
        probs = self.op("Softmax", [self.op("Add", [scores, bias])], axis=-1)
        return self.op("MatMul", [probs, v])

    def mlp(self, x: str, hint: str) -> str:
        c = self.cfg
        return self.linear(self.gelu(self.linear(x, c.dim, c.ffn, hint + ".up")), c.ffn, c.dim, hint + ".down")

    def dim_of(self, x: str, axis: int) -> str:
        """A tensor's size along ``axis``, as a 0-d int64."""
        shape = self.op("Shape", [x])
        return self.op("Gather", [shape, self.const(axis, np.int64)], axis=0)

    def model(self, name: str, inputs: list[Any], outputs: list[Any]) -> bytes:
        from onnx import checker, helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="p2pnode")
        model.ir_version = 8
        checker.check_model(model)
        return bytes(model.SerializeToString())


def encoder(cfg: Config = Config(), *, token_types: bool = True) -> bytes:
    """A BERT-style encoder (post-LayerNorm blocks): token, position and type embeddings; masked
    self-attention; outputs the attention-masked mean of the last hidden states (``embedding``)
    and a classifier's ``logits`` over it."""
    from onnx import TensorProto, helper

    g = _Graph(cfg)
    d = cfg.dim
    wte = g.weight((cfg.vocab, d), 1.0, "word")
    wpe = g.weight((cfg.max_positions, d), 0.5, "pos")
    x = g.op("Gather", [wte, "input_ids"], axis=0)
    seq = g.dim_of("input_ids", 1)
    positions = g.op("Range", [g.const(0, np.int64), seq, g.const(1, np.int64)])
    x = g.op("Add", [x, g.op("Gather", [wpe, positions], axis=0)])
    if token_types:
        wtt = g.weight((2, d), 0.5, "type")
        x = g.op("Add", [x, g.op("Gather", [wtt, "token_type_ids"], axis=0)])
    x = g.layer_norm(x, "emb.ln")
    maskf = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    # [b, s] → [b, 1, 1, s]: 0 where attended, NEG where padding
    bias = g.op("Mul", [g.op("Sub", [g.const(1.0), maskf]), g.const(NEG)])
    bias = g.op("Unsqueeze", [bias, g.const([1, 2], np.int64)])
    for i in range(cfg.layers):
        q, k, v = (g.heads(g.linear(x, d, d, f"L{i}.{n}")) for n in "qkv")
        attn = g.linear(g.merge(g.attend(q, k, v, bias)), d, d, f"L{i}.o")
        x = g.layer_norm(g.op("Add", [x, attn]), f"L{i}.ln1")
        x = g.layer_norm(g.op("Add", [x, g.mlp(x, f"L{i}.mlp")]), f"L{i}.ln2")
    weights = g.op("Unsqueeze", [maskf, g.const([2], np.int64)])  # [b, s, 1]
    summed = g.op("ReduceSum", [g.op("Mul", [x, weights]), g.const([1], np.int64)], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [weights, g.const([1], np.int64)], keepdims=0), g.const(1.0)])
    g.op("Div", [summed, count], "embedding")
    g.nodes[-1].output[0] = "embedding"  # the graph's output names, as an export gives them
    g.linear("embedding", d, cfg.classes, "cls")
    g.nodes[-1].output[0] = "logits"
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask", *(["token_type_ids"] if token_types else []))]
    outs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", d]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", cfg.classes])]
    return g.model("encoder", ins, outs)


def decoder(cfg: Config = Config(), *, logit_gain: float = 4.0, dtype: str = "float32") -> bytes:
    """A GPT-2-style decoder with past key/values (pre-LayerNorm blocks, learned positions), its
    weights, cache and logits in ``dtype`` (float32, float16 or bfloat16: the same weights as
    float32's, rounded)."""
    from onnx import TensorProto, helper

    g = _Graph(cfg, dtype)
    ftype = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}[dtype]
    neg = -3e4 if dtype == "float16" else NEG  # finite in float16, so a row that sees only padding stays finite
    d, h, hd = cfg.dim, cfg.heads, cfg.head_dim
    wte = g.weight((cfg.vocab, d), 1.0, "word")
    wpe = g.weight((cfg.max_positions, d), 0.5, "pos")
    x = g.op("Add", [g.op("Gather", [wte, "input_ids"], axis=0), g.op("Gather", [wpe, "position_ids"], axis=0)])
    # which keys each query may see: causal (key j <= past + query i) and not padding
    past = g.dim_of("past_key_values.0.key", 2)
    total = g.dim_of("attention_mask", 1)
    keys = g.op("Range", [g.const(0, np.int64), total, g.const(1, np.int64)])
    queries = g.op("Unsqueeze", [g.op("Range", [past, total, g.const(1, np.int64)]), g.const([1], np.int64)])
    causal = g.op("LessOrEqual", [keys, queries])  # [s, T]
    padded = g.op("Cast", [g.op("Unsqueeze", ["attention_mask", g.const([1, 2], np.int64)])], to=TensorProto.BOOL)
    allowed = g.op("And", [g.op("Unsqueeze", [causal, g.const([0, 1], np.int64)]), padded])  # [b, 1, s, T]
    bias = g.op("Where", [allowed, g.const(0.0), g.const(neg)])
    outs = [helper.make_tensor_value_info("logits", ftype, ["batch", "sequence", cfg.vocab])]
    ins = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
           helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
           helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"])]
    for i in range(cfg.layers):
        a = g.layer_norm(x, f"L{i}.ln1")
        q, k, v = (g.heads(g.linear(a, d, d, f"L{i}.{n}")) for n in "qkv")
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        k = g.op("Concat", [pk, k], axis=2)
        v = g.op("Concat", [pv, v], axis=2)
        g.nodes.append(_identity(k, f"present.{i}.key"))
        g.nodes.append(_identity(v, f"present.{i}.value"))
        x = g.op("Add", [x, g.linear(g.merge(g.attend(q, k, v, bias)), d, d, f"L{i}.o")])
        x = g.op("Add", [x, g.mlp(g.layer_norm(x, f"L{i}.ln2"), f"L{i}.mlp")])
        for n in (pk, pv):
            ins.append(helper.make_tensor_value_info(n, ftype, ["batch", h, "past", hd]))
        for n in (f"present.{i}.key", f"present.{i}.value"):
            outs.append(helper.make_tensor_value_info(n, ftype, ["batch", h, "total", hd]))
    final = g.layer_norm(x, "ln_f")
    head = g.weight((d, cfg.vocab), logit_gain / d ** 0.5, "lm_head")
    g.nodes.append(_matmul(final, head, "logits"))
    return g.model("decoder", ins, outs)


def _bfloat16(value: np.ndarray, name: str) -> Any:
    """A bfloat16 initializer: float32 rounded to its top 16 bits (to nearest, ties to even)."""
    from onnx import TensorProto, helper

    bits = np.ascontiguousarray(value, dtype=np.float32).view(np.uint32)
    top = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return helper.make_tensor(name, TensorProto.BFLOAT16, value.shape, top.tobytes(), raw=True)


def _identity(x: str, out: str) -> Any:
    from onnx import helper

    return helper.make_node("Identity", [x], [out], name=out)


def _matmul(a: str, b: str, out: str) -> Any:
    from onnx import helper

    return helper.make_node("MatMul", [a, b], [out], name=out)


# the tokenizer ------------------------------------------------------------------------------------

def corpus(limit: int = 400_000) -> list[str]:
    """Lines of the docstrings of Python's own standard library: text every Python ships."""
    import importlib
    import inspect

    names = ["os", "re", "json", "math", "random", "string", "textwrap", "collections", "itertools",
             "functools", "pathlib", "subprocess", "argparse", "logging", "unittest", "datetime", "decimal",
             "fractions", "statistics", "heapq", "bisect", "email", "http", "urllib", "csv", "sqlite3",
             "threading", "queue", "socket", "shutil", "tempfile", "typing", "dataclasses", "enum", "pickle"]
    lines: list[str] = []
    size = 0
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for obj in [module, *(v for _, v in sorted(vars(module).items()) if inspect.isclass(v) or inspect.isfunction(v))]:
            for line in (inspect.getdoc(obj) or "").splitlines():
                line = line.strip()
                if len(line) > 20:
                    lines.append(line)
                    size += len(line)
                    if size >= limit:
                        return lines
    return lines


def tokenizer(vocab: int = 384) -> Any:
    """A byte-level BPE tokenizer of ``vocab`` tokens trained on :func:`corpus`; token 0 is
    ``<|endoftext|>`` (end of text and padding), 1 ``[CLS]``, 2 ``[SEP]``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "[CLS]", "[SEP]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def write_model_dir(folder: Path, model: bytes, tok: Any, *, eos: int | None = 0) -> Path:
    """A model folder: ``model.onnx``, ``tokenizer.json`` and (for a decoder) ``config.json`` with
    its ``eos_token_id``, as an Optimum export lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model)
    tok.save(str(folder / "tokenizer.json"))
    if eos is not None:
        (folder / "config.json").write_text(json.dumps({"eos_token_id": eos}))
    return folder


def genai_config(cfg: Config, *, max_length: int, eos: int = 0, pad: int = 0) -> dict[str, Any]:
    """``genai_config.json`` for ONNX Runtime GenAI over :func:`decoder`'s ``model.onnx``, unchanged.

    GenAI's ``gpt2`` type expects the older export with one ``past_{i}`` tensor per layer; its
    decoder-only types (``llama`` here) read Optimum's names as :func:`decoder` gives them. GenAI
    keeps its own cache (``past_present_share_buffer`` off: the graph concatenates its past rather
    than writing into a buffer of the maximum length, as GroupQueryAttention would)."""
    return {
        "model": {
            "type": "llama", "vocab_size": cfg.vocab, "context_length": cfg.max_positions,
            "bos_token_id": pad, "eos_token_id": eos, "pad_token_id": pad,
            "decoder": {
                "filename": "model.onnx", "head_size": cfg.head_dim, "hidden_size": cfg.dim,
                "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.heads,
                "num_hidden_layers": cfg.layers, "session_options": {"log_id": "p2pnode", "provider_options": []},
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "max_length": max_length,
                   "past_present_share_buffer": False},
    }
