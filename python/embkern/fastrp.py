"""FastRP node embeddings by very sparse random projection, and the CSR x dense building block
(DESIGN section 3.5).

``A = D^-1 S`` (S the weighted adjacency, D its row sums), ``L = diag(deg^beta)``,
``N_1 = A L R``, ``N_i = A N_{i-1}``; the embedding is ``sum_i iteration_weights[i-1] N_i`` plus
``self_weight * L R``. ``iteration_weights[i]`` weights the (i+1)-hop term (the paper's and Neo4j GDS's
convention; PyPI ``fastrp`` and Raphtory shift it by one). R is never stored: entry ``R[key, c]`` is
``+sqrt(s)`` / ``-sqrt(s)`` with probability ``1/(2s)`` each, else 0, computed from a hash of
``(seed, node key, c)`` (see :func:`fastrp_projection`), so embeddings are reproducible across
machines, thread counts, CPU and CUDA, and node orderings (pass stable ``node_keys``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence, Union

import numpy as np
import torch

from ._utils import ArrayLike, as_tensor, to_output

__all__ = ["fastrp", "csr_spmm", "fastrp_projection", "fastrp_preset", "FASTRP_PRESETS"]

#: Named settings: ``embkern.fastrp(adj, dim, **embkern.fastrp_preset("paper"))``.
#: "paper": the authors' code (GTmac/FastRP) with its BlogCatalog configuration: s = sqrt(n),
#: each N_i L2-normalized when merging, weights (0, 0, 1, 6.67) on N_1..N_4, beta = -0.64 (their
#: code then column-standardizes the result: ``(E - E.mean(0)) / E.std(0)``).
#: "gds": Neo4j GDS FastRP defaults: s = 3, iterates L2-normalized before propagating,
#: iterationWeights (0, 1, 1), normalizationStrength (beta) 0, nodeSelfInfluence 0.
FASTRP_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"iteration_weights": (0.0, 0.0, 1.0, 6.67), "beta": -0.64, "s": "sqrt_n", "normalize": "merge",
              "self_weight": 0.0},
    "gds": {"iteration_weights": (0.0, 1.0, 1.0), "beta": 0.0, "s": 3.0, "normalize": "propagate", "self_weight": 0.0},
}

_INT64_MIN, _UINT64 = -(1 << 63), 1 << 64


def fastrp_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a named preset ("paper" or "gds"), updated with ``overrides``."""
    if name not in FASTRP_PRESETS:
        raise ValueError(f"fastrp_preset: name must be one of {sorted(FASTRP_PRESETS)}, got {name!r}")
    return {**FASTRP_PRESETS[name], **overrides}


