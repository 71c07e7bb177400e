"""The layers of a trainable model that need more than a line, forward and backward by hand in
float32 NumPy (:mod:`p2pnode.exec.train_model` composes them): layer norm, the tanh GELU, and a
tiny transformer's pieces over sequences ``[batch, positions, width]``: pre-norm causal multi-head
self-attention and a pre-norm MLP, each added to its input (a residual block).

Every operation is fixed in kind and order, so one state, batch and step give one next state bit
for bit on one NumPy and BLAS. ``matmul`` is the kernel of every matrix product (another one
stands for other hardware). Each forward returns its output and what its backward needs; each
backward returns the gradient of its input, then its parameters' in the order of the layer's
parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

MatMul = Callable[[np.ndarray, np.ndarray], np.ndarray]
LN_EPS = 1e-5
_F = np.float32


def gelu(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) and its derivative."""
    c = _F(np.sqrt(2.0 / np.pi))
    u = c * (x + _F(0.044715) * x * x * x)
    t = np.tanh(u)
    y = _F(0.5) * x * (_F(1) + t)
    dy = _F(0.5) * (_F(1) + t) + _F(0.5) * x * (_F(1) - t * t) * c * (_F(1) + _F(3 * 0.044715) * x * x)
    return y, dy


def layernorm(h: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, Any]:
    """Over the last axis (ε = 1e-5), with gain and bias."""
    mu = h.mean(axis=-1, keepdims=True)
    xc = h - mu
    inv = _F(1) / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + _F(LN_EPS))
    xn = xc * inv
    return xn * gain + bias, (xn, inv)


def layernorm_back(g: np.ndarray, cache: Any, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xn, inv = cache
    w = xn.shape[-1]
    gg, gb = (g * xn).reshape(-1, w).sum(axis=0), g.reshape(-1, w).sum(axis=0)
    gx = g * gain
    return inv * (gx - gx.mean(axis=-1, keepdims=True) - xn * (gx * xn).mean(axis=-1, keepdims=True)), gg, gb


def attention(h: np.ndarray, p: list[np.ndarray], heads: int, matmul: MatMul) -> tuple[np.ndarray, Any]:
    """h + (softmax(mask(Q·Kᵀ/√dₕ))·V)·W_o with Q, K, V = LN(h)·W_q, W_k, W_v, over ``heads``
    heads of width dₕ = width / heads; position i attends to positions 0..i. ``p``: the layer norm's
    gain and bias, W_q, W_k, W_v, W_o (each ``[width, width]``)."""
    gain, bias, wq, wk, wv, wo = p
    b, t, d = h.shape
    dh = d // heads
    a, ln = layernorm(h, gain, bias)
    a2 = a.reshape(b * t, d)

    def split(m: np.ndarray) -> np.ndarray:  # [b·t, d] -> [b, heads, t, dh]
        return m.reshape(b, t, heads, dh).transpose(0, 2, 1, 3)

    q, k, v = split(matmul(a2, wq)), split(matmul(a2, wk)), split(matmul(a2, wv))
    scale = _F(1.0 / np.sqrt(dh))
    s = matmul(q, k.transpose(0, 1, 3, 2)) * scale
    s = np.where(np.tri(t, dtype=bool), s, _F(-np.inf))
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    pr = e / e.sum(axis=-1, keepdims=True)
    o2 = matmul(pr, v).transpose(0, 2, 1, 3).reshape(b * t, d)
    return h + matmul(o2, wo).reshape(b, t, d), (ln, a2, q, k, v, pr, o2, scale)


def attention_back(g: np.ndarray, cache: Any, p: list[np.ndarray], heads: int,
                   matmul: MatMul) -> tuple[np.ndarray, list[np.ndarray]]:
    gain, _, wq, wk, wv, wo = p
    ln, a2, q, k, v, pr, o2, scale = cache
    b, t, d = g.shape
    dh = d // heads
    g2 = g.reshape(b * t, d)
    gwo = matmul(o2.T, g2)
    go = matmul(g2, wo.T).reshape(b, t, heads, dh).transpose(0, 2, 1, 3)
    gp = matmul(go, v.transpose(0, 1, 3, 2))
    gv = matmul(pr.transpose(0, 1, 3, 2), go)
    gs = pr * (gp - (gp * pr).sum(axis=-1, keepdims=True)) * scale  # masked entries: pr = 0
    gq, gk = matmul(gs, k), matmul(gs.transpose(0, 1, 3, 2), q)

    def merge(m: np.ndarray) -> np.ndarray:  # [b, heads, t, dh] -> [b·t, d]
        return m.transpose(0, 2, 1, 3).reshape(b * t, d)

    gq2, gk2, gv2 = merge(gq), merge(gk), merge(gv)
    ga = matmul(gq2, wq.T) + matmul(gk2, wk.T) + matmul(gv2, wv.T)
    gx, gg, gb = layernorm_back(ga.reshape(b, t, d), ln, gain)
    return g + gx, [gg, gb, matmul(a2.T, gq2), matmul(a2.T, gk2), matmul(a2.T, gv2), gwo]


def mlp(h: np.ndarray, p: list[np.ndarray], matmul: MatMul) -> tuple[np.ndarray, Any]:
    """h + GELU(LN(h)·W₁ + b₁)·W₂ + b₂. ``p``: the layer norm's gain and bias, W₁ ``[width,
    hidden]``, b₁, W₂ ``[hidden, width]``, b₂."""
    gain, bias, w1, b1, w2, b2 = p
    b, t, d = h.shape
    a, ln = layernorm(h, gain, bias)
    a2 = a.reshape(b * t, d)
    z, dz = gelu(matmul(a2, w1) + b1)
    return h + (matmul(z, w2) + b2).reshape(b, t, d), (ln, a2, z, dz)


def mlp_back(g: np.ndarray, cache: Any, p: list[np.ndarray], matmul: MatMul) -> tuple[np.ndarray, list[np.ndarray]]:
    gain, _, w1, _, w2, _ = p
    ln, a2, z, dz = cache
    b, t, d = g.shape
    g2 = g.reshape(b * t, d)
    gu = matmul(g2, w2.T) * dz
    ga = matmul(gu, w1.T)
    gx, gg, gb = layernorm_back(ga.reshape(b, t, d), ln, gain)
    return g + gx, [gg, gb, matmul(a2.T, gu), gu.sum(axis=0), matmul(z.T, g2), g2.sum(axis=0)]


def embed(ids: np.ndarray, table: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Token ``ids`` ``[batch, positions]`` as rows of ``table`` plus each position's row."""
    return table[ids] + positions


def embed_back(g: np.ndarray, ids: np.ndarray, vocab: int) -> list[np.ndarray]:
    """The gradients of the table (summed in order over every occurrence of a token) and of the
    positions."""
    d = g.shape[-1]
    gt = np.zeros((vocab, d), _F)
    np.add.at(gt, ids.reshape(-1), g.reshape(-1, d))
    return [gt, g.sum(axis=0)]
