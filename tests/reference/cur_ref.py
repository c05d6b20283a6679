"""Plain numpy references for the cur family."""
from __future__ import annotations

import numpy as np


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round half to even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = u + 0x7FFF + ((u >> 16) & 1)
    return (u >> 16).astype(np.uint16)


def fma_chain_scores(C: np.ndarray, E: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """scores[b, n] = the float32 chain acc = fma(C[b, j], E[j, n], acc), j = 0..r-1 (then * scale[n]).
    The product of two float32 values is exact in float64 and the sum is rounded to float32 once
    more, which equals a fused multiply-add except for double rounding (probability ~2^-29 per step)."""
    C = C.astype(np.float32)
    E = E.astype(np.float32)
    acc = np.zeros((C.shape[0], E.shape[1]), dtype=np.float32)
    for j in range(C.shape[1]):
        acc = (C[:, j : j + 1].astype(np.float64) * E[j].astype(np.float64) + acc.astype(np.float64)).astype(np.float32)
    if scales is not None:
        acc = (acc * scales.astype(np.float32)).astype(np.float32)
    return acc


def topk_from_scores(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the k largest non-NaN scores not excluded, best first, ties to the lower id."""
    b, n = scores.shape
    vals = np.zeros((b, k), dtype=np.float32)
    ids = np.zeros((b, k), dtype=np.int64)
    for q in range(b):
        s = scores[q]
        ok = ~np.isnan(s)
        if exclude is not None:
            ex = exclude[q][exclude[q] >= 0]
            ok[ex] = False
        cand = np.nonzero(ok)[0]
        order = np.lexsort((cand, -s[cand].astype(np.float64)))[:k]  # score desc, then id asc
        ids[q] = cand[order]
        vals[q] = s[cand[order]]
    return vals, ids


def score_topk(C, E, k, exclude=None, scales=None):
    return topk_from_scores(fma_chain_scores(C, E, scales), k, exclude)
