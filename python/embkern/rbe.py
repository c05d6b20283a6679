"""Recurrent binarization (BEBR) and symmetric distance calculation (DESIGN section 3.4).

A code has ``bits = loops + 1`` bits per dimension: an unsigned level ``L`` in ``[0, 2**bits)``
whose decoded value is ``v = (2L - (2**bits - 1)) / 2**(bits - 1)``. Codes are packed
dimension-major, each level most significant bit first, into ``ceil(dim * bits / 8)`` bytes per row
(numpy.packbits bit order; ``bits=1`` is exactly :func:`embkern.pack_bits`). SDC scores are the inner
products of decoded codes, computed exactly in integers (and optionally scaled by database inverse
norms, i.e. cosine up to the query's norm).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import ArrayLike, as_2d, as_tensor, device_of, to_output, topk_output

__all__ = [
    "RBECodes",
    "RecurrentBinarizer",
    "sdc_scores",
    "sdc_topk",
    "sdc_decode",
    "pack_levels",
    "unpack_levels",
    "levels_to_planes",
    "planes_to_levels",
]


class RBECodes(NamedTuple):
    """Output of :meth:`RecurrentBinarizer.encode`: ``codes`` uint8 ``[N, ceil(dim * bits / 8)]`` packed
    levels and ``inv_norm`` float32 ``[N]``, 1 / ||decoded code|| (pass it as ``db_inv_norm``)."""

    codes: torch.Tensor
    inv_norm: torch.Tensor


def _check_bits(bits: int) -> int:
    bits = int(bits)
    if not 1 <= bits <= 4:
        raise ValueError(f"bits must be in [1, 4] (bits per dimension), got {bits}")
    return bits


# ---- converters ------------------------------------------------------------------------------------


def _unpack_levels_torch(codes: torch.Tensor, dim: int, bits: int) -> torch.Tensor:
    shifts = torch.arange(7, -1, -1, device=codes.device, dtype=torch.uint8)
    stream = (codes.unsqueeze(-1) >> shifts) & 1  # [N, bytes, 8], MSB first
    stream = stream.reshape(codes.shape[0], -1)[:, : dim * bits].reshape(codes.shape[0], dim, bits)
    weights = (1 << torch.arange(bits - 1, -1, -1, device=codes.device)).to(torch.uint8)
    return (stream * weights).sum(-1, dtype=torch.uint8)


def _pack_levels_torch(levels: torch.Tensor, bits: int) -> torch.Tensor:
    n, dim = levels.shape
    shifts = torch.arange(bits - 1, -1, -1, device=levels.device, dtype=torch.uint8)
    stream = ((levels.unsqueeze(-1) >> shifts) & 1).reshape(n, dim * bits)
    nbytes = (dim * bits + 7) // 8
    stream = F.pad(stream, (0, nbytes * 8 - dim * bits)).reshape(n, nbytes, 8)
    weights = (1 << torch.arange(7, -1, -1, device=levels.device)).to(torch.uint8)
    return (stream * weights).sum(-1, dtype=torch.uint8)


def pack_levels(levels: ArrayLike, bits: int) -> ArrayLike:
    """Packs levels uint8 ``[N, dim]`` (each < 2**bits) into codes uint8 ``[N, ceil(dim * bits / 8)]``."""
    bits = _check_bits(bits)
    numpy_out = not isinstance(levels, torch.Tensor)
    t, one = as_2d(as_tensor(levels, "levels"), "levels")
    if t.device.type == "cpu":
        out = torch.ops.embkern.rbe_pack_levels(t, bits)[0]
    else:
        if t.dtype != torch.uint8:
            raise TypeError(f"pack_levels: levels must have dtype torch.uint8, got {t.dtype}")
        out = _pack_levels_torch(t, bits)
    return to_output(out[0] if one else out, numpy_out)


def unpack_levels(codes: ArrayLike, dim: int, bits: int) -> ArrayLike:
    """Inverse of :func:`pack_levels`: codes ``[N, ceil(dim * bits / 8)]`` -> levels uint8 ``[N, dim]``."""
    bits = _check_bits(bits)
    numpy_out = not isinstance(codes, torch.Tensor)
    t, one = as_2d(as_tensor(codes, "codes"), "codes")
    if t.device.type == "cpu":
        out = torch.ops.embkern.rbe_unpack_levels(t, int(dim), bits)
    else:
        if t.dtype != torch.uint8 or t.shape[1] != (int(dim) * bits + 7) // 8:
            raise ValueError(f"unpack_levels: codes must be uint8 with {(int(dim) * bits + 7) // 8} bytes per code")
        out = _unpack_levels_torch(t, int(dim), bits)
    return to_output(out[0] if one else out, numpy_out)


def levels_to_planes(codes: ArrayLike, dim: int, bits: int) -> ArrayLike:
    """Bit planes of packed level codes: uint8 ``[N, bits, ceil(dim / 8)]``; plane 0 holds the most
    significant bit of every level, each plane in :func:`embkern.pack_bits` layout (so a plane can go
    straight to :func:`embkern.hamming_topk`)."""
    bits = _check_bits(bits)
    numpy_out = not isinstance(codes, torch.Tensor)
    t = as_tensor(codes, "codes")
    lv = unpack_levels(t, dim, bits)
    shifts = torch.arange(bits - 1, -1, -1, device=lv.device, dtype=torch.uint8)
    planes = ((lv.unsqueeze(1) >> shifts[:, None]) & 1)  # [N, bits, dim]
    pad = (-int(dim)) % 8
    planes = F.pad(planes, (0, pad)).reshape(lv.shape[0], bits, -1, 8)
    weights = (1 << torch.arange(7, -1, -1, device=lv.device)).to(torch.uint8)
    return to_output((planes * weights).sum(-1, dtype=torch.uint8), numpy_out)


def planes_to_levels(planes: ArrayLike, dim: int) -> ArrayLike:
    """Inverse of :func:`levels_to_planes`: uint8 ``[N, bits, ceil(dim / 8)]`` -> packed level codes."""
    numpy_out = not isinstance(planes, torch.Tensor)
    p = as_tensor(planes, "planes")
    if p.dim() != 3 or p.dtype != torch.uint8 or p.shape[2] != (int(dim) + 7) // 8:
        raise ValueError(f"planes_to_levels: planes must be uint8 [N, bits, {(int(dim) + 7) // 8}], got {p.dtype} {tuple(p.shape)}")
    bits = _check_bits(p.shape[1])
    shifts = torch.arange(7, -1, -1, device=p.device, dtype=torch.uint8)
    bitv = ((p.unsqueeze(-1) >> shifts) & 1).reshape(p.shape[0], bits, -1)[:, :, : int(dim)]
    weights = (1 << torch.arange(bits - 1, -1, -1, device=p.device)).to(torch.uint8)
    levels = (bitv * weights[:, None]).sum(1, dtype=torch.uint8)
    return to_output(pack_levels(levels, bits), numpy_out)


def sdc_decode(codes: ArrayLike, dim: int, bits: int) -> ArrayLike:
    """Decoded values float32 ``[N, dim]``: ``(2L - (2**bits - 1)) / 2**(bits - 1)``."""
    bits = _check_bits(bits)
    numpy_out = not isinstance(codes, torch.Tensor)
    lv = unpack_levels(as_tensor(codes, "codes"), dim, bits)
    out = (2.0 * lv.float() - float(2**bits - 1)) / float(2 ** (bits - 1))
    return to_output(out, numpy_out)


# ---- search ----------------------------------------------------------------------------------------


def sdc_scores(q_codes: ArrayLike, db_codes: ArrayLike, dim: int, bits: int, db_inv_norm: ArrayLike | None = None) -> ArrayLike:
    """All SDC inner products of decoded codes.

    Args:
        q_codes: uint8 ``[Q, ceil(dim * bits / 8)]`` (or one row).
        db_codes: uint8 ``[N, ceil(dim * bits / 8)]``.
        dim: dimensions per code; bits: bits per dimension, 1..4.
        db_inv_norm: optional float32 ``[N]`` (finite); each score is multiplied by it.
    Returns:
        float32 ``[Q, N]``: ``float(S) * 4**-(bits-1)`` with S the exact integer sum (times the inverse norm).
    """
    numpy_out = not isinstance(q_codes, torch.Tensor)
    q, one = as_2d(as_tensor(q_codes, "q_codes"), "q_codes")
    db = as_tensor(db_codes, "db_codes", device_of(q_codes))
    inv = None if db_inv_norm is None else as_tensor(db_inv_norm, "db_inv_norm", device_of(q_codes))
    out = torch.ops.embkern.sdc_scores(q, db, int(dim), int(bits), inv)
    return to_output(out[0] if one else out, numpy_out)


def sdc_topk(q_codes: ArrayLike, db_codes: ArrayLike, dim: int, bits: int, k: int,
             db_inv_norm: ArrayLike | None = None) -> tuple[ArrayLike, ArrayLike]:
    """Exact top-k database codes by SDC score (largest first, ties to the lower index), without a
    Q x N buffer. Same arguments as :func:`sdc_scores` plus ``1 <= k <= N``.

    Returns:
        ``(scores float32 [Q, k], indices int64 [Q, k])``.
    """
    numpy_out = not isinstance(q_codes, torch.Tensor)
    q, one = as_2d(as_tensor(q_codes, "q_codes"), "q_codes")
    db = as_tensor(db_codes, "db_codes", device_of(q_codes))
    inv = None if db_inv_norm is None else as_tensor(db_inv_norm, "db_inv_norm", device_of(q_codes))
    v, i = torch.ops.embkern.sdc_topk(q, db, int(dim), int(bits), int(k), inv)
    return topk_output(v, i, one, numpy_out)


# ---- the binarizer ---------------------------------------------------------------------------------


class _SignSTE(torch.autograd.Function):
    """sgn(t) = +1 if t > 0 else -1; straight-through gradient where |t| <= 1 (BEBR)."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return torch.where(t > 0, 1.0, -1.0).to(t.dtype)

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        return g * (t.abs() <= 1).to(g.dtype)


