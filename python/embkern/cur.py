"""CUR-based cross-encoder approximation: ANNCUR and adaCUR (DESIGN section 3.6).

A cross-encoder (CE) scores (query, item) pairs accurately but slowly. ANNCUR scores a query
exactly against ``k_i`` anchor items only (``c``), and approximates its scores against all ``N`` items
as ``c @ E`` with ``E = U @ R_anc``, where ``R_anc[k_q, N]`` holds the CE scores of ``k_q`` anchor
queries (computed offline) and ``U`` is a regularized pseudo-inverse of the intersection
``R_anc[:, anchor_items]``. adaCUR picks the anchor items per query, over a few rounds.

The hot spot, ``c @ E`` followed by a top-k over N, is :func:`score_topk`: one fused kernel that
never writes the B x N score matrix.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, NamedTuple, Optional

import torch

from ._utils import ArrayLike, as_2d, as_tensor, device_of, to_output, topk_output

__all__ = ["score_topk", "CURIndex", "CURSearchResult", "anncur_search", "adacur_search"]

# Effective condition number of the (regularized) intersection inverse above which build() warns:
# past it the approximate scores amplify any noise in anchor_scores ~1000-fold (the double-descent
# regime of ANNCUR at k_i near k_q, where recall collapses).
COND_WARN = 1e3

ScoreFn = Callable[[Any, torch.Tensor], Any]


def score_topk(C: ArrayLike, E: ArrayLike, k: int, exclude: Optional[ArrayLike] = None,
               scales: Optional[ArrayLike] = None) -> tuple[ArrayLike, ArrayLike]:
    """Fused ``topk(C @ E, k)`` that never writes the B x N score matrix.

    Args:
        C: float32 ``[B, r]`` (or ``[r]`` for one query); must be finite.
        E: ``[r, N]`` float32, bfloat16 or int8 (int8 needs ``scales``); same device as C.
        k: ``1 <= k <= N -`` (distinct ids excluded for a query).
        exclude: optional int64 ``[B, m]`` ids that must not be returned, ``-1`` = padding.
        scales: float32 ``[N]`` per-column scales, only with int8 E (score = scale[n] * (C @ E)[:, n]).
    Returns:
        ``(scores float32 [B, k], ids int64 [B, k])``, best first, ties to the lower id. Every score is
        one fused multiply-add chain over r in order (the same bits on every CPU path and on CUDA);
        bfloat16 / int8 E elements are converted to float32 exactly. Items whose score is NaN are
        never returned (fewer than k left raises ValueError). The scores are differentiable with
        respect to C and float32 E (through the selected columns).
    """
    numpy_out = not isinstance(C, torch.Tensor)
    c, one = as_2d(as_tensor(C, "C"), "C")
    e = as_tensor(E, "E", device_of(C))
    ex = None if exclude is None else as_tensor(exclude, "exclude", device_of(C))
    if ex is not None and one and ex.dim() == 1:
        ex = ex.unsqueeze(0)
    sc = None if scales is None else as_tensor(scales, "scales", device_of(C))
    v, i = torch.ops.embkern.score_topk(c, e, int(k), ex, sc)
    return topk_output(v, i, one, numpy_out)


def _check_nonneg(value: Optional[float], name: str, op: str) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{op}: {name} must be a finite number >= 0, got {value}")


def _regularized_pinv(M: torch.Tensor, rcond: Optional[float], ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Regularized pseudo-inverse of float64 ``M[..., m, n]`` -> ``[..., n, m]`` via the SVD
    ``M = P diag(s) Q^T``: ``Q diag(g(s)) P^T`` with ``g(s) = s / (s^2 + ridge)`` for
    ``s > rcond * s_max`` and 0 below (``rcond=None``: ``max(m, n) * eps``, numpy's default).
    Returns it and the effective condition number ``s_max * max g(s)`` (per matrix)."""
    P, s, Qh = torch.linalg.svd(M, full_matrices=False)
    if rcond is None:
        rcond = max(M.shape[-2], M.shape[-1]) * torch.finfo(torch.float64).eps
    s_max = s[..., :1]
    keep = s > rcond * s_max
    g = torch.where(keep, s / (s * s + ridge), torch.zeros_like(s))
    g = torch.nan_to_num(g, nan=0.0, posinf=0.0)  # s = 0 with ridge = 0 is never kept
    inv = Qh.transpose(-1, -2) @ (g.unsqueeze(-1) * P.transpose(-1, -2))
    cond = (s_max[..., 0] * g.max(dim=-1).values)
    return inv, cond