def _seed_bits(seed: Any) -> int:
    """Any Python int -> the int64 with the same low 64 bits (the hash works on uint64)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"fastrp: seed must be an int, got {type(seed).__name__}")
    s = int(seed) % _UINT64
    return s - _UINT64 if s >= 1 << 63 else s


def _index_tensor(x: Any, name: str, device: torch.device | None, keep_int32: bool = False) -> torch.Tensor:
    """An integer array as int64; with keep_int32 (column ids) int32 stays as is: the ops take it (the
    CPU kernels read it in place, so a scipy matrix's indices are not copied; CUDA widens it)."""
    t = as_tensor(x, name, device)
    if t.dtype in (torch.int32, torch.int16, torch.uint8, torch.int8) and not (keep_int32 and t.dtype == torch.int32):
        t = t.to(torch.int64)
    return t


def _weights_tensor(w: Any, device: torch.device | None) -> torch.Tensor | None:
    if w is None:
        return None
    t = as_tensor(w, "weights", device)
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.to(torch.float32)
    elif not t.is_floating_point() and t.dtype != torch.bool:
        t = t.to(torch.float32)
    return t


def _csr_parts(adjacency: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int | None, bool]:
    """(indptr, indices, weights|None, n or None when unknown, numpy_out)."""
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover
        sp = None
    if sp is not None and sp.issparse(adjacency):
        if adjacency.shape[0] != adjacency.shape[1]:
            raise ValueError(f"fastrp: adjacency must be square (n x n), got shape {adjacency.shape}")
        csr = adjacency.tocsr()
        return (_index_tensor(csr.indptr, "indptr", None), _index_tensor(csr.indices, "indices", None, True),
                _weights_tensor(csr.data, None), int(csr.shape[0]), True)
    if isinstance(adjacency, torch.Tensor):
        if adjacency.layout == torch.sparse_coo:
            adjacency = adjacency.coalesce().to_sparse_csr()
        if adjacency.layout != torch.sparse_csr:
            raise TypeError(f"fastrp: a torch adjacency must be a sparse CSR (or COO) tensor, got layout {adjacency.layout}")
        if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
            raise ValueError(f"fastrp: adjacency must be square (n x n), got shape {tuple(adjacency.shape)}")
        dev = adjacency.device
        return (_index_tensor(adjacency.crow_indices(), "indptr", dev), _index_tensor(adjacency.col_indices(), "indices", dev, True),
                _weights_tensor(adjacency.values(), dev), int(adjacency.shape[0]), False)
    if isinstance(adjacency, (tuple, list)) and len(adjacency) == 3:
        indptr, indices, weights = adjacency
        numpy_out = not isinstance(indptr, torch.Tensor)
        dev = indptr.device if isinstance(indptr, torch.Tensor) else None
        return (_index_tensor(indptr, "indptr", dev), _index_tensor(indices, "indices", dev, True), _weights_tensor(weights, dev),
                None, numpy_out)
    raise TypeError("fastrp: adjacency must be a scipy sparse matrix, a torch sparse CSR tensor or a tuple "
                    f"(indptr, indices, weights or None), got {type(adjacency).__name__}")


def _dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, str):
        table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in table:
            raise TypeError(f"fastrp: dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
        return table[dtype]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"fastrp: dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
    return dtype


def fastrp(
    adjacency: Any,
    dim: int,
    iteration_weights: Sequence[float],
    *,
    self_weight: float = 0.0,
    beta: float = 0.0,
    s: Union[float, str] = 3.0,
    seed: int = 0,
    normalize: str = "merge",
    node_keys: ArrayLike | None = None,
    features: ArrayLike | None = None,
    feature_dim: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ArrayLike:
    """FastRP embeddings of the nodes of a graph.

    Args:
        adjacency: n x n graph, row i holding node i's out-edges: a scipy sparse matrix (any format), a
            torch sparse CSR (or COO) tensor (CPU or CUDA), or ``(indptr, indices, weights or None)``
            (numpy or torch; ``n = len(indptr) - 1``, or ``len(node_keys)`` / ``len(features)`` when
            given). Weights must be finite and >= 0; None means 1 for every edge. For an undirected
            graph store both directions.
        dim: embedding width (> 0).
        iteration_weights: entry i weights the (i+1)-hop term N_{i+1}; trailing zeros cost nothing.
        self_weight: weight of the 0-hop term ``L R`` (GDS's nodeSelfInfluence).
        beta: degree exponent of ``L = diag(deg^beta)`` (a node without edges counts as degree 1).
        s: sparsity: entries of R are non-zero with probability 1/s (s >= 1); ``"sqrt_n"`` uses sqrt(n).
        seed: any int (its low 64 bits are used).
        normalize: ``"merge"``: each term is L2-normalized (row-wise) when added to the sum, the
            iterates propagate unnormalized (the authors' code); ``"propagate"``: each iterate is
            L2-normalized before it is propagated and when added (Neo4j GDS); ``"none"``: no
            normalization. In "merge" and "propagate" the 0-hop term is normalized too.
        node_keys: int64 [n] stable node ids that seed R's rows (default: 0..n-1). Reordering nodes
            together with their keys reorders the output rows and changes nothing else.
        features: float32 [n, F] node features; they fill the last ``feature_dim`` columns of the
            initial vectors through a very sparse random projection P [F, feature_dim] (hashed like R
            in a separate key space), the first ``dim - feature_dim`` columns come from R.
        feature_dim: columns filled from features (0 <= feature_dim <= dim; > 0 iff features given).
        dtype: storage of the propagated matrices: torch.float32 or torch.bfloat16 (half the memory
            traffic); accumulation is always float32 and so is the output.
    Returns:
        float32 [n, dim]: a numpy array for scipy / numpy inputs, else a tensor on the input's device.
        Memory: at most three n x dim buffers (two iterates in ``dtype`` and the float32 output); two
        on the CPU in float32 without a self term when the first non-zero iteration weight is the
        second to last (e.g. weights (0, 1, 1) and both presets).
    """
    indptr, indices, weights, n, numpy_out = _csr_parts(adjacency)
    dev = indices.device
    keys_t = None if node_keys is None else _index_tensor(node_keys, "node_keys", dev)
    feats_t = None
    if features is not None:
        feats_t = as_tensor(features, "features", dev)
        if feats_t.is_floating_point() and feats_t.dtype != torch.float32:
            feats_t = feats_t.to(torch.float32)
    if n is None:
        if keys_t is not None:
            n = int(keys_t.shape[0]) if keys_t.dim() == 1 else indptr.numel() - 1
        elif feats_t is not None and feats_t.dim() == 2:
            n = int(feats_t.shape[0])
        else:
            n = indptr.numel() - 1
    if isinstance(s, str):
        if s != "sqrt_n":
            raise ValueError(f"fastrp: s must be a number >= 1 or 'sqrt_n', got {s!r}")
        s = math.sqrt(max(n, 1))
    if not isinstance(normalize, str):
        raise TypeError(f"fastrp: normalize must be a str, got {type(normalize).__name__}")
    out = torch.ops.embkern.fastrp(
        indptr, indices, weights, int(n), int(dim), [float(w) for w in iteration_weights], float(self_weight),
        float(beta), float(s), _seed_bits(seed), keys_t, normalize, feats_t, int(feature_dim), _dtype(dtype))
    return to_output(out, numpy_out)


def fastrp_projection(keys: ArrayLike, dim: int, s: float = 3.0, seed: int = 0, *, feature_rows: bool = False) -> ArrayLike:
    """Rows of FastRP's random projection R for the given node keys (debug and reference use).

    ``R[key, c] = +sqrt(s)`` if ``h < t``, ``-sqrt(s)`` if ``~h < t``, else 0, with ``t = floor(2^64 / (2s))``
    and ``h = mix64(mix64(mix64(seed) ^ key) + c * 0x9E3779B97F4A7C15)`` (mix64: splitmix64's finalizer,
    csrc/common/hash.h). ``feature_rows=True`` gives the rows of the feature projection P instead
    (keys = feature indices; the seed state is ``mix64(~seed)``).

    Args:
        keys: int64 [k]. dim: columns (> 0). s: >= 1 (a number; resolve "sqrt_n" yourself).
    Returns:
        float32 [k, dim], same kind and device as ``keys``.
    """
    numpy_out = not isinstance(keys, torch.Tensor)
    k = _index_tensor(keys, "keys", None)
    out = torch.ops.embkern.fastrp_projection(k, int(dim), float(s), _seed_bits(seed), bool(feature_rows))
    return to_output(out, numpy_out)


def csr_spmm(
    indptr: ArrayLike,
    indices: ArrayLike,
    weights: ArrayLike | None,
    X: ArrayLike,
    row_scale: ArrayLike | None = None,
    *,
    normalize: bool = False,
    out: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> ArrayLike:
    """Sparse (CSR) x dense with a fused epilogue: ``v = row_scale[:, None] * (A @ X)``.

    Args:
        indptr: int64 (or int32) [rows + 1], starting at 0, non-decreasing, ending at nnz.
        indices: int64 (or int32) [nnz], column ids in [0, X.shape[0]).
        weights: float32 [nnz] or None (all ones).
        X: float32 or bfloat16 [m, d] (bf16 is widened exactly; accumulation is float32).
        row_scale: float32 [rows] or None.
        normalize: L2-normalize each output row (a zero row stays zero).
        out: float32 [rows, d]: when given, ``out += alpha * v`` in place and ``out`` is returned.
    Returns:
        float32 [rows, d] (numpy when X is numpy). Each row's entries are summed in CSR order, so the
        result is bitwise identical for any thread count and on every CPU ISA path.
    """
    numpy_out = not isinstance(X, torch.Tensor)
    x = as_tensor(X, "X")
    dev = x.device
    ip = _index_tensor(indptr, "indptr", dev)
    ix = _index_tensor(indices, "indices", dev, True)
    w = _weights_tensor(weights, dev)
    rs = None if row_scale is None else as_tensor(row_scale, "row_scale", dev)
    if rs is not None and rs.is_floating_point() and rs.dtype != torch.float32:
        rs = rs.to(torch.float32)
    if out is not None:
        torch.ops.embkern.csr_spmm_accumulate_(out, ip, ix, w, x, rs, float(alpha), bool(normalize))
        return out
    return to_output(torch.ops.embkern.csr_spmm(ip, ix, w, x, rs, bool(normalize)), numpy_out)


