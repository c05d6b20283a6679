"""Bit packing and Hamming search (DESIGN section 3.2).

Bit order follows ``numpy.packbits`` (and sentence-transformers' ``ubinary``, usearch): dimension 0 is
the most significant bit of byte 0, and padding bits of the last byte are 0. FAISS packs lowest bit
first with ``x >= 0``; convert with ``numpy.packbits(x > 0, axis=1)`` semantics in mind.
"""
from __future__ import annotations

import torch

from ._utils import ArrayLike, as_2d, as_tensor, device_of, to_output, topk_output

__all__ = ["pack_bits", "unpack_bits", "hamming_distance", "hamming_topk"]


def pack_bits(x: ArrayLike, threshold: float = 0.0) -> ArrayLike:
    """Binarizes and packs: bit = 1 iff ``x > threshold`` (NaN gives 0).

    Args:
        x: float (any real dtype) ``[N, D]`` or ``[D]``, torch tensor or numpy array.
        threshold: compared in x's own dtype.
    Returns:
        uint8 ``[N, ceil(D / 8)]`` (or ``[ceil(D / 8)]``), same kind and device as ``x``.
    """
    numpy_out = not isinstance(x, torch.Tensor)
    t, one = as_2d(as_tensor(x, "x"), "x")
    out = torch.ops.embkern.pack_bits(t, float(threshold))
    return to_output(out[0] if one else out, numpy_out)


def unpack_bits(codes: ArrayLike, dim: int) -> ArrayLike:
    """Inverse of :func:`pack_bits`: uint8 ``[N, ceil(dim / 8)]`` -> bool ``[N, dim]``."""
    numpy_out = not isinstance(codes, torch.Tensor)
    t, one = as_2d(as_tensor(codes, "codes"), "codes")
    out = torch.ops.embkern.unpack_bits(t, int(dim))
    return to_output(out[0] if one else out, numpy_out)


def hamming_distance(queries: ArrayLike, database: ArrayLike) -> ArrayLike:
    """All pairwise Hamming distances.

    Args:
        queries: uint8 ``[Q, B]`` or ``[B]`` packed codes.
        database: uint8 ``[N, B]`` packed codes, same byte width and device.
    Returns:
        int32 ``[Q, N]`` (``[N]`` for one query).
    """
    numpy_out = not isinstance(queries, torch.Tensor)
    q, one = as_2d(as_tensor(queries, "queries"), "queries")
    db = as_tensor(database, "database", device_of(queries))
    out = torch.ops.embkern.hamming_distance(q, db)
    return to_output(out[0] if one else out, numpy_out)


def hamming_topk(queries: ArrayLike, database: ArrayLike, k: int) -> tuple[ArrayLike, ArrayLike]:
    """Exact k nearest codes by Hamming distance, without a Q x N buffer.

    Args:
        queries: uint8 ``[Q, B]`` or ``[B]``.
        database: uint8 ``[N, B]``, N >= 1.
        k: 1 <= k <= N.
    Returns:
        ``(distances int32 [Q, k], indices int64 [Q, k])``, best first, ties to the lower index.
    """
    numpy_out = not isinstance(queries, torch.Tensor)
    q, one = as_2d(as_tensor(queries, "queries"), "queries")
    db = as_tensor(database, "database", device_of(queries))
    d, i = torch.ops.embkern.hamming_topk(q, db, int(k))
    return topk_output(d, i, one, numpy_out)
