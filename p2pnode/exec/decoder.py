"""A decoder-only transformer exported to ONNX with past key/values, run by a decode loop over
plain ONNX Runtime (``specs/model-jobs.md``, Generation).

**The export** (Hugging Face Optimum's names, as ``--task text-generation-with-past`` gives them):
inputs ``input_ids`` ``[batch, seq]``, ``attention_mask`` ``[batch, past + seq]``, optionally
``position_ids`` ``[batch, seq]``, and ``past_key_values.{i}.key`` / ``.value``
``[batch, heads, past, head_dim]`` for each layer ``i``; outputs ``logits`` ``[batch, seq, vocab]``
and ``present.{i}.key`` / ``.value``. :func:`spec` reads the dimensions (heads and head_dim must be
fixed numbers) and refuses anything else.

**The hidden state** fingerprinted is the input of the ``MatMul`` (or ``Gemm``) that makes the
logits: :func:`expose_hidden` adds it as the graph output ``p2pnode.hidden`` (the requester does it
once, so that providers and checkers run the same graph); a model whose logits come otherwise is
fingerprinted on its logits.

**Why a loop here and not ONNX Runtime GenAI** (measured: ``tools/bench/run llm``, its ``genai``
section, ``specs/model-jobs.md``): GenAI 0.18 loads the same ``model.onnx`` beside a
``genai_config.json`` and its greedy loop decodes at the speed of this one (0.99 ×), but it gives
nothing faster on CPU, and it does not serve the market: it attends to the left padding of a batch
of prompts of unequal length (its attention mask is all ones; 7 % of tokens then agree), every token
must be chosen by :func:`p2pnode.verify.tokens.choose`, seeded per prompt and position (GenAI driven
that way, each choice forced through ``set_logits``, is 0.94 ×), and people's plain exports lack
its config. The loop is short: a prefill of the left-padded batch, then one step per token with the
cache fed back (``past`` ← ``present``); on CUDA the cache stays on the device (I/O binding,
:class:`Runner`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2pnode.exec.onnx_model import ModelError
from p2pnode.verify import tokens as tk

HIDDEN = "p2pnode.hidden"
PAST = "past_key_values.{}.{}"
PRESENT = "present.{}.{}"


@dataclass(frozen=True)
class DecoderSpec:
    layers: int
    heads: int
    head_dim: int
    vocab: int
    dtype: str  # the cache's and the logits' float type
    positions: bool  # takes position_ids
    hidden: bool  # gives p2pnode.hidden

    def kv_bytes(self, batch: int, tokens: int) -> int:
        """Bytes of one copy of the cache for ``batch`` sequences of ``tokens``."""
        return 2 * self.layers * self.heads * self.head_dim * batch * tokens * np.dtype(self.dtype).itemsize

    def to_wire(self) -> list[Any]:
        return [self.layers, self.heads, self.head_dim, self.vocab, self.dtype]


def spec(info: Any) -> DecoderSpec:
    """The decoder's dimensions from a :class:`~p2pnode.exec.onnx_model.ModelInfo`, or ModelError."""
    ins = {s.name: s for s in info.inputs}
    outs = {s.name: s for s in info.outputs}
    for name in ("input_ids", "attention_mask"):
        if name not in ins or ins[name].dtype != "int64" or len(ins[name].shape) != 2:
            raise ModelError(f"a decoder takes int64 {name} [batch, sequence]")
    layers = 0
    while PAST.format(layers, "key") in ins:
        layers += 1
    if layers == 0:
        raise ModelError("not a decoder exported with past key/values (no past_key_values.0.key input)")
    first = ins[PAST.format(0, "key")]
    if len(first.shape) != 4 or first.shape[1] is None or first.shape[3] is None:
        raise ModelError("past_key_values must be [batch, heads, past, head_dim] with fixed heads and head_dim")
    for i in range(layers):
        for kv in ("key", "value"):
            p, q = ins.get(PAST.format(i, kv)), outs.get(PRESENT.format(i, kv))
            if p is None or q is None or p.shape[1::2] != first.shape[1::2] or p.dtype != first.dtype:
                raise ModelError(f"layer {i}: past_key_values.{i}.{kv} and present.{i}.{kv} must match layer 0's")
    known = {"input_ids", "attention_mask", "position_ids", *(PAST.format(i, kv) for i in range(layers)
                                                              for kv in ("key", "value"))}
    if set(ins) - known:
        raise ModelError(f"a decoder's inputs are input_ids, attention_mask, position_ids and the past; "
                         f"this one also takes {sorted(set(ins) - known)}")
    logits = outs.get("logits")
    if logits is None or len(logits.shape) != 3 or logits.shape[2] is None or logits.dtype not in tk.TOLERANCE:
        raise ModelError("a decoder gives float logits [batch, sequence, vocab] with a fixed vocab")
    return DecoderSpec(layers, int(first.shape[1]), int(first.shape[3]), int(logits.shape[2]), logits.dtype,
                       "position_ids" in ins, HIDDEN in outs)


