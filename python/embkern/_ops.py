"""Fake (meta) kernels: output shapes and dtypes for torch.compile, FakeTensor and opcheck; and the autograd
of the ops that are not called once per training step (those register theirs in C++)."""
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
# ---- cur ---------------------------------------------------------------------------------------


@register_fake("embkern::score_topk")
def _score_topk_fake(C, E, k, exclude=None, scales=None):
    torch._check(C.dim() == 2, lambda: f"score_topk: C must be a 2-D tensor, got {C.dim()}-D")
    torch._check(E.dim() == 2, lambda: f"score_topk: E must be a 2-D tensor, got {E.dim()}-D")
    b = C.shape[0]
    return C.new_empty((b, k), dtype=torch.float32), C.new_empty((b, k), dtype=torch.int64)


def _score_topk_setup_context(ctx, inputs, output):
    C, E, k, exclude, scales = inputs
    _, ids = output
    ctx.mark_non_differentiable(ids)
    ctx.save_for_backward(C, E, ids, scales)


def _score_topk_backward(ctx, grad_vals, grad_ids):
    # scores[b, i] = (scale[id]) * sum_j C[b, j] E[j, id]: the selection is piecewise constant, so the
    # gradient flows through the selected columns only.
    C, E, ids, scales = ctx.saved_tensors
    b, k = ids.shape
    r = E.shape[0]
    flat = ids.reshape(-1)
    cols = E.index_select(1, flat).to(torch.float32)  # [r, B*k]
    if scales is not None:
        cols = cols * scales.index_select(0, flat)
    grad_C = grad_E = None
    if ctx.needs_input_grad[0]:
        grad_C = torch.einsum("bk,rbk->br", grad_vals, cols.view(r, b, k))
    if ctx.needs_input_grad[1]:
        w = grad_vals.reshape(-1) if scales is None else grad_vals.reshape(-1) * scales.index_select(0, flat)
        contrib = C.repeat_interleave(k, dim=0).t() * w  # [r, B*k]
        grad_E = torch.zeros(E.shape, dtype=torch.float32, device=E.device).index_add_(1, flat, contrib).to(E.dtype)
    return grad_C, grad_E, None, None, None


torch.library.register_autograd("embkern::score_topk", _score_topk_backward, setup_context=_score_topk_setup_context)
# ---- embedding (DESIGN 3.1) ---------------------------------------------------------------------


def _mux_out_shape(weight, values, offsets, probe_offsets, probe_row_base, pooling, combine):
    F = probe_offsets.shape[0] - 1
    torch._check(F >= 1, lambda: "mux_embedding_bag: probe_offsets must have F + 1 >= 2 entries")
    D = weight.shape[1]
    if pooling == "none":
        rows = values.shape[0]
        if combine == "sum":
            cols = D
        elif F == 1:
            cols = probe_row_base.shape[0] * D
        else:  # max probes per feature: data dependent
            cols = torch.library.get_ctx().new_dynamic_size() * D
    else:
        rows = (offsets.shape[0] - 1) // F
        cols = D if combine == "sum" else probe_row_base.shape[0] * D
    return rows, cols


@register_fake("embkern::mux_embedding_bag")
def _mux_embedding_bag_fake(weight, values, offsets, probe_offsets, probe_row_base, probe_row_size, probe_keys,
                            pooling="sum", combine="concat", per_sample_weights=None, sparse=False):
    rows, cols = _mux_out_shape(weight, values, offsets, probe_offsets, probe_row_base, pooling, combine)
    return weight.new_empty((rows, cols))


@register_fake("embkern::mux_embedding_bag_fused")
def _mux_embedding_bag_fused_fake(weight, momentum, values, offsets, probe_offsets, probe_row_base, probe_row_size,
                                  probe_keys, pooling, combine, per_sample_weights, optimizer, lr, eps=1e-8):
    rows, cols = _mux_out_shape(weight, values, offsets, probe_offsets, probe_row_base, pooling, combine)
    return weight.new_empty((rows, cols))


@register_fake("embkern::mux_embedding_bag_backward")
def _mux_backward_fake(grad, weight, *layout):
    return weight.new_empty(weight.shape)


@register_fake("embkern::mux_embedding_bag_backward_sparse")
def _mux_backward_sparse_fake(grad, weight, *layout):
    u = torch.library.get_ctx().new_dynamic_size()
    return weight.new_empty((u,), dtype=torch.int64), weight.new_empty((u, weight.shape[1]))


@register_fake("embkern::mux_embedding_bag_psw_backward")
def _mux_psw_backward_fake(grad, weight, values, *layout):
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    return weight.new_empty((values.shape[0],), dtype=acc)


@register_fake("embkern::mux_embedding_bag_sgd_")
def _mux_sgd_fake(weight, grad, *args):
    return None


@register_fake("embkern::mux_embedding_bag_rowwise_adagrad_")
def _mux_rowwise_adagrad_fake(weight, momentum, grad, *args):
    return None


# The autograd of mux_embedding_bag and mux_embedding_bag_fused is C++ (end of
# csrc/embedding/embedding_op.cpp): run once per training step, they cannot afford this path's ~100 us.


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
    # normalize=True: the backward recomputes the unnormalized rows from x (no extra forward output)
    ctx.save_for_backward(indptr, indices, weights, row_scale, x if normalize else None)


def _csr_spmm_backward(ctx, grad):
    """d/dX of v = row_scale * (A @ X) is A^T (row_scale * dv): a CSR x dense on the transpose, built by
    a stable sort of the column ids (deterministic, no atomics). With normalize=True, y = v / ||v|| per
    row and dv = (dy - y (y . dy)) / ||v|| (0 for a zero row, which normalizes to zero)."""
    indptr, indices, weights, row_scale, x = ctx.saved_tensors
    if not ctx.needs_input_grad[3]:
        return None, None, None, None, None, None
    g = grad.to(torch.float32)
    if ctx.normalize:
        v = torch.ops.embkern.csr_spmm(indptr, indices, weights, x, row_scale, False)
        ss = (v * v).sum(dim=1, keepdim=True)  # fp32 like the kernel: a row whose sum overflows gave 0 too
        inv = torch.where((ss > 0) & torch.isfinite(ss), torch.rsqrt(ss), torch.zeros_like(ss))
        y = v * inv
        g = (g - y * (y * g).sum(dim=1, keepdim=True)) * inv
    rows, m = indptr.numel() - 1, ctx.x_shape[0]
    row_of = torch.repeat_interleave(torch.arange(rows, device=indptr.device), indptr.diff())
    sorted_indices, order = torch.sort(indices, stable=True)
    t_indices = row_of[order]
    t_weights = None if weights is None else weights[order]
    # t_indptr[c] = #entries with column < c; unlike bincount, its size does not depend on the data
    # (opcheck's dynamic-shape tracing cannot guard on a bincount length)
    t_indptr = torch.searchsorted(sorted_indices, torch.arange(m + 1, dtype=sorted_indices.dtype, device=indptr.device))
    if row_scale is not None:
        g = g * row_scale[:, None]
    gx = torch.ops.embkern.csr_spmm(t_indptr, t_indices, t_weights, g.contiguous(), None, False)
    return None, None, None, gx.to(ctx.x_dtype), None, None


torch.library.register_autograd("embkern::csr_spmm", _csr_spmm_backward, setup_context=_csr_spmm_setup_context)
