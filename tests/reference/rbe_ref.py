"""Plain numpy references for the rbe family (DESIGN 3.4)."""
from __future__ import annotations

import numpy as np


def pack_levels(levels: np.ndarray, bits: int) -> np.ndarray:
    """Levels [N, dim] -> the dimension-major MSB-first bit stream, packbits'ed per row."""
    shifts = np.arange(bits - 1, -1, -1)
    stream = ((levels[:, :, None].astype(np.int64) >> shifts) & 1).reshape(levels.shape[0], -1)
    return np.packbits(stream.astype(bool), axis=1)


def unpack_levels(codes: np.ndarray, dim: int, bits: int) -> np.ndarray:
    stream = np.unpackbits(codes, axis=1, count=dim * bits).reshape(codes.shape[0], dim, bits).astype(np.int64)
    return (stream << np.arange(bits - 1, -1, -1)).sum(-1).astype(np.uint8)


def decode(levels: np.ndarray, bits: int) -> np.ndarray:
    """Decoded values in float64: (2L - (2^bits - 1)) / 2^(bits-1)."""
    return (2.0 * levels.astype(np.float64) - (2**bits - 1)) / 2 ** (bits - 1)


def sdc_integer(lq: np.ndarray, ld: np.ndarray, bits: int) -> np.ndarray:
    """S = sum (2Lq - c)(2Ld - c), exact int64."""
    c = 2**bits - 1
    return (2 * lq.astype(np.int64) - c) @ (2 * ld.astype(np.int64) - c).T


def sdc_scores(lq: np.ndarray, ld: np.ndarray, bits: int, inv_norm: np.ndarray | None = None) -> np.ndarray:
    """The documented rounding: float32(S) * 4^-(bits-1), then * inv_norm in float32."""
    s = sdc_integer(lq, ld, bits).astype(np.float32) * np.float32(4.0 ** -(bits - 1))
    if inv_norm is not None:
        s = s * inv_norm.astype(np.float32)[None, :]
    return s


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # stable: ties keep the lower index first
    return np.take_along_axis(scores, idx, axis=1), idx.astype(np.int64)


def levels_to_planes(levels: np.ndarray, bits: int) -> np.ndarray:
    planes = [(levels.astype(np.int64) >> (bits - 1 - i)) & 1 for i in range(bits)]
    return np.stack([np.packbits(p.astype(bool), axis=1) for p in planes], axis=1)


def _apply(layer: dict, x: np.ndarray) -> np.ndarray:
    """A Linear ({'w','b'}) or an eval-mode Linear-BN-ReLU-Linear ({'w1','b1','mean','var','gamma','beta','eps','w2','b2'})."""
    if "w" in layer:
        return x @ layer["w"].T + layer["b"]
    h = x @ layer["w1"].T + layer["b1"]
    h = (h - layer["mean"]) / np.sqrt(layer["var"] + layer["eps"]) * layer["gamma"] + layer["beta"]
    return np.maximum(h, 0) @ layer["w2"].T + layer["b2"]


def encode(x: np.ndarray, encoder: dict, decoders: list, residuals: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BEBR's recurrence in float64. Returns (levels uint8 [N, m], inv_norm float64 [N],
    min |pre-activation| per row over all steps: rows whose minimum is tiny may flip a sign)."""
    x = x.astype(np.float64)
    pre = _apply(encoder, x)
    margin = np.abs(pre).min(axis=1)
    levels = (pre > 0).astype(np.int64)
    b = np.where(pre > 0, 1.0, -1.0)
    for i, (dec, res) in enumerate(zip(decoders, residuals)):
        h = _apply(dec, b)
        f = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        pre = _apply(res, x - f)
        margin = np.minimum(margin, np.abs(pre).min(axis=1))
        bit = (pre > 0).astype(np.int64)
        levels = 2 * levels + bit
        b = b + 2.0 ** -(i + 1) * (2 * bit - 1)
    bits = len(decoders) + 1
    v = decode(levels, bits)
    return levels.astype(np.uint8), 1.0 / np.linalg.norm(v, axis=1), margin
