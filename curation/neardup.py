"""Near-duplicate search over 64-bit image hashes whose cost grows close to linearly, persisted with a dataset.

Multi-index hashing (Norouzi et al., "Fast search in Hamming space with multi-index hashing"):
the 64 bits are cut into m bands; two hashes within `radius` bits differ in at most
`radius // m` bits of at least one band (pigeonhole). Each band has a bucket table (rows
counting-sorted by band value, 2^width + 1 start offsets), and a query visits, per band, the
buckets of every band value within `radius // m` bits of its own. The work per query is
(probes) x (visit + rows per bucket x compare); m is chosen from the index size by that cost
model (radius 8: 5 bands of 12-13 bits up to ~500k hashes, 3 bands of 21-22 bits above). A
compiled kernel (numba) walks the buckets; a pair is reported once, in the first band where it is
close enough.

Measured (bench/dedup.py, docs/benchmarks.md) against the banded numpy search it replaced, a
faiss `IndexBinaryMultiHash` (nflip=2: 25 s for 100k, its per-query hash-map probing is slow)
and a BK-tree (pure Python, far slower); the figures are in docs/benchmarks.md.

`NearDupIndex` keeps the hashes of a dataset's kept rows under DIR/index/neardup as segment
files (one per save: an increment writes only its own rows) plus a list of segments written
last (atomic), so an incremental build opens it, queries the new rows and adds the ones it keeps.
Each row also records the shard it lives in (so a candidate's pixels are read from that shard
alone), and each segment the dataset version it holds: a build saves a version's segment only
after the version is committed (curation/increments.py), so the index is never ahead of the log.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numba import njit

from common.atomic import atomic_path, atomic_write_json
from common.errors import UserError

INDEX_DIR = Path("index") / "neardup"
SEGMENTS_FILE = "segments.json"
FORMAT_VERSION = 2  # 2: segments name their dataset version, rows their shard (1 is still read)
# Widest band table: 2^22 + 1 offsets (32 MiB) per band.
_MAX_BAND_BITS = 22


class NearDupIndexError(UserError):
    """The stored near-duplicate index cannot be read or does not fit the request."""


# --- the kernel -------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True, nogil=True)
def _search_kernel(
    query_codes,  # uint64[m, q]: query codes sorted by each band's value
    query_ids,  # int64[m, q]: their query numbers
    self_join,  # bool: the queries are the indexed rows themselves
    sorted_codes,  # uint64[m, n]: indexed codes in bucket order, per band
    order,  # int64[m, n]: row id of each position
    starts,  # int64[m, 2^wmax + 1]: bucket start offsets per band
    shifts,  # uint64[m]
    band_masks,  # uint64[m]
    probes,  # uint64[total]: XOR masks of each band's probe set, band after band
    task_band,  # int64[k]: the (band, probe mask) pairs this call works through
    task_probe,  # int64[k]
    band_radius,  # int
    radius,  # int
    resume,  # int64[2]: (task, query position) to start from; updated on overflow
    out_query,
    out_row,
    out_distance,
):
    # Loop order (band, probe mask) -> queries in band order: consecutive queries visit nearby
    # buckets (v ^ mask is piecewise monotone in v), so the tables stream through the cache
    # instead of being hit at random (measured 2-3x faster than query-major order).
    n_out = 0
    cap = out_query.shape[0]
    nq = query_codes.shape[1]
    for task in range(resume[0], task_band.shape[0]):
        j = task_band[task]
        mask = probes[task_probe[task]]
        top_bit = np.uint64(0)  # highest bit of the mask: in a self-join, bucket pairs are visited once
        if mask != 0:
            top_bit = np.uint64(1) << np.uint64(63 - _leading_zeros(mask))
        p_from = resume[1] if task == resume[0] else 0
        for p in range(p_from, nq):
            q = query_codes[j, p]
            v = (q >> shifts[j]) & band_masks[j]
            if self_join and (v & top_bit) != 0:
                continue  # the pair of buckets (v ^ mask, v) is visited from the other side
            qi = query_ids[j, p]
            b = np.int64(v ^ mask)
            query_start = n_out
            for k in range(starts[j, b], starts[j, b + 1]):
                diff = q ^ sorted_codes[j, k]
                d = _popcount(diff)
                if d > radius:
                    continue
                x = order[j, k]
                if self_join and mask == 0 and x >= qi:
                    continue  # same bucket: each pair once
                seen = False  # reported already in an earlier band where it was close enough
                for jj in range(j):
                    if _popcount((diff >> shifts[jj]) & band_masks[jj]) <= band_radius:
                        seen = True
                        break
                if seen:
                    continue
                if n_out >= cap:  # full: the caller grows the buffers and redoes this query
                    resume[0], resume[1] = task, p
                    return query_start
                if self_join and x > qi:
                    out_query[n_out], out_row[n_out] = x, qi
                else:
                    out_query[n_out], out_row[n_out] = qi, x
                out_distance[n_out] = d
                n_out += 1
    resume[0] = task_band.shape[0]
    return n_out


@njit(cache=True, nogil=True)
def _bucket_sort(codes, shift, mask, order, sorted_codes, starts):
    # A stable counting sort of the codes by one band's value: the band's bucket table in two passes
    # (the argsort it replaced cost O(n log n) per band: most of an increment's query time at 1 M rows).
    starts[:] = 0
    for i in range(codes.shape[0]):
        starts[((codes[i] >> shift) & mask) + np.uint64(1)] += 1
    for b in range(1, starts.shape[0]):
        starts[b] += starts[b - 1]
    position = starts[:-1].copy()
    for i in range(codes.shape[0]):
        b = (codes[i] >> shift) & mask
        p = position[b]
        order[p] = i
        sorted_codes[p] = codes[i]
        position[b] = p + 1


@njit(cache=True, inline="always")
def _leading_zeros(x):
    n = 0
    while n < 64 and (x >> np.uint64(63 - n)) & np.uint64(1) == 0:
        n += 1
    return n


# --- band layout -------------------------------------------------------------------------------------------


def _band_widths(bands: int) -> list[int]:
    base, extra = divmod(64, bands)
    return [base + (1 if i < extra else 0) for i in range(bands)]


def _probe_count(width: int, flips: int) -> int:
    return sum(math.comb(width, k) for k in range(flips + 1))


# Cost of one bucket visit and of one hash comparison (ns), measured here with the kernel at 100k and
# 1M random hashes, 3-6 bands: a visit costs a cache miss (~25 ns) while the table is sparse (fewer
# than one row per 8 buckets, consecutive queries land on different cache lines), ~8 ns once dense.
_VISIT_NS_SPARSE, _VISIT_NS_DENSE, _COMPARE_NS = 25.0, 8.0, 1.5


def choose_bands(rows: int, radius: int) -> int:
    """Number of bands with the least estimated time per query (bands of at most 22 bits).

    Per band: probes x (visit cost + rows per bucket x compare cost); the constants above predict
    the measured order of 3-6 bands at 100k and 1M hashes (bench/dedup.py, docs/benchmarks.md).
    """
    best, best_cost = 3, math.inf
    for bands in range(3, 17):
        widths = _band_widths(bands)
        if max(widths) > _MAX_BAND_BITS:
            continue
        flips = radius // bands
        cost = 0.0
        for w in widths:
            per_bucket = rows / 2.0**w
            visit = _VISIT_NS_SPARSE if per_bucket < 1 / 8 else _VISIT_NS_DENSE
            cost += _probe_count(w, flips) * (visit + per_bucket * _COMPARE_NS)
        if cost < best_cost:
            best, best_cost = bands, cost
    return best


def _probe_masks(width: int, flips: int) -> np.ndarray:
    masks = [0]
    for k in range(1, flips + 1):
        for bits in _combinations(width, k):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.uint64)


def _combinations(n: int, k: int):
    from itertools import combinations

    return combinations(range(n), k)


@dataclass(frozen=True)
class Matches:
    """Hash pairs within the radius: query[i] is within distance[i] bits of indexed row[i]."""

    query: np.ndarray
    row: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return len(self.query)


class HammingIndex:
    """All rows within `radius` bits of a query, over a fixed set of 64-bit codes (uint64)."""

    def __init__(
        self, codes: np.ndarray, radius: int, bands: int | None = None, threads: int | None = None
    ) -> None:
        if not 0 <= radius <= 32:
            raise ValueError(f"radius must be within 0-32 bits, got {radius}")
        self.codes = np.ascontiguousarray(codes, dtype=np.uint64)
        self.radius = radius
        self.threads = threads or default_threads()
        self.bands = bands or choose_bands(len(self.codes), radius)
        widths = _band_widths(self.bands)
        self.band_radius = radius // self.bands
        self.shifts = np.array(np.cumsum([0] + widths[:-1]), dtype=np.uint64)
        self.band_masks = np.array([(1 << w) - 1 for w in widths], dtype=np.uint64)
        masks = [_probe_masks(w, self.band_radius) for w in widths]
        self.probes = np.concatenate(masks)
        self.probe_offsets = np.array(np.cumsum([0] + [len(p) for p in masks]), dtype=np.int64)
        n, table = len(self.codes), 1 << max(widths)
        self.order = np.empty((self.bands, n), dtype=np.int64)
        self.sorted_codes = np.empty((self.bands, n), dtype=np.uint64)
        self.starts = np.zeros((self.bands, table + 1), dtype=np.int64)

        def sort_band(j: int) -> None:
            arrays = (self.order[j], self.sorted_codes[j], self.starts[j])
            _bucket_sort(self.codes, self.shifts[j], self.band_masks[j], *arrays)

        if self.threads == 1 or n < 100_000:
            for j in range(self.bands):
                sort_band(j)
        else:  # the kernel releases the GIL: bands side by side
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.threads, self.bands)) as pool:
                list(pool.map(sort_band, range(self.bands)))

    def __len__(self) -> int:
        return len(self.codes)

    def search(self, queries: np.ndarray) -> Matches:
        """Every (query, row) pair within the radius, each once."""
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        codes = np.empty((self.bands, len(queries)), dtype=np.uint64)
        ids = np.empty((self.bands, len(queries)), dtype=np.int64)
        for j in range(self.bands):
            ids[j] = np.argsort((queries >> self.shifts[j]) & self.band_masks[j], kind="stable")
            codes[j] = queries[ids[j]]
        return self._run(codes, ids, self_join=False)

    def pairs(self) -> Matches:
        """Every pair of indexed rows within the radius, once, as (later row, earlier row)."""
        return self._run(self.sorted_codes, self.order, self_join=True)

    def _run(self, codes: np.ndarray, ids: np.ndarray, self_join: bool) -> Matches:
        # (band, probe) tasks dealt round-robin to threads: the kernel releases the GIL.
        bands = np.repeat(np.arange(self.bands), np.diff(self.probe_offsets))
        tasks = np.arange(len(self.probes))
        threads = max(1, min(self.threads, len(tasks)))
        groups = [(bands[i::threads], tasks[i::threads]) for i in range(threads)]

        def work(group: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            cap = max(1024, codes.shape[1] // (4 * threads))
            parts, resume = [], np.zeros(2, dtype=np.int64)
            while resume[0] < len(group[0]):
                out_q = np.empty(cap, dtype=np.int64)
                out_x = np.empty(cap, dtype=np.int64)
                out_d = np.empty(cap, dtype=np.uint64)
                n = _search_kernel(
                    codes, ids, self_join, self.sorted_codes, self.order, self.starts, self.shifts,
                    self.band_masks, self.probes, group[0], group[1], self.band_radius, self.radius,
                    resume, out_q, out_x, out_d,
                )  # fmt: skip
                parts.append((out_q[:n].copy(), out_x[:n].copy(), out_d[:n].astype(np.int8)))
                cap *= 2
            return parts

        if threads == 1:
            parts = work(groups[0])
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                parts = [part for result in pool.map(work, groups) for part in result]
        return Matches(*(np.concatenate([p[i] for p in parts]) for i in range(3)))


def default_threads() -> int:
    """CPU cores this process may use (the kernel runs one thread per core)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def hex_to_codes(hashes: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 codes, valid mask) of 16-hex-digit hashes; None or '' is invalid (code 0)."""
    codes = np.fromiter((int(h, 16) if h else 0 for h in hashes), dtype=np.uint64, count=len(hashes))
    valid = np.fromiter((bool(h) for h in hashes), dtype=bool, count=len(hashes))
    return codes, valid


# --- persisted, per dataset ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A new row (`index` in the batch) whose hash `kind` is within `distance` bits of row `other_key`."""

    index: int
    other_key: str
    kind: str
    distance: int
    other_location: str | None = None  # the file the indexed row lives in (a shard), when recorded