def _mlp(i: int, o: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(i, o)
    return nn.Sequential(nn.Linear(i, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, o))


class RecurrentBinarizer(nn.Module):
    """BEBR's recurrent binarizer: ``loops + 1`` bits per code dimension.

    ``b0 = sgn(W x)``; for i < loops: ``f_i = l2norm(B_i(b_i))``, ``b_{i+1} = b_i + 2^-(i+1) sgn(R_i(x - f_i))``.
    ``B_i`` (code_dim -> in_dim) and ``R_i`` (in_dim -> code_dim) are Linear, or Linear-BN-ReLU-Linear
    with ``hidden_dim > 0``.

    ``forward(x)`` is the trainable path (straight-through sign, gradient where |pre-activation| <= 1)
    and returns the decoded codes float ``[N, code_dim]``; ``encode(x)`` runs the inference path
    (the module's layers in eval mode, then fused sign / residual / level / pack / inverse-norm
    kernels) and returns :class:`RBECodes`, whose codes equal ``pack_levels`` of forward's levels.
    """

    def __init__(self, in_dim: int, code_dim: int, loops: int, hidden_dim: int = 0):
        super().__init__()
        if not 0 <= int(loops) <= 3:
            raise ValueError(f"loops must be in [0, 3] (1 to 4 bits per dimension), got {loops}")
        if in_dim < 1 or code_dim < 1:
            raise ValueError(f"in_dim and code_dim must be >= 1, got {in_dim} and {code_dim}")
        self.in_dim, self.code_dim, self.loops, self.hidden_dim = int(in_dim), int(code_dim), int(loops), int(hidden_dim)
        self.encoder = nn.Linear(in_dim, code_dim)
        self.decoders = nn.ModuleList(_mlp(code_dim, in_dim, hidden_dim) for _ in range(loops))   # B_i
        self.residuals = nn.ModuleList(_mlp(in_dim, code_dim, hidden_dim) for _ in range(loops))  # R_i

    @property
    def bits(self) -> int:
        """Bits per code dimension (loops + 1)."""
        return self.loops + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = _SignSTE.apply(self.encoder(x))
        for i in range(self.loops):
            f = F.normalize(self.decoders[i](b), dim=-1, eps=1e-12)
            b = b + 2.0 ** -(i + 1) * _SignSTE.apply(self.residuals[i](x - f))
        return b

    @torch.no_grad()
    def encode(self, x: ArrayLike) -> RBECodes:
        """Codes of ``x`` float ``[N, in_dim]``: :class:`RBECodes` (uint8 ``[N, ceil(code_dim * bits / 8)]``,
        float32 ``[N]``), on x's device."""
        x = as_tensor(x, "x")
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"encode: x must be [N, {self.in_dim}], got {tuple(x.shape)}")
        x = x.float()
        was_training = self.training
        self.eval()
        try:
            if x.device.type == "cpu":
                levels, b = torch.ops.embkern.rbe_sign_step(self.encoder(x).float().contiguous(), None, 0)
                for i in range(self.loops):
                    r = torch.ops.embkern.rbe_residual(x.contiguous(), self.decoders[i](b).float().contiguous())
                    levels, b = torch.ops.embkern.rbe_sign_step(self.residuals[i](r).float().contiguous(), levels, i + 1)
                codes, inv = torch.ops.embkern.rbe_pack_levels(levels, self.bits)
            else:  # same arithmetic in torch ops (the fused epilogue is CPU-only for now)
                pre = self.encoder(x).float()
                levels = (pre > 0).to(torch.uint8)
                b = torch.where(pre > 0, 1.0, -1.0)
                for i in range(self.loops):
                    h = self.decoders[i](b).float()
                    nrm = h.double().pow(2).sum(-1, keepdim=True).sqrt().clamp_min(1e-12)
                    r = x - h * (1.0 / nrm).float()
                    bit = (self.residuals[i](r).float() > 0).to(torch.uint8)
                    levels = levels * 2 + bit
                    b = (2.0 * levels.float() - float(2 ** (i + 2) - 1)) / float(2 ** (i + 1))
                codes = _pack_levels_torch(levels, self.bits)
                v = 2 * levels.to(torch.int64) - (2**self.bits - 1)
                inv = (float(2 ** (self.bits - 1)) / v.pow(2).sum(-1).double().sqrt()).float()
        finally:
            self.train(was_training)
        return RBECodes(codes, inv)
