"""int8 quantization, exact int8 similarity search, rescoring, and a binary/int8 search cascade
(DESIGN section 3.3).

Quantization is affine per tensor or per dimension::

    code = saturate_int8(rint(x / scale) + zero_point)      rint: round half to even, in float32
    x   ~= (code - zero_point) * scale

Values outside the int8 range saturate to -128 / 127 (never wrap); NaN or Inf input raises.
See docs/int8.md for how this relates to sentence-transformers' ``quantize_embeddings``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from ._utils import ArrayLike, as_2d, as_tensor, device_of, to_output, topk_output

__all__ = [
    "Int8Params",
    "int8_calibrate",
    "int8_quantize",
    "int8_dequantize",
    "int8_norms",
    "int8_topk",
    "rescore",
    "SearchIndex",
]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class Int8Params(NamedTuple):
    """Affine int8 quantization parameters.

    scale: float32 tensor, ``[]`` (one for all dimensions) or ``[D]`` (per dimension), finite, > 0.
    zero_point: int32 tensor of the same shape, values in [-128, 127] (0 for symmetric methods).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor

    def to(self, device) -> "Int8Params":
        return Int8Params(self.scale.to(device), self.zero_point.to(device))


def _check_float_2d(t: torch.Tensor, op: str, name: str) -> torch.Tensor:
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be a floating tensor (float32, float16, bfloat16 or float64), got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{op}: {name} must be a 2-D tensor, got {t.dim()}-D with shape {tuple(t.shape)}")
    return t