class NearDupIndex:
    """Hashes of a dataset's rows (one column per hash kind), searchable by Hamming radius, kept on disk.

        index = NearDupIndex.open(dataset_dir, radii={"phash": 8, "ahash": 6})
        candidates = index.query_and_add({"phash": [...], "ahash": [...]}, keys)   # new rows only
        index.save()   # writes one segment with the added rows, then the segment list

    Candidates are hash matches only: the caller confirms them (colours, pixels) and decides.
    A dataset build tags each segment with the dataset version it holds (`save(dataset_version=v)`)
    and opens the index as of a version (`open(..., up_to_version=v)`).
    """

    def __init__(self, root: Path | None, radii: Mapping[str, int]) -> None:
        self.root = root
        self.radii = dict(radii)
        self.keys: list[str] = []
        self.codes = {kind: np.empty(0, dtype=np.uint64) for kind in self.radii}
        self.valid = {kind: np.empty(0, dtype=bool) for kind in self.radii}
        self.location_names: list[str] = []  # files rows live in; rows point into this list
        self.location_ids = np.empty(0, dtype=np.int32)  # per row; -1: not recorded
        self.segments: list[dict] = []  # {"file", "dataset_version", "rows"} of the loaded segments
        self.dataset_version = -1  # newest dataset version the loaded segments hold (-1: none)
        self.rows_loaded = True
        self._skipped: list[dict] = []  # listed segments of later versions, not loaded: dropped on save
        self._saved_rows = 0
        self._tables: dict[str, tuple[HammingIndex, np.ndarray]] = {}

    @classmethod
    def open(
        cls,
        dataset_dir: Path | str,
        radii: Mapping[str, int] | None = None,
        up_to_version: int | None = None,
        load_rows: bool = True,
    ) -> NearDupIndex:
        """The index stored in DATASET/index/neardup (an empty one when there is none yet).

        `up_to_version`: only the segments of dataset versions up to it (the rest is dropped at the
        next save). `load_rows=False` reads the segment list only: enough to `add` and `save`.
        """
        root = Path(dataset_dir) / INDEX_DIR
        index = cls(root, radii or {"phash": 8, "ahash": 6})
        listing = root / SEGMENTS_FILE
        if not listing.exists():
            return index
        try:
            meta = json.loads(listing.read_text())
        except json.JSONDecodeError as exc:
            raise NearDupIndexError(
                f"{listing} is not valid JSON ({exc}); delete {root} and rebuild it from the shards"
            ) from exc
        if meta.get("version") not in (1, FORMAT_VERSION):
            raise NearDupIndexError(
                f"{listing}: format version {meta.get('version')} is not {FORMAT_VERSION}; delete {root} to rebuild"
            )
        missing = set(index.radii) - set(meta.get("kinds", []))
        if missing:
            raise NearDupIndexError(
                f"{root} holds hashes {meta.get('kinds')}, not {sorted(missing)}; delete it to rebuild"
            )
        for entry in meta["segments"]:
            entry = entry if isinstance(entry, dict) else {"file": entry, "dataset_version": None}
            version = entry.get("dataset_version")
            if up_to_version is not None and version is not None and version > up_to_version:
                index._skipped.append(entry)
                continue
            index.segments.append(entry)
            if version is not None:
                index.dataset_version = max(index.dataset_version, version)
            if load_rows:
                index._load_segment(root / entry["file"])
        index.rows_loaded = load_rows
        index._saved_rows = len(index.keys)
        return index

    @property
    def has_untagged_segments(self) -> bool:
        """Whether some loaded segment names no dataset version (saved outside a build)."""
        return any(entry.get("dataset_version") is None for entry in self.segments)

    def reset(self) -> None:
        """Forget every row; the listed segments are dropped at the next save (to rebuild from the source)."""
        skipped = self._skipped + self.segments
        self.__init__(self.root, self.radii)
        self._skipped = skipped

    def _load_segment(self, path: Path) -> None:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise NearDupIndexError(f"{path} cannot be read ({exc}); delete {self.root} to rebuild") from exc
        locations = None
        if "location" in table.column_names:
            encoded = table["location"].combine_chunks().dictionary_encode()
            names = encoded.dictionary.to_pylist()
            offset = len(self.location_names)
            self.location_names.extend(names)
            ids = encoded.indices.to_numpy(zero_copy_only=False)
            locations = np.where(encoded.is_valid().to_numpy(zero_copy_only=False), ids + offset, -1)
        self._append(
            table["key"].to_pylist(),
            {kind: table[kind].to_numpy(zero_copy_only=False) for kind in self.radii},
            {kind: table[f"{kind}_valid"].to_numpy(zero_copy_only=False) for kind in self.radii},
            locations,
        )

    def __len__(self) -> int:
        return len(self.keys)

    def _append(
        self,
        keys: Sequence[str],
        codes: Mapping[str, np.ndarray],
        valid: Mapping[str, np.ndarray],
        location_ids: np.ndarray | None = None,
    ):
        self.keys.extend(keys)
        for kind in self.radii:
            self.codes[kind] = np.concatenate([self.codes[kind], np.asarray(codes[kind], dtype=np.uint64)])
            self.valid[kind] = np.concatenate([self.valid[kind], np.asarray(valid[kind], dtype=bool)])
        ids = np.full(len(keys), -1) if location_ids is None else location_ids
        self.location_ids = np.concatenate([self.location_ids, np.asarray(ids, dtype=np.int32)])
        self._tables.clear()

    def _table(self, kind: str) -> tuple[HammingIndex, np.ndarray]:
        if kind not in self._tables:
            rows = np.nonzero(self.valid[kind])[0]
            self._tables[kind] = (HammingIndex(self.codes[kind][rows], self.radii[kind]), rows)
        return self._tables[kind]

    def _batch(self, hashes: Mapping[str, Sequence[str | None]], n: int):
        unknown = set(hashes) - set(self.radii)
        if unknown:
            raise NearDupIndexError(
                f"hash kinds {sorted(unknown)} are not in this index ({sorted(self.radii)})"
            )
        converted = {}
        for kind in self.radii:
            values = hashes.get(kind)
            values = [None] * n if values is None else values
            if len(values) != n:
                raise NearDupIndexError(f"{len(values)} {kind} values for {n} keys")
            converted[kind] = hex_to_codes(values)
        return converted

    def location(self, row: int) -> str | None:
        """The file indexed row `row` lives in, when it was recorded."""
        i = int(self.location_ids[row])
        return self.location_names[i] if i >= 0 else None

    def query(self, hashes: Mapping[str, Sequence[str | None]], n: int | None = None) -> list[Candidate]:
        """Indexed rows near each new row, per hash kind (the batch is not compared with itself)."""
        if not self.rows_loaded:
            raise NearDupIndexError("this index was opened without its rows (load_rows=False): cannot query")
        n = n if n is not None else len(next(iter(hashes.values())))
        found: list[Candidate] = []
        for kind, (codes, valid) in self._batch(hashes, n).items():
            if not len(self.keys) or not valid.any():
                continue
            table, rows = self._table(kind)
            batch_rows = np.nonzero(valid)[0]
            matches = table.search(codes[batch_rows])
            for q, x, d in zip(matches.query.tolist(), matches.row.tolist(), matches.distance.tolist()):
                row = int(rows[x])
                found.append(Candidate(int(batch_rows[q]), self.keys[row], kind, int(d), self.location(row)))
        return found

    def query_and_add(
        self, hashes: Mapping[str, Sequence[str | None]], keys: Sequence[str]
    ) -> list[Candidate]:
        """Candidates of each new row among the indexed rows and the earlier rows of this batch; then add them.

        Add only what the dataset keeps (call `query` then `add`) when rejected rows should not be
        matched again; `query_and_add` adds the whole batch.
        """
        keys = list(keys)
        found = self.query(hashes, len(keys))
        for kind, (codes, valid) in self._batch(hashes, len(keys)).items():
            rows = np.nonzero(valid)[0]
            if len(rows) < 2:
                continue
            matches = HammingIndex(codes[rows], self.radii[kind]).pairs()
            for q, x, d in zip(matches.query.tolist(), matches.row.tolist(), matches.distance.tolist()):
                found.append(Candidate(int(rows[q]), keys[rows[x]], kind, int(d)))
        self.add(hashes, keys)
        return found

    def add(
        self,
        hashes: Mapping[str, Sequence[str | None]],
        keys: Sequence[str],
        locations: str | Sequence[str | None] | None = None,
    ) -> None:
        """Index `keys` with their hashes; `locations`: the file each row lives in (or one for all)."""
        batch = self._batch(hashes, len(keys))
        ids = None
        if locations is not None:
            per_row = [locations] * len(keys) if isinstance(locations, str) else list(locations)
            known = {name: i for i, name in enumerate(self.location_names)}
            ids = np.empty(len(keys), dtype=np.int32)
            for i, name in enumerate(per_row):
                if name is None:
                    ids[i] = -1
                    continue
                if name not in known:
                    known[name] = len(self.location_names)
                    self.location_names.append(name)
                ids[i] = known[name]
        self._append(
            list(keys), {k: v[0] for k, v in batch.items()}, {k: v[1] for k, v in batch.items()}, ids
        )

    def save(self, dataset_version: int | None = None) -> Path | None:
        """Write the rows added since the last save as one segment, then the segment list (atomic).

        `dataset_version`: the dataset version these rows belong to; call it only once that version is
        committed. Listed segments of later versions that `open` skipped are dropped.
        """
        if self.root is None:
            raise NearDupIndexError(
                "this index has no directory: open it with NearDupIndex.open(dataset_dir)"
            )
        new = slice(self._saved_rows, len(self.keys))
        if (
            new.start == new.stop
            and dataset_version is None
            and not self._skipped
            and (self.root / SEGMENTS_FILE).exists()
        ):
            return None
        columns = {"key": pa.array(self.keys[new], pa.string())}
        for kind in self.radii:
            columns[kind] = pa.array(self.codes[kind][new], pa.uint64())
            columns[f"{kind}_valid"] = pa.array(self.valid[kind][new], pa.bool_())
        ids = self.location_ids[new]
        used, local = np.unique(np.maximum(ids, 0), return_inverse=True)  # only this segment's files
        names = [self.location_names[i] for i in used.tolist()] if self.location_names else [""] * len(used)
        columns["location"] = pa.DictionaryArray.from_arrays(
            pa.array(local.astype(np.int32), pa.int32(), mask=ids < 0), pa.array(names, pa.string())
        )
        name = f"segment-{len(self.segments):05d}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.root / name
        with atomic_path(path) as tmp:
            pq.write_table(pa.table(columns), tmp)
        self.segments.append({"file": name, "dataset_version": dataset_version, "rows": new.stop - new.start})
        if dataset_version is not None:
            self.dataset_version = max(self.dataset_version, dataset_version)
        atomic_write_json(
            self.root / SEGMENTS_FILE,
            {
                "version": FORMAT_VERSION,
                "kinds": sorted(self.radii),
                "rows": sum(entry.get("rows") or 0 for entry in self.segments),
                "dataset_version": self.dataset_version,
                "segments": self.segments,
            },
        )
        for entry in self._skipped:  # listed no more: their rows belong to versions that were not committed
            (self.root / entry["file"]).unlink(missing_ok=True)
        self._skipped = []
        self._saved_rows = len(self.keys)
        return path
