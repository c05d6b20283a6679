"""Multiplexed hashed embedding bags: Unified Embedding / feature multiplexing (DESIGN section 3.1).

Many categorical features share one table ``weight[M, D]``. Probe ``p`` of feature ``f`` sends a raw
id ``v`` (int32 is sign-extended) to a row with hash version 1::

    key(f, p) = mix(mix(seed ^ salt_f) + p)                       (host, passed as int64 bits)
    row       = base_g + floor(mix(mix(uint64(v)) ^ key(f, p)) * size_g / 2^64)

where ``mix`` is the splitmix64 finalizer and ``salt_f`` defaults to the first 8 bytes (little endian)
of ``blake2b(name, digest_size=8)``, so adding or removing a feature never moves another feature's rows.
"""
from __future__ import annotations

import hashlib
import math
import mmap
import sys
from typing import Mapping, Sequence, Union

import numpy as np
import torch

from ._utils import ArrayLike, as_tensor, to_output

# torch <= 2.11 cannot compile the fused optimizers' in-place weight update in the backward (AOT
# autograd: "a leaf Variable that requires grad is being used in an in-place operation"); 2.12.1 and
# 2.13 can (checked on CPU builds of each).
_FUSED_COMPILE_UNSUPPORTED = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < (2, 12)

__all__ = [
    "feature_salt",
    "probe_key",
    "mux_hash",
    "probe_layout",
    "mux_embedding_bag",
    "huge_page_empty",
    "UnifiedEmbedding",
]

_MASK = (1 << 64) - 1


def _mix_int(x: int) -> int:
    """splitmix64 finalizer on a Python int (mod 2^64)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def feature_salt(name: str) -> int:
    """The default salt of a feature: the first 8 bytes (little endian) of blake2b(name, digest_size=8),
    as an unsigned 64-bit int."""
    if not isinstance(name, str):
        raise TypeError(f"feature_salt: name must be a str, got {type(name).__name__}")
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def _salt_of(feature: Union[str, int]) -> int:
    if isinstance(feature, str):
        return feature_salt(feature)
    if isinstance(feature, (int, np.integer)) and not isinstance(feature, bool):
        return int(feature) & _MASK
    raise TypeError(f"feature must be a feature name (str) or a salt (int), got {type(feature).__name__}")


def probe_key(feature: Union[str, int], probe: int, seed: int = 0) -> int:
    """``key(f, p) = mix(mix(seed ^ salt_f) + p)`` as an unsigned 64-bit int; ``feature`` is a name or a salt."""
    if probe < 0:
        raise ValueError(f"probe_key: probe must be >= 0, got {probe}")
    return _mix_int((_mix_int((int(seed) & _MASK) ^ _salt_of(feature)) + int(probe)) & _MASK)


def _as_int64_bits(u: int) -> int:
    """An unsigned 64-bit int as the signed int64 with the same bits (how keys travel in tensors)."""
    return u - (1 << 64) if u >= (1 << 63) else u


def _mix_np(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _mulhi_np(a: np.ndarray, n: int) -> np.ndarray:
    """floor(a * n / 2^64) for uint64 arrays a and an int n < 2^64, by 32-bit halves."""
    lo32 = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    a_lo, a_hi = a & lo32, a >> s32
    n_lo, n_hi = np.uint64(n & 0xFFFFFFFF), np.uint64(n >> 32)
    with np.errstate(over="ignore"):
        ll = a_lo * n_lo
        lh = a_lo * n_hi
        hl = a_hi * n_lo
        hh = a_hi * n_hi
        mid = (ll >> s32) + (lh & lo32) + (hl & lo32)
        return hh + (lh >> s32) + (hl >> s32) + (mid >> s32)


def mux_hash(values: ArrayLike, feature: Union[str, int], probe: int, num_rows: int, seed: int = 0) -> ArrayLike:
    """Rows of hash version 1 for one (feature, probe) over a table of ``num_rows`` rows (any size
    below 2^63; nothing is allocated), i.e. the row the kernels use with ``row_base = 0``.

    Args:
        values: int32 or int64 ids (torch tensor on any device, or numpy array); int32 is sign-extended.
        feature: a feature name (its salt is :func:`feature_salt`) or an explicit salt.
        probe: the probe index p >= 0.
        num_rows: the table size M >= 1.
    Returns:
        int64 rows of the same shape (numpy in, numpy out; torch in, torch out on the same device).
    """
    if not 1 <= int(num_rows) < (1 << 63):
        raise ValueError(f"mux_hash: num_rows must be in [1, 2^63), got {num_rows}")
    numpy_out = not isinstance(values, torch.Tensor)
    t = as_tensor(values, "values")
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"mux_hash: values must have dtype torch.int32 or torch.int64, got {t.dtype}")
    v = t.detach().cpu().to(torch.int64).numpy().view(np.uint64)
    key = np.uint64(probe_key(feature, probe, seed))
    rows = _mulhi_np(_mix_np(_mix_np(v) ^ key), int(num_rows)).view(np.int64)
    out = torch.from_numpy(np.ascontiguousarray(rows))
    if not numpy_out:
        out = out.to(t.device)
    return to_output(out, numpy_out)


def probe_layout(
    features: Union[Mapping[str, int], Sequence[tuple[Union[str, int], int]]],
    num_rows: int,
    *,
    seed: int = 0,
    layout: str = "shared",
    num_tables: int = 1,
    device: Union[torch.device, str, None] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Builds ``(probe_offsets[F+1], probe_row_base[G], probe_row_size[G], probe_keys[G])`` (int64).

    Args:
        features: name (or int salt) -> number of probes, in order.
        num_rows: M, the rows of the shared table.
        layout: ``"shared"`` (Unified Embedding: every probe hashes over all M rows),
            ``"per_feature"`` (one disjoint range per feature, sizes as equal as possible),
            ``"sub_tables"`` (TFRS style: ``num_tables`` equal ranges, probes assigned round-robin
            in global probe order).
    """
    items = list(features.items()) if isinstance(features, Mapping) else list(features)
    if not items:
        raise ValueError("probe_layout: features must not be empty")
    M = int(num_rows)
    if M < 1:
        raise ValueError(f"probe_layout: num_rows must be >= 1, got {num_rows}")
    po, base, size, keys = [0], [], [], []
    F = len(items)
    if layout == "per_feature" and M < F:
        raise ValueError(f"probe_layout: layout 'per_feature' needs num_rows >= number of features ({F}), got {M}")
    if layout == "sub_tables" and not 1 <= num_tables <= M:
        raise ValueError(f"probe_layout: num_tables must be in [1, num_rows={M}], got {num_tables}")
    g = 0
    for f, (name, probes) in enumerate(items):
        if int(probes) < 1:
            raise ValueError(f"probe_layout: feature {name!r} needs at least 1 probe, got {probes}")
        for p in range(int(probes)):
            if layout == "shared":
                b, s = 0, M
            elif layout == "per_feature":
                b, e = f * M // F, (f + 1) * M // F
                s = e - b
            elif layout == "sub_tables":
                t = g % num_tables
                b, e = t * M // num_tables, (t + 1) * M // num_tables
                s = e - b
            else:
                raise ValueError(f"probe_layout: layout must be 'shared', 'per_feature' or 'sub_tables', got {layout!r}")
            base.append(b)
            size.append(s)
            keys.append(_as_int64_bits(probe_key(name, p, seed)))
            g += 1
        po.append(g)
    mk = lambda x: torch.tensor(x, dtype=torch.int64, device=device)  # noqa: E731
    return mk(po), mk(base), mk(size), mk(keys)


