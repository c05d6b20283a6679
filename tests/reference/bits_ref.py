"""Plain numpy references for the bits family."""
from __future__ import annotations

import numpy as np


def pack_bits(x: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    return np.packbits(x > threshold, axis=1)


def unpack_bits(codes: np.ndarray, dim: int) -> np.ndarray:
    return np.unpackbits(codes, axis=1, count=dim).astype(bool)


def hamming_distance(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    x = np.bitwise_xor(queries[:, None, :], database[None, :, :])
    return np.unpackbits(x, axis=2).sum(axis=2, dtype=np.int64).astype(np.int32)


def hamming_topk(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = hamming_distance(queries, database)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]  # stable: ties keep the lower index first
    return np.take_along_axis(d, idx, axis=1), idx.astype(np.int64)
