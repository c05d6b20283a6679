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


# ---- fastrp ----------------------------------------------------------------------------------------


@register_fake("embkern::csr_spmm")
def _csr_spmm_fake(indptr, indices, weights, x, row_scale=None, normalize=False):
    torch._check(indptr.dim() == 1 and x.dim() == 2, lambda: "csr_spmm: indptr must be 1-D and x 2-D")
    return x.new_empty((indptr.shape[0] - 1, x.shape[1]), dtype=torch.float32)


@register_fake("embkern::csr_spmm_accumulate_")
def _csr_spmm_accumulate_fake(out, indptr, indices, weights, x, row_scale=None, alpha=1.0, normalize=False):
    return None


@register_fake("embkern::fastrp")
def _fastrp_fake(indptr, indices, weights, num_nodes, dim, iteration_weights, self_weight=0.0, beta=0.0, s=3.0,
                 seed=0, node_keys=None, normalize="merge", features=None, feature_dim=0, dtype=None):
    return indices.new_empty((num_nodes, dim), dtype=torch.float32)


@register_fake("embkern::fastrp_projection")
def _fastrp_projection_fake(keys, dim, s=3.0, seed=0, feature_rows=False):
    return keys.new_empty((keys.shape[0], dim), dtype=torch.float32)


def _csr_spmm_setup_context(ctx, inputs, output):
    indptr, indices, weights, x, row_scale, normalize = inputs
    ctx.normalize = normalize
    ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
    ctx.save_for_backward(indptr, indices, weights, row_scale)


def _csr_spmm_backward(ctx, grad):
    """d/dX of row_scale * (A @ X) is A^T (row_scale * grad): a CSR x dense on the transpose, built by a
    stable sort of the column ids (deterministic, no atomics)."""
    if ctx.normalize:
        raise NotImplementedError("csr_spmm: backward with normalize=True is not implemented")
    indptr, indices, weights, row_scale = ctx.saved_tensors
    if not ctx.needs_input_grad[3]:
        return None, None, None, None, None, None
    rows, m = indptr.numel() - 1, ctx.x_shape[0]
    row_of = torch.repeat_interleave(torch.arange(rows, device=indptr.device), indptr.diff())
    order = torch.sort(indices, stable=True).indices
    t_indices = row_of[order]
    t_weights = None if weights is None else weights[order]
    t_indptr = torch.zeros(m + 1, dtype=torch.int64, device=indptr.device)
    t_indptr[1:] = torch.bincount(indices, minlength=m).cumsum(0)
    g = grad.to(torch.float32)
    if row_scale is not None:
        g = g * row_scale[:, None]
    gx = torch.ops.embkern.csr_spmm(t_indptr, t_indices, t_weights, g.contiguous(), None, False)
    return None, None, None, gx.to(ctx.x_dtype), None, None


torch.library.register_autograd("embkern::csr_spmm", _csr_spmm_backward, setup_context=_csr_spmm_setup_context)