def _check_finite(t: torch.Tensor, op: str, name: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        where = tuple(int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{op}: {name} must be finite, got {float(t[where])} at {list(where)}")


def int8_calibrate(
    x: ArrayLike, method: str = "absmax", quantile: float = 0.999, per_dim: bool = False
) -> Int8Params:
    """Chooses int8 quantization parameters from calibration vectors.

    Args:
        x: float ``[N, D]`` (N >= 1) calibration embeddings, torch tensor or numpy array.
        method: ``"absmax"`` (symmetric: scale = max|x| / 127, zero point 0), ``"quantile"``
            (symmetric: scale = quantile(|x|, q) / 127, clipping the rare outliers), or
            ``"minmax"`` (asymmetric: the range [min(x, 0), max(x, 0)] onto [-128, 127]; the range
            always contains 0 so that the zero point is an exact int8 value).
        quantile: q in (0, 1] for ``method="quantile"``.
        per_dim: one scale (and zero point) per dimension instead of one for the whole tensor.
    Returns:
        :class:`Int8Params` on x's device. A dimension (or tensor) whose range is 0 gets scale 1
        (every value is then 0 and quantizes exactly); a quantile of 0 falls back to the absmax.
    """
    op = "int8_calibrate"
    t = _check_float_2d(as_tensor(x, "x"), op, "x")
    if t.shape[0] == 0:
        raise ValueError(f"{op}: x must have at least one row, got shape {tuple(t.shape)}")
    _check_finite(t, op, "x")
    if method not in ("absmax", "minmax", "quantile"):
        raise ValueError(f"{op}: method must be 'absmax', 'minmax' or 'quantile', got {method!r}")
    if method == "quantile" and not (0.0 < float(quantile) <= 1.0):
        raise ValueError(f"{op}: quantile must be in (0, 1], got {quantile}")
    t = t.to(torch.float64)
    dims = 0 if per_dim else None

    def reduce(fn, v):
        return fn(v, dim=0).values if per_dim else fn(v)

    a = t.abs()
    if method == "absmax":
        hi = reduce(torch.max, a)
        scale, zp = hi / 127.0, torch.zeros_like(hi)
    elif method == "quantile":
        amax = reduce(torch.max, a)
        # torch.quantile is limited to 2^24 elements; numpy has no such limit.
        qv = np.quantile(a.cpu().numpy(), float(quantile), axis=dims)
        hi = torch.as_tensor(qv, dtype=torch.float64, device=t.device)
        hi = torch.where(hi > 0, hi, amax)
        scale, zp = hi / 127.0, torch.zeros_like(hi)
    else:
        lo = torch.clamp(reduce(torch.min, t), max=0.0)
        hi = torch.clamp(reduce(torch.max, t), min=0.0)
        scale = (hi - lo) / 255.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.where(scale > 0, torch.clamp(torch.round(-128.0 - lo / safe), -128, 127), torch.zeros_like(scale))
    scale32 = scale.to(torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    scale32 = torch.where(scale > 0, torch.clamp(scale32, min=tiny), torch.ones_like(scale32))
    return Int8Params(scale32, zp.to(torch.int32))


def _params_on(params: Int8Params, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(params, tuple) or len(params) != 2:
        raise TypeError(f"params must be an Int8Params(scale, zero_point), got {type(params).__name__}")
    scale, zp = params
    return as_tensor(scale, "scale").to(device), as_tensor(zp, "zero_point").to(device)


def int8_quantize(x: ArrayLike, params: Int8Params) -> ArrayLike:
    """Quantizes float vectors: ``saturate_int8(rint(x / scale) + zero_point)``.

    Computed in float32 (other float dtypes are converted first); round half to even; values
    past the int8 range saturate to -128 / 127. Raises ValueError for NaN or Inf in x, a scale
    that is not finite and > 0, or a zero point outside [-128, 127].

    Args:
        x: float ``[N, D]`` or ``[D]``.
        params: :class:`Int8Params` from :func:`int8_calibrate` (scale / zero point scalar or ``[D]``).
    Returns:
        int8 ``[N, D]`` (``[D]``), same kind and device as x.
    """
    numpy_out = not isinstance(x, torch.Tensor)
    t, one = as_2d(as_tensor(x, "x"), "x")
    scale, zp = _params_on(params, t.device)
    out = torch.ops.embkern.int8_quantize(t, scale, zp)
    return to_output(out[0] if one else out, numpy_out)


def int8_dequantize(codes: ArrayLike, params: Int8Params) -> ArrayLike:
    """``(codes - zero_point) * scale`` in float32: int8 ``[N, D]`` or ``[D]`` -> float32."""
    numpy_out = not isinstance(codes, torch.Tensor)
    t = as_tensor(codes, "codes")
    if t.dtype != torch.int8:
        raise TypeError(f"int8_dequantize: codes must have dtype torch.int8, got {t.dtype}")
    scale, zp = _params_on(params, t.device)
    out = (t.to(torch.float32) - zp.to(torch.float32)) * scale.to(torch.float32)
    return to_output(out, numpy_out)


def int8_norms(codes: ArrayLike) -> ArrayLike:
    """float32 L2 norms of int8 rows, ``float32(sqrt(exact integer sum of squares))``: the
    ``database_norms`` that :func:`int8_topk` expects for ``metric="cosine"``."""
    numpy_out = not isinstance(codes, torch.Tensor)
    t, one = as_2d(as_tensor(codes, "codes"), "codes")
    if t.dtype != torch.int8:
        raise TypeError(f"int8_norms: codes must have dtype torch.int8, got {t.dtype}")
    out = t.to(torch.int64).square().sum(1).to(torch.float64).sqrt().to(torch.float32)
    return to_output(out[0] if one else out, numpy_out)


def int8_topk(
    queries: ArrayLike,
    database: ArrayLike,
    k: int,
    metric: str = "dot",
    database_norms: Optional[ArrayLike] = None,
) -> tuple[ArrayLike, ArrayLike]:
    """Exact top-k over int8 vectors, never materializing Q x N scores.

    Dot products accumulate exactly in int32 (D <= 131071 so they cannot overflow) and are
    ranked exactly; the returned float32 scores equal them exactly while |dot| < 2^24 (always for
    D <= 1024). ``metric="cosine"`` scores ``(float(dot) * (1 / |d|)) * (1 / |q|)`` in float32,
    with the norms of the int8 rows (pass ``database_norms`` from :func:`int8_norms` to reuse them;
    the query norms are computed). Zero-norm rows raise under cosine.

    Args:
        queries: int8 ``[Q, D]`` or ``[D]``.
        database: int8 ``[N, D]``, N >= 1, same device.
        k: 1 <= k <= N.
    Returns:
        ``(scores float32 [Q, k], indices int64 [Q, k])``, best first, ties to the lower index.
    """
    numpy_out = not isinstance(queries, torch.Tensor)
    q, one = as_2d(as_tensor(queries, "queries"), "queries")
    db = as_tensor(database, "database", device_of(queries))
    norms = None if database_norms is None else as_tensor(database_norms, "database_norms", db.device)
    v, i = torch.ops.embkern.int8_topk(q, db, int(k), str(metric), norms)
    return topk_output(v, i, one, numpy_out)


# ---- rescoring -------------------------------------------------------------------------------------------

_RESCORE_CHUNK_FLOATS = 1 << 24  # gathered candidate floats per chunk of queries (64 MB)


def rescore(
    queries: ArrayLike,
    candidates: ArrayLike,
    corpus: ArrayLike,
    k: int,
    metric: str = "dot",
    params: Optional[Int8Params] = None,
) -> tuple[ArrayLike, ArrayLike]:
    """Re-ranks candidate ids by exact float32 similarity with the queries.

    Args:
        queries: float ``[Q, D]`` (or ``[D]``), computed in float32.
        candidates: int64 ``[Q, C]`` corpus row ids; -1 means "no candidate" and is ignored, as
            is a repeated id (after its first occurrence). Any other id outside [0, N) raises
            IndexError.
        corpus: ``[N, D]`` rows in float32, bfloat16, float16 or int8. int8 rows are dequantized
            with ``params`` when given, else used as their integer values (for symmetric codes
            with one scale this ranks exactly like the dequantized rows).
        k: 1 <= k <= C.
        metric: ``"dot"`` or ``"cosine"`` (zero-norm queries or candidate rows raise).
    Returns:
        ``(scores float32 [Q, k], ids int64 [Q, k])``, best first, ties to the lower id; a query
        with fewer than k valid candidates is padded with score -inf and id -1.
    """
    op = "rescore"
    numpy_out = not isinstance(queries, torch.Tensor)
    q, one = as_2d(as_tensor(queries, "queries"), "queries")
    dev = q.device
    cand = as_tensor(candidates, "candidates", dev)
    if one and cand.dim() == 1:
        cand = cand.unsqueeze(0)
    rows = as_tensor(corpus, "corpus", dev)
    _check_float_2d(q, op, "queries")
    if cand.dtype != torch.int64:
        raise TypeError(f"{op}: candidates must have dtype torch.int64, got {cand.dtype}")
    if cand.dim() != 2 or cand.shape[0] != q.shape[0]:
        raise ValueError(f"{op}: candidates must have shape [{q.shape[0]}, C] (one row per query), got {tuple(cand.shape)}")
    if rows.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.int8):
        raise TypeError(f"{op}: corpus must have dtype torch.float32, torch.bfloat16, torch.float16 or torch.int8, got {rows.dtype}")
    if rows.dim() != 2 or rows.shape[1] != q.shape[1]:
        raise ValueError(f"{op}: corpus must have shape [N, {q.shape[1]}] (the queries' dimension), got {tuple(rows.shape)}")
    for name, t in (("candidates", cand), ("corpus", rows)):
        if t.device != dev:
            raise ValueError(f"{op}: queries and {name} must be on the same device, got {dev} and {t.device}")
    if metric not in ("dot", "cosine"):
        raise ValueError(f"{op}: metric must be 'dot' or 'cosine', got {metric!r}")
    nq, c = cand.shape
    n = rows.shape[0]
    if not 1 <= int(k) <= c:
        raise ValueError(f"{op}: k must be in [1, {c}] (the number of candidates per query), got {k}")
    if cand.numel():
        lo, hi = int(cand.min()), int(cand.max())
        if lo < -1 or hi >= n:
            bad = lo if lo < -1 else hi
            raise IndexError(f"{op}: candidates must be -1 or in [0, {n}) (the corpus rows), got {bad}")
    qf = q.to(torch.float32)
    _check_finite(qf, op, "queries")
    if metric == "cosine":
        qn = torch.linalg.vector_norm(qf, dim=1)
        if bool((qn == 0).any()):
            raise ValueError(f"{op}: metric='cosine' needs non-zero queries, got a zero norm for query {int((qn == 0).nonzero()[0])}")
        qf = qf / qn[:, None]
    if rows.dtype == torch.int8 and params is not None:
        scale, zp = _params_on(params, dev)

    # Sorted ids: a stable sort by score then keeps ties in increasing id order; repeats drop out.
    ids, _ = torch.sort(cand, dim=1)
    valid = ids >= 0
    valid[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    out_v = torch.empty((nq, int(k)), dtype=torch.float32, device=dev)
    out_i = torch.empty((nq, int(k)), dtype=torch.int64, device=dev)
    step = max(1, _RESCORE_CHUNK_FLOATS // max(1, c * q.shape[1]))
    for s in range(0, nq, step):
        e = min(nq, s + step)
        g = rows[ids[s:e].clamp(min=0)].to(torch.float32)  # [b, C, D]
        if rows.dtype == torch.int8 and params is not None:
            g = (g - zp.to(torch.float32)) * scale
        if metric == "cosine":
            gn = torch.linalg.vector_norm(g, dim=2)
            zero = (gn == 0) & valid[s:e]
            if bool(zero.any()):
                r, j = (int(v) for v in zero.nonzero()[0])
                raise ValueError(f"{op}: metric='cosine' needs non-zero rows, got a zero norm for corpus row {int(ids[s + r, j])}")
            g = g / torch.where(gn > 0, gn, torch.ones_like(gn))[..., None]
        sc = torch.einsum("bd,bcd->bc", qf[s:e], g)
        sc = torch.where(valid[s:e], sc, torch.full_like(sc, float("-inf")))
        order = torch.sort(sc, dim=1, descending=True, stable=True).indices[:, : int(k)]
        out_v[s:e] = torch.gather(sc, 1, order)
        top = torch.gather(ids[s:e], 1, order)
        out_i[s:e] = torch.where(torch.gather(valid[s:e], 1, order), top, torch.full_like(top, -1))
    return topk_output(out_v, out_i, one, numpy_out)


_rescore = rescore  # SearchIndex.search's argument of the same name shadows it


# ---- the cascade -------------------------------------------------------------------------------------------


class SearchIndex:
    """Exact first-pass search on compact codes, then rescoring of the oversampled candidates.

    ``kind="binary"``: 1 bit per dimension (``pack_bits(x > 0)``, Hamming top-k);
    ``kind="int8"``: 1 byte per dimension (:func:`int8_quantize` with parameters calibrated on the
    first ``add`` unless given, :func:`int8_topk`). ``search(q, k, rescore=r)`` keeps the best
    ``k * r`` candidates of the first pass and re-ranks them with the float queries against the
    stored rows (``store``: "float32", "bfloat16", "float16", "int8" (dequantized), or None to keep
    no rows and disable rescoring). ``kind="rbe"`` is reserved for the rbe family.

    Scores: after rescoring, the float dot (or cosine) similarity. Without rescoring: binary gives
    ``dim - 2 * hamming`` (the dot product of the +-1 vectors), int8 gives :func:`int8_topk`'s score.
    """

    def __init__(
        self,
        dim: int,
        kind: str = "binary",
        *,
        metric: str = "dot",
        store: Optional[str] = "float32",
        params: Optional[Int8Params] = None,
        calibration: str = "absmax",
        device: Optional[torch.device | str] = None,
    ):
        if kind == "rbe":
            raise NotImplementedError("SearchIndex(kind='rbe') is not implemented yet (it needs the rbe family's "
                                      "RecurrentBinarizer and sdc_topk); use kind='binary' or kind='int8'")
        if kind not in ("binary", "int8"):
            raise ValueError(f"SearchIndex: kind must be 'binary', 'int8' or 'rbe', got {kind!r}")
        if int(dim) < 1:
            raise ValueError(f"SearchIndex: dim must be >= 1, got {dim}")
        if metric not in ("dot", "cosine"):
            raise ValueError(f"SearchIndex: metric must be 'dot' or 'cosine', got {metric!r}")
        stores = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.int8, None: None}
        if store not in stores:
            raise ValueError(f"SearchIndex: store must be 'float32', 'bfloat16', 'float16', 'int8' or None, got {store!r}")
        self.dim, self.kind, self.metric, self.store = int(dim), kind, metric, store
        self._store_dtype = stores[store]
        self.params = params
        self.calibration = calibration
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._codes: list[torch.Tensor] = []
        self._rows: list[torch.Tensor] = []
        self._codes_cat: Optional[torch.Tensor] = None
        self._rows_cat: Optional[torch.Tensor] = None
        self._norms: Optional[torch.Tensor] = None
        self.ntotal = 0

    def __len__(self) -> int:
        return self.ntotal

    def _float_input(self, x: ArrayLike, name: str) -> torch.Tensor:
        t, _ = as_2d(as_tensor(x, name), name)
        _check_float_2d(t, "SearchIndex", name)
        if t.shape[1] != self.dim:
            raise ValueError(f"SearchIndex: {name} must have {self.dim} dimensions, got shape {tuple(t.shape)}")
        t = t.to(self.device)
        _check_finite(t, "SearchIndex", name)
        if self.metric == "cosine":
            t = t.to(torch.float32)
            t = t / torch.linalg.vector_norm(t, dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
        return t

    def _encode(self, t: torch.Tensor) -> torch.Tensor:
        from .bits import pack_bits

        if self.kind == "binary":
            return pack_bits(t.to(torch.float32))
        return int8_quantize(t, self.params)

    def add(self, x: ArrayLike) -> None:
        """Appends float vectors ``[n, dim]``; their ids continue from ``len(self)``."""
        t = self._float_input(x, "x")
        if t.shape[0] == 0:
            return
        needs_params = self.kind == "int8" or self._store_dtype == torch.int8
        if needs_params and self.params is None:
            self.params = int8_calibrate(t, self.calibration)
        self._codes.append(self._encode(t))
        if self._store_dtype == torch.int8:
            self._rows.append(int8_quantize(t, self.params) if self.kind != "int8" else self._codes[-1])
        elif self._store_dtype is not None:
            self._rows.append(t.to(self._store_dtype))
        self.ntotal += t.shape[0]
        self._codes_cat = self._rows_cat = self._norms = None

    def _consolidate(self) -> None:
        if self._codes_cat is None:
            self._codes_cat = torch.cat(self._codes) if len(self._codes) > 1 else self._codes[0]
            self._codes = [self._codes_cat]
            if self._rows:
                self._rows_cat = torch.cat(self._rows) if len(self._rows) > 1 else self._rows[0]
                self._rows = [self._rows_cat]
            if self.kind == "int8" and self.metric == "cosine":
                self._norms = int8_norms(self._codes_cat)

    def nbytes(self) -> dict:
        """Bytes held: first-pass codes and rescoring rows."""
        self._consolidate() if self.ntotal else None
        codes = 0 if self._codes_cat is None else self._codes_cat.numel() * self._codes_cat.element_size()
        rows = 0 if self._rows_cat is None else self._rows_cat.numel() * self._rows_cat.element_size()
        return {"codes": codes, "rows": rows}

    def search(self, queries: ArrayLike, k: int, rescore: Optional[float] = None) -> tuple[ArrayLike, ArrayLike]:
        """k nearest stored vectors for each query.

        Args:
            queries: float ``[Q, dim]`` or ``[dim]``.
            k: 1 <= k <= len(self).
            rescore: None (first pass only) or r >= 1: keep ``min(N, ceil(k * r))`` first-pass
                candidates and re-rank them against the stored rows.
        Returns:
            ``(scores float32 [Q, k], ids int64 [Q, k])``, best first.
        """
        from .bits import hamming_topk, pack_bits

        numpy_out = not isinstance(queries, torch.Tensor)
        if self.ntotal == 0:
            raise ValueError("SearchIndex.search: the index is empty (call add first)")
        q, one = as_2d(as_tensor(queries, "queries"), "queries")
        q = self._float_input(q, "queries")
        k = int(k)
        if not 1 <= k <= self.ntotal:
            raise ValueError(f"SearchIndex.search: k must be in [1, {self.ntotal}] (the number of stored vectors), got {k}")
        if rescore is not None:
            if float(rescore) < 1:
                raise ValueError(f"SearchIndex.search: rescore must be >= 1 (the oversampling factor), got {rescore}")
            if self._store_dtype is None:
                raise ValueError("SearchIndex.search: rescore needs stored rows, but the index was built with store=None")
        self._consolidate()
        kc = k if rescore is None else min(self.ntotal, int(np.ceil(k * float(rescore))))
        if self.kind == "binary":
            d, ids = hamming_topk(pack_bits(q.to(torch.float32)), self._codes_cat, kc)
            first = (self.dim - 2 * d).to(torch.float32)
        else:
            first, ids = int8_topk(int8_quantize(q, self.params), self._codes_cat, kc, self.metric, self._norms)
        if rescore is None:
            v, i = first, ids
        else:
            p = self.params if self._store_dtype == torch.int8 else None
            v, i = _rescore(q.to(torch.float32), ids, self._rows_cat, k, self.metric, p)
        return topk_output(v, i, one, numpy_out)
