"""An index opened for serving: memory-mapped embeddings and pictures, faiss, filters, metadata.

Filters (hide near-duplicates, minimum CLIP score) are applied after the faiss search, on a
candidate list that widens until it holds enough results: filtered pages stay exact in the
order of the index, however many rows a filter removes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from apps.search.index import FLAT_LIMIT, MODALITIES, TIE_MARGIN, SearchIndexError, read_index_meta

QUICK_K = 1_000  # results per request (offset + k) up to which a search counts as quick (see `quick`)
MAX_K = 10_000  # results per request at most (offset + k); more is refused with this number in the message


def one_batch(table: pa.Table) -> pa.Table:
    """`table` as one record batch (a lookup is then one take), or as it is when a string column holds
    more than 32-bit offsets reach (2 GB): lookups then take inside each row group."""
    with contextlib.suppress(pa.ArrowInvalid):
        return table.combine_chunks()
    return table


@dataclass(frozen=True)
class Hit:
    id: int
    score: float


class SearchIndex:
    """A search index directory, ready to answer queries (thread-safe for reading)."""

    def __init__(self, path: Path | str, nprobe: int | None = None, threads: int = 1):
        self.path = Path(path)
        self.threads = threads
        self.meta = read_index_meta(self.path)
        self.count = int(self.meta["count"])
        self.dim = int(self.meta["dim"])
        self.metadata = pq.read_table(self.path / "metadata.parquet")
        # Rows are looked up batch by batch: pyarrow's take on a many-chunk table concatenates every
        # chunk first (18 ms per query at a million rows), a take inside one batch costs microseconds.
        self.metadata = one_batch(self.metadata)
        self._batches = self.metadata.to_batches()
        self._batch_starts = np.cumsum([0] + [b.num_rows for b in self._batches])
        self._group = self.metadata["dup_group"].to_numpy()
        self._clip_score = self.metadata["clip_score"].to_numpy(zero_copy_only=False).astype(np.float32)
        self._clip_score = np.where(np.isnan(self._clip_score), -np.inf, self._clip_score)
        self.modalities = [m for m in MODALITIES if m in self.meta["faiss"]]
        self.vectors = {m: np.load(self.path / f"{m}.npy", mmap_mode="r") for m in self.modalities}
        self.faiss = {}
        for m in self.modalities:
            index = faiss.read_index(
                str(self.path / f"{m}.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
            )
            if nprobe is not None or self.meta["faiss"][m]["nprobe"] > 1:
                try:
                    faiss.extract_index_ivf(index).nprobe = nprobe or self.meta["faiss"][m]["nprobe"]
                except RuntimeError:
                    pass  # not an inverted file: nothing to probe
            self.faiss[m] = index
        self._offsets = np.load(self.path / "image_offsets.npy", mmap_mode="r")
        images = self.path / "images.bin"
        self._images = np.memmap(images, dtype=np.uint8, mode="r") if images.stat().st_size else None

    # --- lookups ---------------------------------------------------------------------------------

    def check_id(self, row: int) -> int:
        if not 0 <= row < self.count:
            raise SearchIndexError(f"id {row} is not in the index (ids are 0-{self.count - 1})")
        return row

    def check_modality(self, modality: str) -> str:
        if modality not in MODALITIES:
            raise SearchIndexError(f"index={modality!r}: choose image (pictures) or text (captions)")
        if modality not in self.modalities:
            raise SearchIndexError(
                f"this index has no {modality} vectors (it has {', '.join(self.modalities)})"
            )
        return modality

    def vector(self, row: int, modality: str) -> np.ndarray:
        self.check_modality(modality)
        return np.asarray(self.vectors[modality][self.check_id(row)], dtype=np.float32)

    def image_bytes(self, row: int) -> bytes | None:
        self.check_id(row)
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        if self._images is None or end <= start:
            return None
        return bytes(self._images[start:end])

    def rows(self, ids: list[int]) -> list[dict]:
        """Metadata of `ids`, in that order."""
        for row in ids:
            self.check_id(row)
        wanted = np.asarray(ids, dtype=np.int64)
        batch_of = np.searchsorted(self._batch_starts, wanted, side="right") - 1
        found: list[dict] = [{}] * len(ids)
        for b in np.unique(batch_of):
            where = np.flatnonzero(batch_of == b)
            within = pa.array(wanted[where] - self._batch_starts[b])
            for w, row in zip(where, self._batches[b].take(within).to_pylist()):
                found[w] = row
        return found

    # --- search ----------------------------------------------------------------------------------

    def quick(self, modality: str, wanted: int) -> bool:
        """Whether a search for `wanted` results takes about a millisecond: an approximate index (its
        nprobe tuned at index time) or an exact one small enough to scan. The server answers such
        queries on its event loop instead of handing them to a worker thread and back."""
        if modality not in self.faiss or wanted > QUICK_K:
            return False
        return self.meta["faiss"][modality]["type"] != "Flat" or self.count < FLAT_LIMIT

    def _search(self, query: np.ndarray, modality: str, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        # A margin past what is wanted, then ties (exact copies score alike) ordered by id: faiss breaks
        # ties by chance, and pages of one query must not overlap or skip a copy at their border.
        fetch = min(self.count, fetch + TIE_MARGIN)
        # OpenMP's thread count is per calling thread: a server's worker thread would otherwise use every
        # core for one query, and on 2 busy cores waking the team costs more than the search (25 vs 1.4 ms
        # at 10k vectors, docs/search.md). Parallel requests use the cores instead.
        faiss.omp_set_num_threads(self.threads)
        scores, ids = self.faiss[modality].search(query.reshape(1, -1).astype(np.float32), fetch)
        keep = ids[0] >= 0
        ids, scores = ids[0][keep], scores[0][keep]
        order = np.lexsort((ids, -np.round(scores, 5)))
        return ids[order], scores[order]

    def knn(
        self,
        query: np.ndarray,
        modality: str = "image",
        k: int = 20,
        offset: int = 0,
        hide_duplicates: bool = False,
        min_score: float | None = None,
    ) -> list[Hit]:
        """Results `offset` to `offset + k` (best first) after the filters; fewer at the end of the index."""
        self.check_modality(modality)
        if k < 1 or offset < 0:
            raise SearchIndexError(f"k={k}, offset={offset}: k must be at least 1 and offset at least 0")
        if offset + k > MAX_K:
            raise SearchIndexError(
                f"offset + k = {offset + k:,} is more than {MAX_K:,} results per request: page with "
                "offset (the web page loads more on scroll)"
            )
        if query.shape != (self.dim,) or not np.isfinite(query).all():
            raise SearchIndexError(
                f"query vector: expected {self.dim} finite numbers, got shape {query.shape}"
            )
        if self.count == 0:
            return []
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        wanted = offset + k
        filtering = hide_duplicates or min_score is not None
        fetch = min(self.count, wanted * (4 if filtering else 1))
        while True:
            ids, scores = self._search(query, modality, fetch)
            keep = np.ones(len(ids), dtype=bool)
            if min_score is not None:
                keep &= self._clip_score[ids] >= min_score
            if hide_duplicates:
                _, first = np.unique(self._group[ids], return_index=True)
                once = np.zeros(len(ids), dtype=bool)
                once[first] = True  # the best-scoring copy of each group (results are sorted)
                keep &= once
            ids, scores = ids[keep], scores[keep]
            if len(ids) >= wanted or fetch >= self.count:
                break
            fetch = min(self.count, fetch * 4)
        return [Hit(int(i), float(s)) for i, s in zip(ids[offset:wanted], scores[offset:wanted])]
