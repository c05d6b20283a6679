"""Runs each hot CUDA kernel of P1 and P5 a few times at full size, for Nsight Compute
(scripts/gpu_session.sh with NCU=1): the embedding forward (pooled concat), backward + fused SGD,
csr_spmm with fp32 and bf16 x, and one fastrp call (init + 3 SpMMs). No timing here: ncu measures the kernels."""
from __future__ import annotations

import torch

import embkern

OPS = torch.ops.embkern


def main() -> None:
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    M, D, B, F, ids, P = 2_000_000, 64, 4096, 16, 4, 2
    po, base, size, keys = (t.to(dev) for t in embkern.probe_layout({f"f{i}": P for i in range(F)}, M))
    N = F * B * ids
    lay = (torch.randint(0, 1 << 40, (N,), device=dev, generator=g), torch.arange(0, N + 1, ids, device=dev),
           po, base, size, keys)
    w = torch.randn(M, D, device=dev, generator=g)
    gout = torch.randn(B, F * P * D, device=dev, generator=g)
    for _ in range(2):
        OPS.mux_embedding_bag(w, *lay, "sum", "concat", None, False)
        OPS.mux_embedding_bag_sgd_(w, gout, *lay, "sum", "concat", None, 0.01)

    n, m, d = 1_000_000, 5_000_000, 128
    u, v = torch.randint(0, n, (m,), device=dev, generator=g), torch.randint(0, n, (m,), device=dev, generator=g)
    a = torch.sparse_coo_tensor(torch.stack([torch.cat([u, v]), torch.cat([v, u])]), torch.ones(2 * m, device=dev),
                                (n, n)).coalesce().to_sparse_csr()
    ip, ix, wt = a.crow_indices().long(), a.col_indices().long(), a.values()
    x = embkern.fastrp_projection(torch.arange(n, device=dev), d, 3.0, 1)
    for xx in (x, x.bfloat16()):
        for _ in range(2):
            embkern.csr_spmm(ip, ix, wt, xx)
    embkern.fastrp((ip, ix, wt), d, [0.0, 1.0, 1.0], seed=1)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
