"""Pure-Python / numpy references for the embedding family: hash version 1 on Python ints, and the
multiplexed bag as a loop over bags (the ground truth the kernels are compared with)."""
from __future__ import annotations

import hashlib

import numpy as np

MASK = (1 << 64) - 1


def mix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def salt(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def key(salt_f: int, probe: int, seed: int = 0) -> int:
    return mix((mix((seed & MASK) ^ salt_f) + probe) & MASK)


def row(value: int, key_fp: int, size: int, base: int = 0) -> int:
    h = mix(mix(value & MASK) ^ key_fp)  # value & MASK: two's complement, i.e. int32 sign-extended too
    return base + ((h * size) >> 64)


def layout_rows(values, offsets, probe_offsets, base, size, keys):
    """rows[g][i] for every value i of probe g's feature (dict g -> {i: row})."""
    F = len(probe_offsets) - 1
    B = (len(offsets) - 1) // F
    out = {}
    for f in range(F):
        for g in range(probe_offsets[f], probe_offsets[f + 1]):
            k = keys[g] & MASK
            out[g] = {i: row(int(values[i]), k, int(size[g]), int(base[g]))
                      for i in range(offsets[f * B], offsets[(f + 1) * B])}
    return out


def mux_embedding_bag(weight, values, offsets, probe_offsets, base, size, keys, pooling="sum", combine="concat",
                      psw=None):
    """float64 loop reference; weight is a numpy array [M, D]."""
    weight = np.asarray(weight, dtype=np.float64)
    values, offsets = [int(x) for x in values], [int(x) for x in offsets]
    probe_offsets = [int(x) for x in probe_offsets]
    F = len(probe_offsets) - 1
    B = (len(offsets) - 1) // F
    G, D = len(base), weight.shape[1]
    rows = layout_rows(values, offsets, probe_offsets, base, size, [int(k) for k in keys])
    if pooling == "none":
        pmax = max(probe_offsets[f + 1] - probe_offsets[f] for f in range(F))
        out = np.zeros((len(values), D if combine == "sum" else pmax * D))
        for f in range(F):
            for i in range(offsets[f * B], offsets[(f + 1) * B]):
                for p, g in enumerate(range(probe_offsets[f], probe_offsets[f + 1])):
                    c = 0 if combine == "sum" else p * D
                    out[i, c:c + D] += weight[rows[g][i]]
        return out
    out = np.zeros((B, D if combine == "sum" else G * D))
    for f in range(F):
        for b in range(B):
            s, e = offsets[f * B + b], offsets[f * B + b + 1]
            for g in range(probe_offsets[f], probe_offsets[f + 1]):
                acc = np.zeros(D)
                for i in range(s, e):
                    acc += (1.0 if psw is None else float(psw[i])) * weight[rows[g][i]]
                if pooling == "mean" and e > s:
                    acc /= e - s
                c = 0 if combine == "sum" else g * D
                out[b, c:c + D] += acc
    return out


def rowwise_adagrad(weight, momentum, dense_grad, lr, eps):
    """FBGEMM EXACT_ROWWISE_ADAGRAD on the rows with a nonzero gradient (float64)."""
    w, m = np.array(weight, dtype=np.float64), np.array(momentum, dtype=np.float64)
    g = np.asarray(dense_grad, dtype=np.float64)
    touched = np.any(g != 0, axis=1)
    m[touched] += np.mean(g[touched] ** 2, axis=1)
    w[touched] -= lr * g[touched] / (np.sqrt(m[touched])[:, None] + eps)
    return w, m
