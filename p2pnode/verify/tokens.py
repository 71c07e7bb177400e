"""Generated text, checked by a teacher-forced pass (pure NumPy; ``specs/verification.md``).

A provider's generation of one prompt is its **row**: ``tokens`` (``-1`` after its end),
``length``, ``margin`` per token, and a **fingerprint** of its activations in the manner of
TOPLOC: at every ``FP_EVERY``-th generated token, the ``k`` largest-magnitude entries of the last
hidden state (``fp_idx``, ``fp_val``). The rows are bound by the Merkle root it signs before any
prompt is sampled. A checker re-runs a sampled prompt **teacher-forced**: one forward pass over the
prompt and the committed tokens gives, at each position, the token it would choose there and the
fingerprint it sees; :func:`mismatches` compares.

**Choosing a token** (:func:`choose`), the same rule on every node: greedy (``temperature`` 0) takes
the first index of the largest logit; sampling draws ``u`` = :func:`uniform` (``seed``, prompt's
index, position) and takes the token whose interval of the cumulative softmax of
``logits / temperature`` (float64, in token order) holds ``u``. So a checker reproduces every choice.

**Margin**: the smallest change of the logits, relative to ``max(1, max |logit|)``, that could
change the choice: half the gap between the two largest logits (greedy); ``T·ln(1 + d) / 2`` for a
draw at distance ``d`` from its interval's nearest end (sampling), since moving every logit by at
most δ moves every cumulative probability by at most ``e^(2δ/T) − 1``.

**The rule**, with ``tol`` = :data:`TOLERANCE` of the model's float type, the reference ``b`` (a
checker's or referee's pass) judging ``a`` (what the provider committed):

* every committed token equals the reference's choice there, unless the reference's margin there
  is within ``MARGIN_FACTOR · tol`` (a near tie that rounding may break either way);
* every fingerprint matches: with ``s`` the reference's largest magnitude, an index both kept
  differs by at most ``FP_FACTOR · tol · s``; an index only one side kept is at most the other
  side's ``k``-th magnitude plus that (it was near the boundary).
"""

from __future__ import annotations

import numpy as np

