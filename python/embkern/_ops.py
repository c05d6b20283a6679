"""Fake (meta) kernels: output shapes and dtypes for torch.compile, FakeTensor and opcheck."""
from __future__ import annotations

import torch
from torch.library import register_fake


@register_fake("embkern::pack_bits")
def _pack_bits_fake(x, threshold=0.0):
    torch._check(x.dim() == 2, lambda: f"pack_bits: x must be a 2-D tensor, got {x.dim()}-D")
    return x.new_empty((x.shape[0], (x.shape[1] + 7) // 8), dtype=torch.uint8)


@register_fake("embkern::unpack_bits")
def _unpack_bits_fake(codes, dim):
    torch._check(codes.dim() == 2, lambda: f"unpack_bits: codes must be a 2-D tensor, got {codes.dim()}-D")
    return codes.new_empty((codes.shape[0], dim), dtype=torch.bool)


@register_fake("embkern::hamming_distance")
def _hamming_distance_fake(queries, database):
    return queries.new_empty((queries.shape[0], database.shape[0]), dtype=torch.int32)


@register_fake("embkern::hamming_topk")
def _hamming_topk_fake(queries, database, k):
    nq = queries.shape[0]
    return (queries.new_empty((nq, k), dtype=torch.int32), queries.new_empty((nq, k), dtype=torch.int64))


# ---- int8 family ----------------------------------------------------------------------------------


@register_fake("embkern::int8_quantize")
def _int8_quantize_fake(x, scale, zero_point):
    torch._check(x.dim() == 2, lambda: f"int8_quantize: x must be a 2-D tensor, got {x.dim()}-D")
    return x.new_empty(x.shape, dtype=torch.int8)


@register_fake("embkern::int8_topk")
def _int8_topk_fake(queries, database, k, metric="dot", database_norms=None):
    torch._check(queries.dim() == 2 and database.dim() == 2, lambda: "int8_topk: queries and database must be 2-D")
    nq = queries.shape[0]
    return (queries.new_empty((nq, k), dtype=torch.float32), queries.new_empty((nq, k), dtype=torch.int64))