def _as_float_matrix(x: Any, name: str, op: str) -> torch.Tensor:
    t = as_tensor(x, name)
    if t.dim() != 2:
        raise ValueError(f"{op}: {name} must be a 2-D tensor, got {t.dim()}-D with shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{op}: {name} must be finite (found NaN or Inf)")
    return t


def _as_item_ids(x: Any, n: int, name: str, op: str) -> torch.Tensor:
    t = torch.as_tensor(x) if isinstance(x, (list, tuple, range)) else as_tensor(x, name)
    if t.dim() != 1:
        raise ValueError(f"{op}: {name} must be a 1-D tensor of item ids, got shape {tuple(t.shape)}")
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{op}: {name} must have an integer dtype, got {t.dtype}")
    t = t.to(torch.int64)
    if t.numel() == 0:
        raise ValueError(f"{op}: {name} must not be empty")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise IndexError(f"{op}: {name} contains id {bad}, out of range [0, {n})")
    if torch.unique(t).numel() != t.numel():
        raise ValueError(f"{op}: {name} must not contain duplicate ids")
    return t


def _quantize_columns(E64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 per-column absmax quantization: q = round_half_even(E / scale), scale = max|E[:, n]| / 127
    (0 for an all-zero column)."""
    amax = E64.abs().amax(dim=0)
    scale = amax / 127.0
    q = torch.where(scale > 0, E64 / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(E64))
    q = torch.round(q).clamp_(-127, 127).to(torch.int8)  # torch.round: half to even
    return q, scale.to(torch.float32)


class CURIndex:
    """An ANNCUR index: ``E = U @ anchor_scores`` stored as float32, bfloat16 or int8.

    Build with :meth:`build`. Attributes: ``E`` (``[k_i, N]``), ``scales`` (float32 ``[N]`` for int8,
    else None), ``anchor_items`` (int64 ``[k_i]``), ``U`` (float64 ``[k_i, k_q]``), ``cond`` (effective
    condition number of the regularized inverse), ``num_items`` (N).
    """

    def __init__(self, E: torch.Tensor, scales: Optional[torch.Tensor], anchor_items: torch.Tensor,
                 U: torch.Tensor, cond: float):
        self.E = E
        self.scales = scales
        self.anchor_items = anchor_items
        self.U = U
        self.cond = cond

    @property
    def num_items(self) -> int:
        return int(self.E.shape[1])

    @property
    def num_anchor_items(self) -> int:
        return int(self.E.shape[0])

    @classmethod
    def build(cls, anchor_scores: ArrayLike, anchor_items: ArrayLike, *, rcond: Optional[float] = None,
              ridge: float = 0.0, dtype: torch.dtype = torch.float32) -> "CURIndex":
        """Builds the index from the CE scores of k_q anchor queries against all N items.

        Args:
            anchor_scores: float ``[k_q, N]`` (finite), torch or numpy, any device.
            anchor_items: int ``[k_i]`` distinct ids in ``[0, N)``: the items each test query is
                scored against exactly.
            rcond: singular values of the intersection ``anchor_scores[:, anchor_items]`` below
                ``rcond * s_max`` are dropped (None: ``max(k_q, k_i) * eps``, numpy's default).
            ridge: Tikhonov term (absolute, in score units squared): ``s -> s / (s^2 + ridge)``.
                Without regularization the inverse blows up when k_i is near k_q (double descent).
            dtype: storage of E: torch.float32, torch.bfloat16 or torch.int8 (per-column scales).
        Computes ``U`` and ``E = U @ anchor_scores`` in float64, then stores E in ``dtype``. Warns
        (RuntimeWarning) when the effective condition number exceeds ``COND_WARN``.
        """
        op = "CURIndex.build"
        R = _as_float_matrix(anchor_scores, "anchor_scores", op)
        n = int(R.shape[1])
        items = _as_item_ids(anchor_items, n, "anchor_items", op).to(R.device)
        _check_nonneg(rcond, "rcond", op)
        _check_nonneg(ridge, "ridge", op)
        if dtype not in (torch.float32, torch.bfloat16, torch.int8):
            raise TypeError(f"{op}: dtype must be torch.float32, torch.bfloat16 or torch.int8, got {dtype}")
        R64 = R.to(torch.float64)
        U, cond = _regularized_pinv(R64[:, items], rcond, float(ridge))  # [k_i, k_q]
        U = U.contiguous()
        cond_v = float(cond)
        if not math.isfinite(cond_v) or cond_v > COND_WARN:
            warnings.warn(
                f"{op}: the anchor intersection matrix is ill-conditioned (effective condition number {cond_v:.3g} "
                f"> {COND_WARN:g}); approximate scores amplify noise. Pass rcond (e.g. 1e-2) or ridge > 0.",
                RuntimeWarning, stacklevel=2)
        E64 = U @ R64
        scales = None
        if dtype == torch.int8:
            E, scales = _quantize_columns(E64)
        else:
            E = E64.to(dtype)
        return cls(E.contiguous(), scales, items, U, cond_v)

    def to(self, device: Any) -> "CURIndex":
        """A copy of the index on ``device``."""
        return CURIndex(self.E.to(device), None if self.scales is None else self.scales.to(device),
                        self.anchor_items.to(device), self.U.to(device), self.cond)

    def _queries(self, c: ArrayLike, op: str) -> tuple[torch.Tensor, bool]:
        t, one = as_2d(as_tensor(c, "c", self.E.device), "c")
        if t.dim() != 2 or t.shape[1] != self.num_anchor_items:
            raise ValueError(f"{op}: c must have shape [B, {self.num_anchor_items}] (scores against the anchor "
                             f"items), got {tuple(t.shape)}")
        if t.device != self.E.device:
            raise ValueError(f"{op}: c and the index must be on the same device, got {t.device} and {self.E.device}")
        return t.to(torch.float32).contiguous(), one

    def approx_scores(self, c: ArrayLike) -> ArrayLike:
        """Approximate scores of every item: float32 ``[B, N]`` (``c``: ``[B, k_i]`` exact scores against
        ``anchor_items``). This materializes B x N (it is the output); use :meth:`topk` for search.
        Computed with torch's matmul, so equal to :meth:`topk`'s scores up to float32 rounding."""
        numpy_out = not isinstance(c, torch.Tensor)
        t, one = self._queries(c, "CURIndex.approx_scores")
        out = t @ self.E.to(torch.float32)
        if self.scales is not None:
            out = out * self.scales
        return to_output(out[0] if one else out, numpy_out)

    def topk(self, c: ArrayLike, k: int, exclude: Optional[ArrayLike] = None) -> tuple[ArrayLike, ArrayLike]:
        """Top-k items by approximate score: :func:`score_topk` over the stored E."""
        numpy_out = not isinstance(c, torch.Tensor)
        t, one = self._queries(c, "CURIndex.topk")
        ex = None if exclude is None else as_tensor(exclude, "exclude", self.E.device)
        if ex is not None and one and ex.dim() == 1:
            ex = ex.unsqueeze(0)
        v, i = torch.ops.embkern.score_topk(t, self.E, int(k), ex, self.scales)
        return topk_output(v, i, one, numpy_out)


class CURSearchResult(NamedTuple):
    """scores: float32 ``[B, k]`` exact CE scores, best first; indices: int64 ``[B, k]`` (ties to the
    lower id); num_calls: how many times score_fn was called; num_scored: CE evaluations per query."""

    scores: torch.Tensor
    indices: torch.Tensor
    num_calls: int
    num_scored: int


def _batch_size(queries: Any) -> int:
    if hasattr(queries, "shape") and len(queries.shape) >= 1:
        return int(queries.shape[0])
    return len(queries)


class _CountingScoreFn:
    """Calls the user's score_fn, checks its output, and counts calls."""

    def __init__(self, score_fn: ScoreFn, op: str):
        if not callable(score_fn):
            raise TypeError(f"{op}: score_fn must be callable, got {type(score_fn).__name__}")
        self.fn, self.op, self.calls = score_fn, op, 0

    def __call__(self, queries: Any, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.fn(queries, ids)
        t = as_tensor(out, "score_fn output") if not isinstance(out, torch.Tensor) else out
        if tuple(t.shape) != tuple(ids.shape):
            raise ValueError(f"{self.op}: score_fn returned shape {tuple(t.shape)}, expected {tuple(ids.shape)} "
                             f"(one score per (query, item id))")
        t = t.to(device=ids.device, dtype=torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{self.op}: score_fn returned NaN or Inf scores")
        return t


def _top_of_pool(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k best (score desc, then lower id) of a pool of distinct ids."""
    by_id = torch.argsort(ids, dim=1, stable=True)
    ids, scores = ids.gather(1, by_id), scores.gather(1, by_id)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), ids.gather(1, order)


def _check_count(value: Any, name: str, op: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{op}: {name} must be >= {lo}, got {value}")
    return value


def anncur_search(index: CURIndex, score_fn: ScoreFn, queries: Any, k: int, k_rerank: int) -> CURSearchResult:
    """ANNCUR: score the anchor items exactly, retrieve ``k_rerank`` more by approximate score, score
    those exactly, and return the exact top-k of the pool (anchors included: their exact scores are free).

    Args:
        index: a :class:`CURIndex`.
        score_fn: ``score_fn(queries, item_ids int64 [B, m]) -> float32 [B, m]``, the cross-encoder
            (ids on the index's device; torch or numpy output).
        queries: anything score_fn accepts with ``len(queries) == B`` (or ``.shape[0]``).
        k: results per query, ``1 <= k <= k_i + k_rerank``.
        k_rerank: items retrieved by approximate score (anchors excluded), ``0 <= k_rerank <= N - k_i``.
    Returns:
        :class:`CURSearchResult` with ``num_calls`` 2 (1 when k_rerank is 0) and
        ``num_scored = k_i + k_rerank``.
    """
    op = "anncur_search"
    if not isinstance(index, CURIndex):
        raise TypeError(f"{op}: index must be a CURIndex, got {type(index).__name__}")
    b = _batch_size(queries)
    ki, n = index.num_anchor_items, index.num_items
    _check_count(k_rerank, "k_rerank", op, 0)
    _check_count(k, "k", op, 1)
    if k_rerank > n - ki:
        raise ValueError(f"{op}: k_rerank must be <= N - k_i = {n - ki}, got {k_rerank}")
    if k > ki + k_rerank:
        raise ValueError(f"{op}: k must be <= k_i + k_rerank = {ki + k_rerank}, got {k}")
    fn = _CountingScoreFn(score_fn, op)
    anchors = index.anchor_items.unsqueeze(0).expand(b, ki).contiguous()
    c = fn(queries, anchors)
    pool_s, pool_i = c, anchors
    if k_rerank > 0 and b > 0:
        _, cand = index.topk(c, k_rerank, exclude=anchors)
        exact = fn(queries, cand)
        pool_s, pool_i = torch.cat([c, exact], dim=1), torch.cat([anchors, cand], dim=1)
    s, i = _top_of_pool(pool_s, pool_i, k)
    return CURSearchResult(s, i, fn.calls, ki + k_rerank)


def adacur_search(anchor_scores: ArrayLike, score_fn: ScoreFn, queries: Any, k: int, budget: int, rounds: int, *,
                  rcond: Optional[float] = 1e-3, ridge: float = 0.0, seed: int = 0) -> CURSearchResult:
    """adaCUR: spend exactly ``budget`` CE calls per query over ``rounds`` rounds.

    Round 1 scores ``budget // rounds`` items drawn at random (seeded, the same for every query).
    Each later round fits, per query, regularized least squares ``w = c_A pinv(R[:, A])`` over the items
    A scored so far (batched over queries, float64), approximates all scores as ``w @ R`` and scores
    exactly the best ones not yet scored (fused :func:`score_topk` with A excluded). The answer is the
    exact top-k of everything scored. Round sizes differ by at most one and sum to ``budget``.

    Args:
        anchor_scores: float ``[k_q, N]`` CE scores of the anchor queries (finite).
        score_fn, queries: as in :func:`anncur_search`.
        k: ``1 <= k <= budget``.
        budget: CE evaluations per query, ``rounds <= budget <= N``.
        rounds: ``>= 1``.
        rcond, ridge: regularization of each least-squares solve (see :meth:`CURIndex.build`); |A|
            passes through k_q mid-search, where the unregularized solve is ill-conditioned.
        seed: the first round's random items.
    Returns:
        :class:`CURSearchResult` with ``num_calls == rounds`` and ``num_scored == budget``.
    """
    op = "adacur_search"
    R = _as_float_matrix(anchor_scores, "anchor_scores", op)
    n = int(R.shape[1])
    _check_count(rounds, "rounds", op, 1)
    _check_count(budget, "budget", op, 1)
    _check_count(k, "k", op, 1)
    if budget < rounds:
        raise ValueError(f"{op}: budget must be >= rounds ({rounds}) so every round scores an item, got {budget}")
    if budget > n:
        raise ValueError(f"{op}: budget must be <= N = {n}, got {budget}")
    if k > budget:
        raise ValueError(f"{op}: k must be <= budget = {budget}, got {k}")
    _check_nonneg(rcond, "rcond", op)
    _check_nonneg(ridge, "ridge", op)
    if not isinstance(seed, int):
        raise TypeError(f"{op}: seed must be an int, got {type(seed).__name__}")
    b = _batch_size(queries)
    dev = R.device
    sizes = [budget // rounds + (1 if i < budget % rounds else 0) for i in range(rounds)]
    fn = _CountingScoreFn(score_fn, op)
    R32 = R.to(torch.float32).contiguous()
    R64 = R.to(torch.float64)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    first = torch.randperm(n, generator=gen)[: sizes[0]].to(dev)
    ids = first.unsqueeze(0).expand(b, sizes[0]).contiguous()
    scores = fn(queries, ids)
    for size in sizes[1:]:
        w = torch.empty((b, R.shape[0]), dtype=torch.float64, device=dev)
        for q0 in range(0, b, 16):  # bounds the [queries, k_q, |A|] gather
            sl = slice(q0, min(b, q0 + 16))
            M = R64[:, ids[sl]].permute(1, 0, 2)  # [q, k_q, |A|]
            pinv, _ = _regularized_pinv(M, rcond, float(ridge))  # [q, |A|, k_q]
            w[sl] = (scores[sl].to(torch.float64).unsqueeze(1) @ pinv).squeeze(1)
        _, new = torch.ops.embkern.score_topk(w.to(torch.float32).contiguous(), R32, size, ids, None)
        exact = fn(queries, new)
        ids, scores = torch.cat([ids, new], dim=1), torch.cat([scores, exact], dim=1)
    s, i = _top_of_pool(scores, ids, k)
    return CURSearchResult(s, i, fn.calls, budget)
