"""faiss index choice: exact below FLAT_LIMIT, IVF above it, with recall checked against exact search."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_hnsw_and_flat_on_request() -> None:
    rng = np.random.default_rng(1)
    data = rng.standard_normal((2_000, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    exact = build_faiss_index(data, "Flat").search(data[:20], 5)[1]
    hnsw = build_faiss_index(data, "HNSW32").search(data[:20], 5)[1]
    assert (exact[:, 0] == np.arange(20)).all()  # each vector is its own nearest neighbour
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(hnsw, exact)]) >= 0.9


def test_bad_index_types_are_clear_errors() -> None:
    data = np.eye(8, dtype=np.float32)
    with pytest.raises(ValueError, match="not understood"):
        build_faiss_index(data, "NoSuchIndex")
    with pytest.raises(ValueError, match="only 8 videos"):
        build_faiss_index(data, "IVF64,Flat")