def expose_hidden(model: Any) -> bool:
    """Add the input of the node that makes ``logits`` (a MatMul or Gemm) as the output
    ``p2pnode.hidden``; False when the logits come otherwise (or it is already there)."""
    from onnx import helper

    graph = model.graph
    if any(o.name == HIDDEN for o in graph.output):
        return False
    maker = next((n for n in graph.node if "logits" in n.output), None)
    if maker is None or maker.op_type not in ("MatMul", "Gemm") or maker.domain not in ("", "ai.onnx"):
        return False
    logits = next(o for o in graph.output if o.name == "logits")
    elem = logits.type.tensor_type.elem_type
    graph.node.append(helper.make_node("Identity", [maker.input[0]], [HIDDEN], name=HIDDEN))
    rank = len(logits.type.tensor_type.shape.dim) or 3
    graph.output.append(helper.make_tensor_value_info(HIDDEN, elem, [None] * rank))
    return True


def cache_device(sess: Any) -> str:
    """Where a session's decode loop keeps the cache: "cuda" when the session really runs on
    ONNX Runtime's CUDA provider (its first provider), so each step's present stays there as the
    next step's past (I/O binding); "" (NumPy feeds) otherwise, as when a session asked for CUDA
    fell back to the CPU (no device, or no CUDA libraries)."""
    providers = sess.get_providers()
    return "cuda" if providers and providers[0] == "CUDAExecutionProvider" else ""