def mux_embedding_bag(
    weight: ArrayLike,
    values: ArrayLike,
    offsets: ArrayLike,
    probe_offsets: ArrayLike,
    probe_row_base: ArrayLike,
    probe_row_size: ArrayLike,
    probe_keys: ArrayLike,
    pooling: str = "sum",
    combine: str = "concat",
    per_sample_weights: ArrayLike | None = None,
    sparse: bool = False,
) -> ArrayLike:
    """``torch.ops.embkern.mux_embedding_bag``: multiplexed hashed embedding bags.

    Args:
        weight: ``[M, D]`` float32 / bfloat16 / float16 / float64 (accumulation in fp32, fp64 for fp64).
        values: int32 / int64 ``[N]``; offsets: int64 ``[F*B + 1]`` feature-major (bag (f, b) is
            ``values[offsets[f*B+b]:offsets[f*B+b+1]]``).
        probe_offsets ``[F+1]``, probe_row_base / probe_row_size / probe_keys ``[G]``: see :func:`probe_layout`.
        pooling: ``"sum"`` | ``"mean"`` | ``"none"`` (one output row per value).
        combine: ``"concat"`` (``[B, G*D]``; with pooling none ``[N, max_f P_f * D]``, zeros for the probes a
            feature lacks) | ``"sum"`` (``[B, D]`` / ``[N, D]``: every probe of the bag's row added).
        per_sample_weights: ``[N]`` floating, pooling ``"sum"`` only (differentiable).
        sparse: the weight gradient is a coalesced sparse COO tensor instead of a dense one.
    Returns:
        the pooled embeddings in weight's dtype; empty bags give zeros. numpy arrays are accepted
        (zero-copy) and give a numpy result when ``weight`` is one; tensors stay on weight's device.
    """
    numpy_out = not isinstance(weight, torch.Tensor)
    w = as_tensor(weight, "weight")
    dev = w.device
    args = [as_tensor(x, name, dev) for x, name in (
        (values, "values"), (offsets, "offsets"), (probe_offsets, "probe_offsets"),
        (probe_row_base, "probe_row_base"), (probe_row_size, "probe_row_size"), (probe_keys, "probe_keys"))]
    psw = None if per_sample_weights is None else as_tensor(per_sample_weights, "per_sample_weights", dev)
    out = torch.ops.embkern.mux_embedding_bag(w, *args, pooling, combine, psw, sparse)
    return to_output(out, numpy_out)


