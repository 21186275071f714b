"""faiss index choice: exact below FLAT_LIMIT, IVF above it, with recall checked against exact search."""

from __future__ import annotations

import numpy as np

from apps.clip4clip.index import FLAT_LIMIT, build_faiss_index, choose_faiss_type


def test_index_type_follows_collection_size() -> None:
    assert choose_faiss_type(10) == "Flat" and choose_faiss_type(FLAT_LIMIT - 1) == "Flat"
    assert choose_faiss_type(1_000_000) == "IVF1000,Flat"


def test_ivf_recall_against_exact_search() -> None:
    rng = np.random.default_rng(0)
    n, dim = FLAT_LIMIT + 5_000, 32
    # Clustered like real embeddings (videos of a few topics), not uniform noise.
    centres = rng.standard_normal((200, dim))
    data = centres[rng.integers(200, size=n)] + 0.3 * rng.standard_normal((n, dim))
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    queries = data[rng.choice(n, 50, replace=False)] + 0.05 * rng.standard_normal((50, dim)).astype(
        np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = build_faiss_index(data, "Flat").search(queries, 10)[1]
    approx_index = build_faiss_index(data)
    assert approx_index.ntotal == n and "IVF" in type(approx_index).__name__
    approx = approx_index.search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9