class Runner:
    """One session's decode loop and teacher-forced pass (in a worker)."""

    def __init__(self, sess: Any, dspec: DecoderSpec, *, device: str = "") -> None:
        """``device``: "" runs with NumPy feeds; "cuda" (or "cpu", to test the path) binds the cache
        to that device, where each step's present stays as the next step's past (I/O binding),
        and only the ids, the mask, the logits and the hidden state cross to the host."""
        self.sess, self.spec, self.device = sess, dspec, device
        self.names = [o.name for o in sess.get_outputs()]
        self.state = HIDDEN if dspec.hidden else "logits"

    def _run(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, Any]) -> tuple[np.ndarray, np.ndarray,
                                                                                     dict[str, Any]]:
        """(logits of the last position, its state, the cache as the next step's past)."""
        feed: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self.spec.positions:
            pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, -ids.shape[1]:]
            feed["position_ids"] = pos.astype(np.int64)
        if self.device:
            return self._bound(feed, past)
        out = dict(zip(self.names, self.sess.run(None, {**feed, **past}), strict=True))
        cache = {PAST.format(i, kv): out[PRESENT.format(i, kv)] for i in range(self.spec.layers)
                 for kv in ("key", "value")}
        return out["logits"], out[self.state], cache

    def _bound(self, feed: dict[str, np.ndarray], past: dict[str, Any]) -> tuple[np.ndarray, np.ndarray,
                                                                                   dict[str, Any]]:
        binding = self.sess.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        for name, value in past.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:  # an OrtValue on the device: last step's present
                binding.bind_ortvalue_input(name, value)
        for name in self.names:
            if name.startswith("present."):
                binding.bind_output(name, self.device)
            else:
                binding.bind_output(name, "cpu")
        self.sess.run_with_iobinding(binding)
        out = dict(zip(self.names, binding.get_outputs(), strict=True))
        cache = {PAST.format(i, kv): out[PRESENT.format(i, kv)] for i in range(self.spec.layers)
                 for kv in ("key", "value")}
        return out["logits"].numpy(), out[self.state].numpy(), cache

    def empty(self, batch: int) -> dict[str, np.ndarray]:
        s = self.spec
        return {PAST.format(i, kv): np.zeros((batch, s.heads, 0, s.head_dim), np.dtype(s.dtype))
                for i in range(s.layers) for kv in ("key", "value")}

    def generate(self, prompts: np.ndarray, index: np.ndarray, *, max_new: int, temperature: float, seed: int,
                 eos: int, batch: int, k: int, pad: int,
                 progress: Callable[[float], None] = lambda f: None) -> dict[str, np.ndarray]:
        """Each prompt's generation (rows as :mod:`p2pnode.verify.tokens` describes)."""
        n = len(prompts)
        out = _empty_rows(n, max_new, k)
        for b0 in range(0, n, batch):
            rows = slice(b0, min(n, b0 + batch))
            ids, mask = _left_padded([_prompt(p) for p in prompts[rows]], pad)
            logits, state, past = self._run(ids, mask, self.empty(len(ids)))
            done = np.zeros(len(ids), bool)
            for t in range(max_new):
                tok, margin = tk.choose(logits[:, -1], temperature, seed, index[rows], np.full(len(ids), t))
                live = ~done
                out["tokens"][rows][live, t] = tok[live]
                out["margin"][rows][live, t] = margin[live]
                if t % tk.FP_EVERY == 0:
                    fi, fv = tk.fingerprint(state[:, -1].astype(np.float32), k)
                    out["fp_idx"][rows][live, t // tk.FP_EVERY] = fi[live]
                    out["fp_val"][rows][live, t // tk.FP_EVERY] = fv[live]
                out["length"][rows][live] += 1
                done |= tok == eos
                if done.all() or t == max_new - 1:
                    break
                step = np.where(done, pad, tok).astype(np.int64)[:, None]
                mask = np.concatenate([mask, np.ones((len(ids), 1), np.int64)], axis=1)
                logits, state, past = self._run(step, mask, past)
            progress(min(1.0, rows.stop / n))
        return out

    def teacher(self, prompts: np.ndarray, index: np.ndarray, committed: np.ndarray, *, temperature: float,
                seed: int, batch: int, k: int, pad: int,
                progress: Callable[[float], None] = lambda f: None) -> dict[str, np.ndarray]:
        """One forward pass over each prompt and its committed tokens: at each committed position,
        the token this model chooses there, its margin, and the fingerprint it sees."""
        n, max_new = committed.shape
        out = _empty_rows(n, max_new, k)
        for b0 in range(0, n, batch):
            rows = range(b0, min(n, b0 + batch))
            seqs, plens, lens = [], [], []
            for i in rows:
                p = _prompt(prompts[i])
                length = int((committed[i] >= 0).sum())
                seqs.append(np.concatenate([p, committed[i, :max(0, length - 1)]]))
                plens.append(len(p))
                lens.append(length)
            ids, mask = _left_padded(seqs, pad)
            logits, state, _ = self._full(ids, mask)
            width = ids.shape[1]
            for j, i in enumerate(rows):
                length = lens[j]
                if not length:
                    continue
                at = width - len(seqs[j]) + plens[j] - 1 + np.arange(length)
                tok, margin = tk.choose(logits[j, at], temperature, seed, np.full(length, index[i]),
                                        np.arange(length))
                out["tokens"][i, :length], out["margin"][i, :length] = tok, margin
                out["length"][i] = length
                fp_at = at[::tk.FP_EVERY]
                fi, fv = tk.fingerprint(state[j, fp_at].astype(np.float32), k)
                out["fp_idx"][i, :len(fp_at)], out["fp_val"][i, :len(fp_at)] = fi, fv
            progress(min(1.0, rows.stop / n))
        return out

    def _full(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        feed: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, **self.empty(len(ids))}
        if self.spec.positions:
            feed["position_ids"] = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)
        out = dict(zip(self.names, self.sess.run(None, feed), strict=True))
        return out["logits"], out[self.state], {}


def _prompt(row: np.ndarray) -> np.ndarray:
    """A prompt's tokens: its row up to the first -1 (padding)."""
    end = np.flatnonzero(row < 0)
    return np.asarray(row[:end[0]] if end.size else row, dtype=np.int64)


def _left_padded(seqs: list[np.ndarray], pad: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(1, max(len(s) for s in seqs))
    ids = np.full((len(seqs), width), pad, np.int64)
    mask = np.zeros((len(seqs), width), np.int64)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = s
            mask[i, width - len(s):] = 1
    return ids, mask


def _empty_rows(n: int, max_new: int, k: int) -> dict[str, np.ndarray]:
    f = tk.positions(max_new)
    return {"tokens": np.full((n, max_new), -1, np.int32), "length": np.zeros(n, np.int32),
            "margin": np.zeros((n, max_new), np.float32), "fp_idx": np.zeros((n, f, k), np.int32),
            "fp_val": np.zeros((n, f, k), np.float32)}