_HUGE_PAGE = 2 << 20  # x86-64 transparent huge page size


def huge_page_empty(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialized CPU tensor whose memory is asked to be backed by 2 MB transparent huge pages.

    A hashed table is read at random rows; on 4 KB pages each row of a table much larger than the
    TLB's reach costs a page walk as well as a cache miss. The memory is an anonymous private
    mapping aligned to 2 MB and marked ``madvise(MADV_HUGEPAGE)`` before it is first touched, so the
    kernel backs it with huge pages when transparent huge pages are ``always`` or ``madvise``
    (``/sys/kernel/mm/transparent_hugepage/enabled``). Where that is ``never``, huge pages are not
    available, or the platform lacks ``madvise``, the tensor is an ordinary one on small pages:
    results never depend on it. The tensor is an ordinary CPU tensor (saving, copying, ``.to`` and
    autograd work as usual); the mapping is released when its last reference goes.
    """
    shape = tuple(int(s) for s in shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = math.prod(shape)
    nbytes = numel * itemsize
    if numel == 0 or not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype)
    # Over-map by one huge page so the tensor can start on a 2 MB boundary (mmap gives 4 KB alignment).
    mm = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = torch.frombuffer(mm, dtype=torch.uint8)  # keeps mm alive while any view of it lives
    skip = (-whole.data_ptr()) % _HUGE_PAGE
    try:
        mm.madvise(mmap.MADV_HUGEPAGE, skip, len(mm) - skip)
    except (OSError, ValueError):
        pass  # no THP support: small pages, same results
    del whole
    return torch.frombuffer(mm, dtype=dtype, count=numel, offset=skip).view(shape)


class UnifiedEmbedding(torch.nn.Module):
    """All features in one hashed table ``weight[num_rows, dim]``, each with its own salted probes.

    ``forward({name: (values, offsets)})`` takes per feature int32/int64 ids and int64 offsets of
    length B+1 (starting at 0, ending at len(values)), and returns ``[B, sum_f P_f * dim]`` (combine
    ``"concat"``: features in the order of ``features``, each feature's probes in order) or ``[B, dim]``
    (combine ``"sum"``).

    With ``optimizer="sgd"`` or ``"rowwise_adagrad"`` the backward pass updates ``.weight`` in place
    (FBGEMM EXACT_ semantics, exact and deterministic) and leaves ``.weight.grad`` as None: the
    table never gets a gradient tensor. Otherwise ``.weight`` gets a dense gradient, or a coalesced
    sparse COO one with ``sparse=True`` (use ``torch.optim.SGD`` / ``SparseAdam``).

    On the CPU the table is allocated by :func:`huge_page_empty` (2 MB transparent huge pages: random
    row reads then miss the TLB far less often; about 1.3x faster forward on a 512 MB table here).
    ``huge_pages=False`` gives an ordinary allocation; results are identical either way.
    """

    def __init__(
        self,
        num_rows: int,
        dim: int,
        features: Mapping[str, int],
        *,
        pooling: str = "sum",
        combine: str = "concat",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        optimizer: str | None = None,
        lr: float = 0.01,
        eps: float = 1e-8,
        sparse: bool = False,
        layout: str = "shared",
        num_tables: int = 1,
        device: Union[torch.device, str, None] = None,
        huge_pages: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in ("sum", "mean"):
            raise ValueError(f"UnifiedEmbedding: pooling must be 'sum' or 'mean', got {pooling!r}")
        if combine not in ("concat", "sum"):
            raise ValueError(f"UnifiedEmbedding: combine must be 'concat' or 'sum', got {combine!r}")
        if optimizer not in (None, "sgd", "rowwise_adagrad"):
            raise ValueError(f"UnifiedEmbedding: optimizer must be None, 'sgd' or 'rowwise_adagrad', got {optimizer!r}")
        if int(dim) < 1:
            raise ValueError(f"UnifiedEmbedding: dim must be >= 1, got {dim}")
        self.num_rows, self.dim = int(num_rows), int(dim)
        self.features = dict(features)
        self.pooling, self.combine, self.seed = pooling, combine, seed
        self.optimizer, self.lr, self.eps, self.sparse = optimizer, float(lr), float(eps), bool(sparse)
        po, base, size, keys = probe_layout(self.features, self.num_rows, seed=seed, layout=layout,
                                            num_tables=num_tables, device=device)
        self.register_buffer("probe_offsets", po)
        self.register_buffer("probe_row_base", base)
        self.register_buffer("probe_row_size", size)
        self.register_buffer("probe_keys", keys)
        bound = 1.0 / math.sqrt(self.dim)
        if huge_pages and torch.device(device if device is not None else "cpu").type == "cpu":
            w = huge_page_empty((self.num_rows, self.dim), dtype).uniform_(-bound, bound)
        else:
            w = torch.empty(self.num_rows, self.dim, dtype=dtype, device=device).uniform_(-bound, bound)
        self.weight = torch.nn.Parameter(w)
        mom_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        mom_rows = self.num_rows if optimizer == "rowwise_adagrad" else 0
        self.register_buffer("momentum", torch.zeros(mom_rows, dtype=mom_dtype, device=device))

    @property
    def output_dim(self) -> int:
        return self.dim if self.combine == "sum" else sum(self.features.values()) * self.dim

    def extra_repr(self) -> str:
        return (f"num_rows={self.num_rows}, dim={self.dim}, features={self.features}, pooling={self.pooling!r}, "
                f"combine={self.combine!r}, optimizer={self.optimizer!r}")

    def _jagged(self, inputs: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The features' bags concatenated feature-major, in a fixed number of tensor ops whatever the
        number of features (per-feature ops cost ~8 us each on the CPU and a kernel launch each on
        CUDA): values as given (int32 or int64; mixed or other integer dtypes become int64), offsets
        shifted by where each feature's values start, which is the running sum of their ends."""
        missing = [n for n in self.features if n not in inputs]
        if missing:
            raise KeyError(f"UnifiedEmbedding: inputs lack features {missing}")
        vals, offs = [], []
        batch = None
        for name in self.features:
            v, o = inputs[name]
            if batch is None:
                batch = o.shape[0] - 1
            elif o.shape[0] - 1 != batch:
                raise ValueError(f"UnifiedEmbedding: feature {name!r} has {o.shape[0] - 1} bags, expected {batch}")
            vals.append(v)
            offs.append(o)
        dtype = vals[0].dtype
        if dtype not in (torch.int32, torch.int64) or any(v.dtype != dtype for v in vals):
            dtype = torch.int64
        per_feature = torch.stack(offs).to(torch.int64)  # [F, B + 1]
        ends = per_feature[:, -1]
        if per_feature.device.type == "cpu" and not torch.compiler.is_compiling():
            # A feature whose offsets do not end at its number of values would shift every later
            # feature's bags; named here (on CUDA the op's check of the total catches most cases
            # without a synchronization).
            for name, v, end in zip(self.features, vals, ends.tolist()):
                if end != v.shape[0]:
                    raise ValueError(f"UnifiedEmbedding: feature {name!r} offsets must end at len(values) = "
                                     f"{v.shape[0]}, got {end}")
        running = torch.cumsum(ends, 0)
        offsets = torch.cat([(per_feature[:, :-1] + (running - ends)[:, None]).reshape(-1), running[-1:]])
        return torch.cat([v if v.dtype == dtype else v.to(dtype) for v in vals]), offsets

    def forward(self, inputs: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        values, offsets = self._jagged(inputs)
        layout = (values, offsets, self.probe_offsets, self.probe_row_base, self.probe_row_size, self.probe_keys)
        if self.optimizer is None:
            return torch.ops.embkern.mux_embedding_bag(self.weight, *layout, self.pooling, self.combine, None,
                                                       self.sparse)
        if _FUSED_COMPILE_UNSUPPORTED and torch.compiler.is_compiling():
            raise RuntimeError(
                f"UnifiedEmbedding: optimizer={self.optimizer!r} under torch.compile needs torch >= 2.12; torch "
                f"{torch.__version__}'s AOT autograd rejects the in-place update of the weight in the backward. "
                "Run this module eagerly, or use optimizer=None with a torch optimizer.")
        return torch.ops.embkern.mux_embedding_bag_fused(self.weight, self.momentum, *layout, self.pooling,
                                                         self.combine, None, self.optimizer, self.lr, self.eps)
