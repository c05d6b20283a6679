"""Plain numpy / scipy references for the fastrp family (float64 unless noted)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64_int(x: int) -> int:
    """splitmix64 finalizer on Python ints (hash version 1, DESIGN 3.1)."""
    x = (x + GOLDEN) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def mix64(x: np.ndarray) -> np.ndarray:
    """The same on uint64 arrays (numpy's uint64 arithmetic wraps mod 2^64)."""
    x = x.astype(np.uint64) + np.uint64(GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def projection(keys, dim: int, s: float, seed: int, feature_rows: bool = False) -> np.ndarray:
    """R rows [len(keys), dim] (float32), written from the documented formula."""
    with np.errstate(over="ignore"):
        seed_u = seed & M64
        seed_state = mix64_int((~seed_u) & M64 if feature_rows else seed_u)
        keys_u = np.asarray(keys, dtype=np.int64).astype(np.uint64)
        row_state = mix64(np.uint64(seed_state) ^ keys_u)
        cols = np.arange(dim, dtype=np.uint64) * np.uint64(GOLDEN)
        h = mix64(row_state[:, None] + cols[None, :])
    t = np.uint64(int(np.ldexp(0.5 / s, 64)) if s > 1 else 1 << 63)
    sq = np.float32(np.sqrt(s))
    out = np.zeros(h.shape, dtype=np.float32)
    out[h < t] = sq
    out[~h < t] = -sq
    return out


def csr_matrix(indptr, indices, weights, shape) -> sp.csr_matrix:
    data = np.ones(len(indices)) if weights is None else np.asarray(weights, dtype=np.float64)
    return sp.csr_matrix((data, np.asarray(indices), np.asarray(indptr)), shape=shape)


def l2_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def csr_spmm(indptr, indices, weights, x, row_scale=None, normalize=False) -> np.ndarray:
    a = csr_matrix(indptr, indices, weights, (len(indptr) - 1, x.shape[0]))
    v = a @ np.asarray(x, dtype=np.float64)
    if row_scale is not None:
        v = v * np.asarray(row_scale, dtype=np.float64)[:, None]
    return l2_rows(v) if normalize else v


def fastrp(indptr, indices, weights, n, dim, iteration_weights, *, R, self_weight=0.0, beta=0.0, normalize="merge",
           features=None, P=None) -> np.ndarray:
    """DESIGN 3.5 in float64 with a given R [n, dim - feature_dim] (and P [F, feature_dim] for features)."""
    s_mat = csr_matrix(indptr, indices, weights, (n, n))
    deg = np.asarray(s_mat.sum(axis=1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    lscale = np.where(deg > 0, np.power(np.where(deg > 0, deg, 1.0), beta), 1.0)
    a = sp.diags(inv) @ s_mat
    x0 = np.asarray(R, dtype=np.float64)
    if features is not None:
        x0 = np.concatenate([x0, np.asarray(features, np.float64) @ np.asarray(P, np.float64)], axis=1)
    x0 = x0 * lscale[:, None]
    norm = (lambda m: l2_rows(m)) if normalize != "none" else (lambda m: m)
    out = self_weight * norm(x0)
    cur = x0
    for w in iteration_weights:
        nxt = a @ cur
        out = out + w * norm(nxt)
        cur = l2_rows(nxt) if normalize == "propagate" else nxt
    return out
