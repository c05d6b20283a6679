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


# ---- rbe (DESIGN 3.4) -------------------------------------------------------------------------------


@register_fake("embkern::sdc_scores")
def _sdc_scores_fake(q_codes, db_codes, dim, bits, db_inv_norm=None):
    return q_codes.new_empty((q_codes.shape[0], db_codes.shape[0]), dtype=torch.float32)


@register_fake("embkern::sdc_topk")
def _sdc_topk_fake(q_codes, db_codes, dim, bits, k, db_inv_norm=None):
    nq = q_codes.shape[0]
    return (q_codes.new_empty((nq, k), dtype=torch.float32), q_codes.new_empty((nq, k), dtype=torch.int64))


@register_fake("embkern::rbe_residual")
def _rbe_residual_fake(x, h):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@register_fake("embkern::rbe_sign_step")
def _rbe_sign_step_fake(pre, levels, step):
    return pre.new_empty(pre.shape, dtype=torch.uint8), pre.new_empty(pre.shape)


@register_fake("embkern::rbe_pack_levels")
def _rbe_pack_levels_fake(levels, bits):
    n, dim = levels.shape
    return levels.new_empty((n, (dim * bits + 7) // 8)), levels.new_empty((n,), dtype=torch.float32)


@register_fake("embkern::rbe_unpack_levels")
def _rbe_unpack_levels_fake(codes, dim, bits):
    return codes.new_empty((codes.shape[0], dim))