FP_EVERY = 32
FP_K = 16
# Relative error a forward pass may honestly show in that float type: 8 units of roundoff (fp16,
# bf16), and for fp32 the bound that also holds across CPU and CUDA (no TF32) with room to spare.
TOLERANCE = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2}
MARGIN_FACTOR = 4.0
FP_FACTOR = 4.0
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def uniform(seed: int, index: np.ndarray, position: np.ndarray) -> np.ndarray:
    """The draw for each (prompt ``index``, ``position``) of a job seeded with ``seed``: SplitMix64
    of ``seed + golden · (index · 2³² + position)`` (mod 2⁶⁴), its top 53 bits as a float in [0, 1)."""
    idx = np.asarray(index, dtype=np.uint64)
    pos = np.asarray(position, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed % (1 << 64)) + _GOLDEN * ((idx << np.uint64(32)) + pos)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def choose(logits: np.ndarray, temperature: float, seed: int, index: np.ndarray,
           position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(token, margin) for each row of ``logits`` ``[m, vocab]``; ``index`` and ``position`` per row."""
    z = np.asarray(logits, dtype=np.float64)
    scale = np.maximum(1.0, np.abs(z).max(axis=1))
    if temperature <= 0:
        tok = np.argmax(z, axis=1)
        top2 = np.partition(z, -2, axis=1)[:, -2:] if z.shape[1] > 1 else np.concatenate([z, z], axis=1)
        margin = (top2[:, 1] - top2[:, 0]) / 2.0 / scale
        return tok.astype(np.int32), margin.astype(np.float32)
    w = np.exp((z - z.max(axis=1, keepdims=True)) / temperature)
    cdf = np.cumsum(w, axis=1)
    cdf /= cdf[:, -1:]
    u = uniform(seed, index, position)
    tok = np.minimum((cdf < u[:, None]).sum(axis=1), z.shape[1] - 1)
    rows = np.arange(len(z))
    hi = cdf[rows, tok]
    lo = np.where(tok > 0, cdf[rows, np.maximum(tok - 1, 0)], 0.0)
    dist = np.maximum(0.0, np.minimum(u - lo, hi - u))
    return tok.astype(np.int32), (temperature * np.log1p(dist) / 2.0 / scale).astype(np.float32)


def fingerprint(hidden: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the ``k`` largest magnitudes of each row of ``hidden``, largest first."""
    h = np.asarray(hidden, dtype=np.float32)
    k = min(k, h.shape[1])
    part = np.argpartition(-np.abs(h), k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(h, part, axis=1)
    order = np.argsort(-np.abs(vals), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    return idx.astype(np.int32), np.take_along_axis(vals, order, axis=1)


def positions(max_new: int) -> int:
    """Fingerprints per prompt: one at every ``FP_EVERY``-th generated token."""
    return -(-max_new // FP_EVERY)


def structure(out: dict[str, np.ndarray], rows: int, max_new: int, vocab: int, eos: int, k: int) -> str:
    """Why a provider's output is not well formed ("" when it is): shapes, tokens in the vocabulary,
    ``-1`` exactly after each length, an early end only at the end-of-text token."""
    want = {"tokens": (rows, max_new), "length": (rows,), "margin": (rows, max_new),
            "fp_idx": (rows, positions(max_new), k), "fp_val": (rows, positions(max_new), k)}
    for name, shape in want.items():
        a = out.get(name)
        if a is None or tuple(a.shape) != shape:
            return f"output {name} is not of shape {list(shape)}"
    tokens, length = out["tokens"].astype(np.int64), out["length"].astype(np.int64)
    if (length < 0).any() or (length > max_new).any():
        return "a length is out of range"
    live = np.arange(max_new)[None, :] < length[:, None]
    if ((tokens < 0) | (tokens >= vocab))[live].any() or (tokens[~live] != -1).any():
        return "tokens outside the vocabulary, or not -1 after the end"
    early = length < max_new
    if early.any():
        last = tokens[early, np.maximum(length[early] - 1, 0)]
        if eos < 0 or (length[early] == 0).any() or (last != eos).any():
            return "a generation ends early without the end-of-text token"
    if ((out["fp_idx"] < 0) | (out["fp_idx"] >= 1 << 24)).any():
        return "fingerprint indices out of range"
    if not np.isfinite(out["fp_val"]).all() or not np.isfinite(out["margin"]).all():
        return "fingerprint values or margins that are not finite"
    return ""


def mismatches(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float) -> list[tuple[int, str]]:
    """(row, why) for each row of ``a`` that the reference ``b`` (same rows, a teacher-forced pass
    over ``a``'s tokens, or another such pass) refutes."""
    out: list[tuple[int, str]] = []
    n = len(a["length"])
    if len(b["length"]) != n or a["tokens"].shape != b["tokens"].shape or a["fp_idx"].shape != b["fp_idx"].shape:
        return [(i, "the outputs differ in shape") for i in range(max(n, 1))]
    for i in range(n):
        why = _row(a, b, i, tol)
        if why:
            out.append((i, why))
    return out


def _row(a: dict[str, np.ndarray], b: dict[str, np.ndarray], i: int, tol: float) -> str:
    length = int(a["length"][i])
    if int(b["length"][i]) != length:
        return f"length {length} against {int(b['length'][i])}"
    differ = np.nonzero(a["tokens"][i, :length] != b["tokens"][i, :length])[0]
    unexcused = differ[b["margin"][i, differ] > MARGIN_FACTOR * tol]
    if unexcused.size:
        t = int(unexcused[0])
        return f"token {t}: {int(a['tokens'][i, t])} where the reference chooses {int(b['tokens'][i, t])}"
    for f in range(positions(length) if length else 0):
        why = _fingerprint(a["fp_idx"][i, f], a["fp_val"][i, f], b["fp_idx"][i, f], b["fp_val"][i, f], tol)
        if why:
            return f"fingerprint at token {f * FP_EVERY}: {why}"
    return ""


def _fingerprint(ia: np.ndarray, va: np.ndarray, ib: np.ndarray, vb: np.ndarray, tol: float) -> str:
    if len(set(ia.tolist())) != len(ia):
        return "an index kept twice"
    scale = float(np.abs(vb).max()) if vb.size else 0.0
    slack = FP_FACTOR * tol * max(scale, 1e-30)
    by_b = dict(zip(ib.tolist(), vb.tolist(), strict=True))
    by_a = dict(zip(ia.tolist(), va.tolist(), strict=True))
    kth_a, kth_b = float(np.abs(va).min()), float(np.abs(vb).min())
    for j, v in by_a.items():
        if j in by_b:
            if abs(v - by_b[j]) > slack:
                return f"entry {j}: {v:.6g} against {by_b[j]:.6g}"
        elif abs(v) > kth_b + slack:
            return f"entry {j} ({v:.6g}) is not among the reference's largest"
    for j, v in by_b.items():
        if j not in by_a and abs(v) > kth_a + slack:
            return f"entry {j} ({v:.6g}) is missing"
    return ""
