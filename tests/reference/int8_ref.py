"""Plain numpy references for the int8 family (int64 / float64 where exactness matters)."""
from __future__ import annotations

import numpy as np


def quantize(x: np.ndarray, scale, zero_point) -> np.ndarray:
    """saturate(rint(x / scale) + zero_point) in float32; np.rint rounds half to even."""
    x = np.asarray(x, dtype=np.float32)
    s = np.asarray(scale, dtype=np.float32)
    z = np.asarray(zero_point).astype(np.float32)
    r = np.rint(x / s) + z
    return np.clip(r, -128, 127).astype(np.int8)


def dequantize(codes: np.ndarray, scale, zero_point) -> np.ndarray:
    return (codes.astype(np.float32) - np.asarray(zero_point).astype(np.float32)) * np.asarray(scale, np.float32)


def dot_scores(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    return q.astype(np.int64) @ db.astype(np.int64).T


def norms(codes: np.ndarray) -> np.ndarray:
    return np.sqrt((codes.astype(np.int64) ** 2).sum(1).astype(np.float64)).astype(np.float32)


def cos_scores(q: np.ndarray, db: np.ndarray, db_norms: np.ndarray | None = None) -> np.ndarray:
    """(float32(dot) * (1/|d|)) * (1/|q|), every step in float32, as the kernels do."""
    dn = norms(db) if db_norms is None else db_norms.astype(np.float32)
    inv_d = np.float32(1) / dn
    inv_q = np.float32(1) / norms(q)
    s = dot_scores(q, db).astype(np.float32) * inv_d[None, :]
    return (s * inv_q[:, None]).astype(np.float32)


def topk_from_scores(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]  # stable: ties keep the lower index first
    return np.take_along_axis(s, idx, axis=1), idx.astype(np.int64)


def int8_topk(q: np.ndarray, db: np.ndarray, k: int, metric: str = "dot", db_norms=None):
    s = dot_scores(q, db) if metric == "dot" else cos_scores(q, db, db_norms)
    v, i = topk_from_scores(s, k)
    return v.astype(np.float32), i


def rescore(q: np.ndarray, cand: np.ndarray, corpus: np.ndarray, k: int, metric: str = "dot"):
    """float64 scores of each query's valid, distinct candidates; best first, ties to the lower id."""
    q = q.astype(np.float64)
    c = corpus.astype(np.float64)
    vals, ids = [], []
    for r in range(q.shape[0]):
        cs = sorted({int(j) for j in cand[r] if j >= 0})
        qq = q[r] / np.linalg.norm(q[r]) if metric == "cosine" else q[r]
        sc = [float(qq @ (c[j] / np.linalg.norm(c[j]) if metric == "cosine" else c[j])) for j in cs]
        order = sorted(range(len(cs)), key=lambda t: (-sc[t], cs[t]))[:k]
        v = [sc[t] for t in order] + [-np.inf] * (k - len(order))
        i = [cs[t] for t in order] + [-1] * (k - len(order))
        vals.append(v)
        ids.append(i)
    return np.array(vals), np.array(ids, dtype=np.int64)
