"""Seeded inputs that every backend, and every implementation, generates bit for bit.

Element ``i`` (row-major) of stream ``s`` under ``seed`` is derived from a 64-bit word::

    mix(z)  = splitmix64 finalizer:
              z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31
    key     = mix(mix(seed) ^ s)
    word_i  = mix(key + i * 0x9E3779B97F4A7C15)            (all arithmetic mod 2^64)

    float:  ((word_i >> 40) - 2^23) / 2^23                  uniform in [-1, 1), exact in fp32
    int8:   (word_i >> 56) - 128                            uniform in [-128, 127]

It is a counter-based generator: any element is computable on its own, so GPUs generate inputs in
place (no host-to-device copy) and a second implementation needs twenty lines, not NumPy's PCG64.
Streams: 0 is A, 1 is B of ``matmul``; the MLP workloads number theirs in their docstrings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB
MASK = (1 << 64) - 1


def mix_int(z: int) -> int:
    z &= MASK
    z ^= z >> 30
    z = (z * M1) & MASK
    z ^= z >> 27
    z = (z * M2) & MASK
    return z ^ (z >> 31)


def stream_key(seed: int, stream: int) -> int:
    return mix_int(mix_int(seed) ^ stream)


def words(xp: Any, seed: int, stream: int, count: int) -> Any:
    """The words with an array module of NumPy's API (NumPy, or CuPy on the GPU): uint64 wraps."""
    key = xp.uint64(stream_key(seed, stream))
    with np.errstate(over="ignore"):
        z = key + xp.arange(count, dtype=xp.uint64) * xp.uint64(GOLDEN)
        z ^= z >> xp.uint64(30)
        z *= xp.uint64(M1)
        z ^= z >> xp.uint64(27)
        z *= xp.uint64(M2)
        z ^= z >> xp.uint64(31)
    return z


CHUNK = 1 << 16  # NumPy generates this many words at a time, in the cache, with no temporaries


def _chunks(seed: int, stream: int, count: int) -> Any:
    """(start, words) for consecutive chunks: the same words as :func:`words`, NumPy only."""
    key = np.uint64(stream_key(seed, stream))
    z, t = np.empty(min(count, CHUNK), np.uint64), np.empty(min(count, CHUNK), np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, count, CHUNK):
            n = min(CHUNK, count - start)
            w, tmp = z[:n], t[:n]
            w[:] = np.arange(start, start + n, dtype=np.uint64)
            w *= np.uint64(GOLDEN)
            w += key
            for shift, mult in ((30, M1), (27, M2), (31, 0)):
                np.right_shift(w, np.uint64(shift), out=tmp)
                w ^= tmp
                if mult:
                    w *= np.uint64(mult)
            yield start, w, tmp


def _uniform_np(seed: int, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(int(np.prod(shape)), np.float32)
    for start, w, tmp in _chunks(seed, stream, out.size):
        np.right_shift(w, np.uint64(40), out=tmp)
        chunk = out[start:start + len(w)]
        chunk[:] = tmp  # < 2^24: exact in float32
        chunk -= np.float32(1 << 23)
        chunk *= np.float32(2.0**-23)
    return out.reshape(shape)


def _int8_np(seed: int, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(int(np.prod(shape)), np.uint8)
    for start, w, tmp in _chunks(seed, stream, out.size):
        np.right_shift(w, np.uint64(56), out=tmp)
        tmp ^= np.uint64(0x80)  # (v - 128) as int8 is v ^ 0x80 as uint8
        out[start:start + len(w)] = tmp
    return out.view(np.int8).reshape(shape)


def uniform(xp: Any, seed: int, stream: int, shape: tuple[int, ...]) -> Any:
    if xp is np:
        return _uniform_np(seed, stream, shape)
    w = words(xp, seed, stream, int(np.prod(shape)))
    top = (w >> xp.uint64(40)).astype(xp.int64) - (1 << 23)
    return top.astype(xp.float32).reshape(shape) * xp.float32(2.0**-23)


def int8(xp: Any, seed: int, stream: int, shape: tuple[int, ...]) -> Any:
    if xp is np:
        return _int8_np(seed, stream, shape)
    w = words(xp, seed, stream, int(np.prod(shape)))
    return ((w >> xp.uint64(56)).astype(xp.int16) - 128).astype(xp.int8).reshape(shape)


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def words_torch(torch: Any, seed: int, stream: int, count: int, device: str) -> Any:
    """The same words in torch int64 (same bits; shifts made logical by masking)."""

    def lsr(z: Any, s: int) -> Any:
        return (z >> s) & ((1 << (64 - s)) - 1)

    key = _signed(stream_key(seed, stream))
    z = torch.arange(count, dtype=torch.int64, device=device) * _signed(GOLDEN) + key
    z = z ^ lsr(z, 30)
    z = z * _signed(M1)
    z = z ^ lsr(z, 27)
    z = z * _signed(M2)
    return z ^ lsr(z, 31)


def uniform_torch(torch: Any, seed: int, stream: int, shape: tuple[int, ...], device: str) -> Any:
    w = words_torch(torch, seed, stream, int(np.prod(shape)), device)
    top = (w >> 40) & ((1 << 24) - 1)
    return ((top - (1 << 23)).to(torch.float32) * 2.0**-23).reshape(shape)


def int8_torch(torch: Any, seed: int, stream: int, shape: tuple[int, ...], device: str) -> Any:
    w = words_torch(torch, seed, stream, int(np.prod(shape)), device)
    return (((w >> 56) & 0xFF) - 128).to(torch.int8).reshape(shape)
