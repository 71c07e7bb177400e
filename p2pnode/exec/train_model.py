"""A trainable model as data: a declared architecture from a fixed list of layers, a loss and an
optimiser named from fixed lists, and its weights as one float32 vector (pure NumPy).

A model is a map, never code::

    {"inputs": 64, "layers": [["dense", 64], ["relu"], ["dense", 10]],
     "loss": "xent", "optimizer": "adamw"}

* layers: ``["dense", n]`` (y = x·W + b), ``["relu"]``, ``["gelu"]`` (tanh form), ``["layernorm"]``
  (over the features, with gain and bias);
* a model of token ids (``"vocab": V``; ``inputs`` is then the context, T positions) starts with
  ``["embed", d]`` (a table ``[V, d]`` and a row per position ``[T, d]``), then any of
  ``["attention", heads]`` (pre-norm causal multi-head self-attention, added to its input),
  ``["mlp", hidden]`` (pre-norm GELU MLP, added to its input) and ``["layernorm"]`` over the
  sequence, then ``["last"]`` (the last position's vector), then the layers above: a tiny
  transformer that predicts each row's label (the next token) from its T tokens
  (:mod:`p2pnode.exec.train_blocks`);
* loss: ``xent`` (softmax cross-entropy over the last layer's outputs, labels int64) or ``mse``
  (targets float32, one column per output);
* optimizer: ``sgd``, ``momentum`` (0.9, heavy ball) or ``adamw`` (β 0.9/0.999, ε 1e-8, weight
  decay ``wd``, bias correction by the step's global index).

The **state** of a run is one float32 vector: the parameters in layer order (``W`` row-major, then
``b``; ``g`` then ``b`` for a layernorm), then the optimiser's buffers in the same order (one for
momentum, two for AdamW). Every step runs the same operations in the same order in float32, so
the same state, data and step index give the same next state bit for bit on the same NumPy and
BLAS (``specs/training.md`` says what holds elsewhere).

Batches are drawn by :mod:`p2pnode.exec.seeded` (a counter-based generator a second implementation
writes in twenty lines): step ``t`` of a run seeded ``s`` takes rows ``word_i mod n`` of stream
``t`` for i < batch. Any step is reproducible on its own from its state, its index and the seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2pnode.errors import WorkloadError
from p2pnode.exec import seeded
from p2pnode.exec import train_blocks as tb
from p2pnode.exec.train_blocks import MatMul

LAYERS = ("dense", "relu", "gelu", "layernorm", "embed", "attention", "mlp", "last")
SIZED = ("dense", "embed", "attention", "mlp")  # the layers that take a number
SEQUENCE = ("attention", "mlp", "layernorm")  # what may come between embed and last
LOSSES = ("xent", "mse")
OPTIMIZERS = {"sgd": 0, "momentum": 1, "adamw": 2}  # the optimiser's buffers per parameter
MAX_LAYERS, MAX_WIDTH, MAX_PARAMS, MAX_VOCAB, MAX_CONTEXT, MAX_HEADS = 32, 8192, 1 << 24, 1 << 16, 1024, 64
MOMENTUM, BETA1, BETA2, EPS = 0.9, 0.9, 0.999, 1e-8
# each matrix of a layer has its own stream of the seeded generator: 100 + layer + 1000·this
_STREAMS = {"w": 0, "e": 1, "p": 2, "q": 3, "k": 4, "v": 5, "o": 6, "w1": 7, "w2": 8}
_F = np.float32


@dataclass(frozen=True)
class Spec:
    inputs: int
    layers: tuple[tuple[str, int], ...]  # (kind, its number: width, heads or hidden); 0 for the others
    loss: str
    optimizer: str
    vocab: int = 0  # a model of token ids: how many there are (0: inputs are features)

    @property
    def outputs(self) -> int:
        return next((w for k, w in reversed(self.layers) if k == "dense"), self.inputs)

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """The parameters, in state order: (name, shape)."""
        out: list[tuple[str, tuple[int, ...]]] = []
        width = self.inputs
        for i, (kind, n) in enumerate(self.layers):
            if kind == "dense":
                out += [(f"{i}.w", (width, n)), (f"{i}.b", (n,))]
                width = n
            elif kind == "layernorm":
                out += [(f"{i}.g", (width,)), (f"{i}.b", (width,))]
            elif kind == "embed":
                out += [(f"{i}.e", (self.vocab, n)), (f"{i}.p", (self.inputs, n))]
                width = n
            elif kind == "attention":
                out += [(f"{i}.g", (width,)), (f"{i}.b", (width,))] + \
                    [(f"{i}.{m}", (width, width)) for m in "qkvo"]
            elif kind == "mlp":
                out += [(f"{i}.g", (width,)), (f"{i}.b", (width,)), (f"{i}.w1", (width, n)), (f"{i}.b1", (n,)),
                        (f"{i}.w2", (n, width)), (f"{i}.b2", (width,))]
        return out

    @property
    def width(self) -> int:
        """The width of the sequence (an embedding's), 0 for a model of features."""
        return next((n for k, n in self.layers if k == "embed"), 0)

    def inner(self, batch: int) -> int:
        """The largest inner size of a step's matrix products: a layer's input width, a hidden
        width, or the rows a weight gradient sums over (the batch, times the positions of a
        sequence)."""
        sizes = [self.inputs, batch * (self.inputs if self.vocab else 1)]
        return max(sizes + [n for k, n in self.layers if k in ("dense", "embed", "mlp")])

    def activations(self, batch: int) -> int:
        """About the floats a step keeps for its backward pass."""
        widest = max([self.inputs] + [n for k, n in self.layers if k in ("dense", "embed", "mlp")])
        if not self.vocab:
            return 4 * batch * widest * (len(self.layers) + 2)
        t, heads = self.inputs, sum(n for k, n in self.layers if k == "attention")
        return 4 * batch * (t * widest * 12 * (len(self.layers) + 2) + 3 * heads * t * t)

    @property
    def params(self) -> int:
        return sum(int(np.prod(s)) for _, s in self.shapes())

    @property
    def state_len(self) -> int:
        return self.params * (1 + OPTIMIZERS[self.optimizer])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"inputs": self.inputs,
                               "layers": [[k, n] if k in SIZED else [k] for k, n in self.layers],
                               "loss": self.loss, "optimizer": self.optimizer}
        if self.vocab:
            out["vocab"] = self.vocab
        return out

    def canonical(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    def flops_per_row(self) -> float:
        """Forward and backward, per row of a batch: about 6 multiply-adds per weight (at every
        position of a sequence, and 12·T·d more per attention layer)."""
        if not self.vocab:
            return 6.0 * self.params
        t, d = self.inputs, self.width
        attention = sum(1 for k, _ in self.layers if k == "attention")
        return 6.0 * (self.params - (self.vocab + t) * d) * t + 12.0 * t * t * d * attention


def parse(raw: Any) -> Spec:
    """A model map checked against the fixed lists and every bound (``WorkloadError`` naming what)."""
    if not isinstance(raw, Mapping) or set(raw) - {"inputs", "layers", "loss", "optimizer", "vocab"}:
        raise WorkloadError("a model is a map of inputs, layers, loss, optimizer and vocab")
    inputs = raw.get("inputs")
    if not isinstance(inputs, int) or isinstance(inputs, bool) or not 1 <= inputs <= MAX_WIDTH:
        raise WorkloadError(f"model inputs must be an integer in 1..{MAX_WIDTH}")
    layers = raw.get("layers")
    if not isinstance(layers, list | tuple) or not 1 <= len(layers) <= MAX_LAYERS:
        raise WorkloadError(f"model layers must be a list of 1..{MAX_LAYERS} layers")
    out: list[tuple[str, int]] = []
    for layer in layers:
        if not isinstance(layer, list | tuple) or not layer or layer[0] not in LAYERS:
            raise WorkloadError(f"a layer is [kind, ...] with kind one of {', '.join(LAYERS)}: got {layer!r:.60}")
        if layer[0] in SIZED:
            n = layer[1] if len(layer) == 2 else None
            top, what = (MAX_HEADS, "heads") if layer[0] == "attention" else (MAX_WIDTH, "width")
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= top:
                raise WorkloadError(f"a {layer[0]} layer is [\"{layer[0]}\", {what}] with {what} in 1..{top}")
            out.append((str(layer[0]), n))
        elif len(layer) != 1:
            raise WorkloadError(f"a {layer[0]} layer takes no arguments")
        else:
            out.append((str(layer[0]), 0))
    if not any(k == "dense" for k, _ in out):
        raise WorkloadError("a model needs at least one dense layer")
    loss, opt = raw.get("loss", "xent"), raw.get("optimizer", "sgd")
    if loss not in LOSSES:
        raise WorkloadError(f"model loss must be one of {', '.join(LOSSES)}")
    if opt not in OPTIMIZERS:
        raise WorkloadError(f"model optimizer must be one of {', '.join(OPTIMIZERS)}")
    vocab = raw.get("vocab", 0)
    if not isinstance(vocab, int) or isinstance(vocab, bool) or not 0 <= vocab <= MAX_VOCAB:
        raise WorkloadError(f"model vocab must be an integer in 1..{MAX_VOCAB}")
    _check_sequence(out, vocab, inputs)
    spec = Spec(inputs, tuple(out), str(loss), str(opt), vocab)
    if spec.params > MAX_PARAMS:
        raise WorkloadError(f"the model has {spec.params} parameters, over the limit of {MAX_PARAMS}")
    return spec


def _check_sequence(layers: list[tuple[str, int]], vocab: int, inputs: int) -> None:
    """A model of token ids is embed, then attention, mlp or layernorm, then last, then the rest;
    a model of features has none of the first four."""
    kinds = [k for k, _ in layers]
    if not vocab:
        seq = sorted({k for k in kinds if k in ("embed", "attention", "mlp", "last")})
        if seq:
            raise WorkloadError(f"{', '.join(seq)} layers need a model of token ids (its vocab)")
        return
    if inputs > MAX_CONTEXT:
        raise WorkloadError(f"a model of token ids reads at most {MAX_CONTEXT} positions (its inputs)")
    if kinds[0] != "embed" or kinds.count("embed") != 1 or kinds.count("last") != 1:
        raise WorkloadError("a model of token ids starts with one embed layer and has one last layer")
    end = kinds.index("last")
    if any(k not in SEQUENCE for k in kinds[1:end]) or any(k in ("attention", "mlp") for k in kinds[end:]):
        raise WorkloadError("between embed and last come only attention, mlp and layernorm layers, "
                            "and none of the first two after last")
    d = layers[0][1]
    bad = [n for k, n in layers if k == "attention" and d % n]
    if bad:
        raise WorkloadError(f"attention heads must divide the embedding width {d} (not {bad[0]})")


def init_weights(spec: Spec, seed: int) -> np.ndarray:
    """Seeded starting weights: every matrix uniform in ±1/√rows (dense W, stream 100 + i; the
    others of layer i, stream 100 + i + 1000·j, j from ``_STREAMS``), biases 0, norm gains 1."""
    parts = []
    for name, shape in spec.shapes():
        i, kind = name.split(".")
        if kind in _STREAMS:
            stream = 100 + int(i) + 1000 * _STREAMS[kind]
            parts.append(seeded.uniform(np, seed, stream, shape).reshape(-1) * _F(1.0 / np.sqrt(shape[0])))
        elif kind == "g":
            parts.append(np.ones(shape, _F))
        else:
            parts.append(np.zeros(shape, _F))
    return np.concatenate(parts).astype(_F)


def fresh_state(spec: Spec, weights: np.ndarray) -> np.ndarray:
    """The state at the start of a run: the weights, the optimiser's buffers at zero."""
    return np.concatenate([weights.astype(_F), np.zeros(spec.state_len - spec.params, _F)])


def unflatten(spec: Spec, vec: np.ndarray) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for name, shape in spec.shapes():
        n = int(np.prod(shape))
        out[name] = vec[at:at + n].reshape(shape)
        at += n
    return out


def kernel_class() -> str:
    """What decides how this machine rounds a step: NumPy's version, its BLAS and the CPU's
    vector extensions. Two runs of one step agree bit for bit when these agree; a result names
    them so that a check knows when to compare states within a tolerance instead
    (``specs/training.md``, Tolerance)."""
    import platform

    try:
        cfg: Any = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        simd = "/".join(cfg["SIMD Extensions"]["found"]) or "-"
        return f"numpy {np.__version__}; {blas['name']} {blas['version']}; {platform.machine()} {simd}"
    except (TypeError, KeyError, ValueError):  # a NumPy that does not say: its version and the machine
        return f"numpy {np.__version__}; {platform.machine()}"


def batch_rows(seed: int, step: int, rows: int, batch: int) -> np.ndarray:
    """The rows of step ``step`` (stream ``step`` of ``seed``): ``word_i mod rows``."""
    w = seeded.words(np, seed, step, batch)
    return (w % np.uint64(rows)).astype(np.int64)


def loss_and_grads(spec: Spec, weights: np.ndarray, x: np.ndarray, y: np.ndarray,
                   matmul: MatMul = np.matmul) -> tuple[float, np.ndarray]:
    """The mean loss over the batch and its gradient (a vector in the parameters' order).
    ``matmul``: the kernel of every matrix product (another one stands for other hardware, whose
    products round differently)."""
    p = unflatten(spec, weights)
    h = x
    caches: list[Any] = []  # per layer: what its backward needs
    for i, (kind, n) in enumerate(spec.layers):
        if kind == "dense":
            caches.append(h)
            h = matmul(h, p[f"{i}.w"]) + p[f"{i}.b"]
        elif kind == "relu":
            caches.append(h > 0)
            h = np.maximum(h, _F(0))
        elif kind == "gelu":
            h, d = tb.gelu(h)
            caches.append(d)
        elif kind == "layernorm":
            h, cache = tb.layernorm(h, p[f"{i}.g"], p[f"{i}.b"])
            caches.append(cache)
        elif kind == "embed":
            ids = h.astype(np.int64)
            caches.append(ids)
            h = tb.embed(ids, p[f"{i}.e"], p[f"{i}.p"])
        elif kind == "attention":
            h, cache = tb.attention(h, _block(p, i, kind), n, matmul)
            caches.append(cache)
        elif kind == "mlp":
            h, cache = tb.mlp(h, _block(p, i, kind), matmul)
            caches.append(cache)
        else:  # last
            caches.append(h.shape)
            h = h[:, -1, :]
    rows = _F(len(x))
    if spec.loss == "xent":
        z = h - h.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        at = np.arange(len(x))
        loss = float(np.mean(np.log(s[:, 0]) - z[at, y]))
        g = e / s
        g[at, y] -= _F(1)
        g = g / rows
    else:
        err = h - y
        loss = float(np.mean(err * err))
        g = _F(2) * err / _F(err.size)
    grads: dict[str, np.ndarray] = {}
    for i in range(len(spec.layers) - 1, -1, -1):
        (kind, n), cache = spec.layers[i], caches[i]
        if kind == "dense":
            grads[f"{i}.w"], grads[f"{i}.b"] = matmul(cache.T, g), g.sum(axis=0)
            g = matmul(g, p[f"{i}.w"].T)
        elif kind in ("relu", "gelu"):
            g = g * cache
        elif kind == "layernorm":
            g, grads[f"{i}.g"], grads[f"{i}.b"] = tb.layernorm_back(g, cache, p[f"{i}.g"])
        elif kind == "last":
            full = np.zeros(cache, _F)
            full[:, -1, :] = g
            g = full
        elif kind in ("attention", "mlp"):
            g, pg = tb.attention_back(g, cache, _block(p, i, kind), n, matmul) if kind == "attention" else \
                tb.mlp_back(g, cache, _block(p, i, kind), matmul)
            grads.update(zip([f"{i}.{m}" for m in _BLOCK[kind]], pg, strict=True))
        else:  # embed: the first layer, whose input (token ids) has no gradient
            grads[f"{i}.e"], grads[f"{i}.p"] = tb.embed_back(g, cache, spec.vocab)
    flat = np.concatenate([grads[name].reshape(-1) for name, _ in spec.shapes()]).astype(_F)
    return loss, flat


_BLOCK = {"attention": ("g", "b", "q", "k", "v", "o"), "mlp": ("g", "b", "w1", "b1", "w2", "b2")}


def _block(p: dict[str, np.ndarray], i: int, kind: str) -> list[np.ndarray]:
    return [p[f"{i}.{m}"] for m in _BLOCK[kind]]


def step(spec: Spec, state: np.ndarray, x: np.ndarray, y: np.ndarray, *, t: int, lr: float,
         wd: float, matmul: MatMul = np.matmul) -> tuple[np.ndarray, float]:
    """One optimiser step (global index ``t`` ≥ 1) on the batch: the next state and the batch's loss."""
    n = spec.params
    w = state[:n]
    loss, g = loss_and_grads(spec, w, x, y, matmul)
    lr32 = _F(lr)
    if spec.optimizer == "sgd":
        return (w - lr32 * g).astype(_F), loss
    if spec.optimizer == "momentum":
        m = _F(MOMENTUM) * state[n:2 * n] + g
        return np.concatenate([w - lr32 * m, m]).astype(_F), loss
    m = _F(BETA1) * state[n:2 * n] + _F(1 - BETA1) * g
    v = _F(BETA2) * state[2 * n:] + _F(1 - BETA2) * (g * g)
    mh = m / _F(1 - BETA1 ** t)
    vh = v / _F(1 - BETA2 ** t)
    w2 = w - lr32 * (mh / (np.sqrt(vh) + _F(EPS)) + _F(wd) * w)
    return np.concatenate([w2, m, v]).astype(_F), loss


Hook = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


def run(spec: Spec, state: np.ndarray, x: np.ndarray, y: np.ndarray, *, first: int, steps: int, batch: int,
        seed: int, lr: float, wd: float, hook: Hook | None = None,
        progress: Callable[[float], None] | None = None, matmul: MatMul = np.matmul) -> tuple[np.ndarray, list[float]]:
    """Steps ``first`` .. ``first + steps - 1`` from ``state``: every state after a step (rows of a
    ``[steps, state_len]`` array) and each step's loss. ``hook(t, before, after)``, for the
    adversaries of tests, returns the state to go on from in place of ``after``."""
    states = np.empty((steps, spec.state_len), _F)
    losses = []
    cur = state.astype(_F)
    for k in range(steps):
        t = first + k
        rows = batch_rows(seed, t, len(x), batch)
        with np.errstate(all="ignore"):  # a run that diverges goes on, as deterministically
            nxt, loss = step(spec, cur, x[rows], y[rows], t=t, lr=lr, wd=wd, matmul=matmul)
        if hook is not None:
            nxt = hook(t, cur, nxt).astype(_F)
        states[k] = nxt
        losses.append(loss)
        cur = nxt
        if progress is not None:
            progress((k + 1) / steps)
    return states, losses


def evaluate(spec: Spec, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """The loss over all of ``x`` (no update)."""
    return loss_and_grads(spec, weights.astype(_F), x, y)[0]
