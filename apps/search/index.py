"""Build a search index of a dataset version: embed (by shard, resumable), group duplicates, faiss.

An index directory holds:
- `parts/NAME.{parquet,image.npy,text.npy,json}`: one dataset shard embedded; the `.json` marker
  (written last) names the shard's sha256, so a rerun skips shards already embedded and a new
  dataset version only embeds its new shards;
- `metadata.parquet`: one row per indexed pair, in id order (key, caption, url, clip score, size,
  near-duplicate group, ...), no pixels;
- `images.bin` + `image_offsets.npy`: the encoded pictures back to back (served by id);
- `image.npy`, `text.npy`: unit-length embeddings [n, dim], memory-mapped at serve time;
- `image.faiss`, `text.faiss`: inner-product faiss indexes of the kind `choose_index_type` picks
  for the size within `max_memory` (exact when small, an inverted file when large);
- `rejects.json`: rows that could not be indexed, with the reason;
- `index.json` last: format, CLIP, dataset, parts in order, faiss kinds, and per index the nprobe
  chosen for a recall target with the recall@10 measured at that nprobe (`tune_nprobe`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from apps.clip4clip.index import check_same_clip, clip_record
from apps.search.embed import PART_SCHEMA, Part, embed_shard
from common.atomic import atomic_path, atomic_write_json
from common.errors import UserError
from curation.dedup import duplicate_groups, same_pictures, thumbnail
from curation.shards import load_manifest, trusted_shards, write_parquet_atomic

INDEX_FORMAT = "clip-search-index/1"
MODALITIES = ("image", "text")
FLAT_LIMIT = (
    20_000  # exact search below this many vectors: 10k x 512 takes about 5-15 ms per query on a busy core
)
DEFAULT_MAX_MEMORY = 4 << 30
REFINE_K_FACTOR = 8  # candidates per wanted result re-ranked exactly (k_factor of faiss's IndexRefine)
TIE_MARGIN = 16  # results fetched past the wanted ones, so that ties can be ordered by id (store.py)
DEFAULT_TARGET_RECALL = 0.95  # recall@10 against exact search that the chosen nprobe must reach
TUNING_QUERIES = 200  # per query kind (own vectors; the other modality's), drawn with a fixed seed
DEFAULT_DEDUP_RADIUS = 8  # curation's default pHash radius (candidates are then checked on the pixels)
METADATA_COLUMNS = [n for n in PART_SCHEMA.names if n not in ("jpg", "colour")]


class SearchIndexError(UserError, RuntimeError):
    """An index or dataset that cannot be used as asked; the message names it and the fix."""


@dataclass(frozen=True)
class IndexSettings:
    batch_size: int = 64
    max_memory: int = DEFAULT_MAX_MEMORY  # bytes the two faiss indexes may take together
    index_type: str | None = None  # faiss factory string; None: by size (choose_index_type)
    dedup_radius: int = DEFAULT_DEDUP_RADIUS
    target_recall: float = DEFAULT_TARGET_RECALL  # nprobe: the smallest power of two reaching it
    progress: bool = True


@dataclass(frozen=True)
class IndexReport:
    index_dir: Path
    rows: int
    embedded_shards: list[str]
    reused_shards: list[str]
    rejected: int
    duplicate_groups: int
    index_types: dict[str, str]
    bytes: int
    faiss: dict[str, dict] = field(default_factory=dict)  # per modality: type, nprobe, recall_at_10


# --- faiss ------------------------------------------------------------------------------------------


def bytes_per_vector(kind: str, dim: int) -> float:
    """Memory one vector takes in a faiss index of this factory string (codes, refine copy, ids)."""
    parts = kind.split(",")
    if parts[0].startswith("HNSW"):
        return dim * 4 + 2 * int(parts[0][4:] or 32) * 4
    total = 8.0 if parts[0].startswith("IVF") else 0.0  # IVF lists store an 8-byte id per vector
    for part in parts[1:] if parts[0].startswith("IVF") else parts:
        if part in ("Flat", "RFlat"):
            total += dim * 4
        elif part == "SQ8":
            total += dim
        elif part.startswith("PQ"):
            m, _, bits = part[2:].removesuffix("fs").partition("x")
            total += int(m) * int(bits or 8) / 8
    return total


def ivf_lists(n: int) -> int:
    """About 4 sqrt(n) lists, a power of two (4,096 at a million): the low end of faiss's advice
    (4-16 sqrt(n)). With sqrt(n) lists a query had to scan a quarter of them for recall@10 0.95
    (16 ms of CPU at 1M); with 4 sqrt(n) it scans a few (1 ms), and k-means over 4,096 lists still
    builds in about 5 minutes on 2 cores (docs/search.md)."""
    return int(2 ** round(math.log2(max(16, 4 * math.sqrt(n)))))


def choose_index_type(n: int, dim: int, max_memory: int = DEFAULT_MAX_MEMORY) -> str:
    """Exact (Flat) when small; an inverted file when large, with the best codes that fit the budget.

    First choice: 4-bit fast-scan PQ codes (dim/8 bytes, scanned with SIMD table lookups), the
    best REFINE_K_FACTOR x k candidates re-ranked exactly with the full vectors (RFlat): measured
    about 10x less CPU per query than IVF-Flat at the same recall (docs/search.md); then 1-byte
    scalar codes (SQ8), then plain PQ, as the memory budget shrinks.
    """
    if n < FLAT_LIMIT and n * dim * 4 <= max_memory:
        return "Flat"
    nlist = ivf_lists(n)
    codes = [f"PQ{dim // 4}x4fs,RFlat"] if dim % 8 == 0 else ["Flat"]
    codes += ["SQ8", f"PQ{max(4, dim // 8)}", f"PQ{max(4, dim // 32)}"]
    for code in codes:
        kind = f"IVF{nlist},{code}"
        if n * bytes_per_vector(kind, dim) <= max_memory:
            return kind
    smallest = f"IVF{nlist},{codes[-1]}"
    raise SearchIndexError(
        f"{n:,} vectors of width {dim} do not fit --max-memory {max_memory:,} bytes even as "
        f"{smallest} ({bytes_per_vector(smallest, dim):.0f} B each): raise --max-memory"
    )


def default_nprobe(kind: str) -> int:
    """Lists scanned per query before `tune_nprobe` measures the right number."""
    if not kind.startswith("IVF"):
        return 1
    nlist = int(kind[3:].split(",")[0])
    return max(8, nlist // 64)


def build_faiss(vectors: np.ndarray, kind: str, seed: int = 0):
    """A trained inner-product faiss index of `kind` holding `vectors` (ids = row numbers)."""
    n, dim = vectors.shape
    try:
        index = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:  # faiss reports a bad factory string as a C++ RuntimeError
        raise SearchIndexError(
            f"faiss index type {kind!r} not understood ({str(err).splitlines()[0][:100]}): "
            "use Flat, IVF<lists>,Flat, IVF<lists>,SQ8, IVF<lists>,PQ<m> or HNSW<links>"
        ) from None
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index) if kind.startswith("IVF") else None
        nlist = ivf.nlist if ivf is not None else 1
        if n < nlist:
            raise SearchIndexError(f"faiss index {kind!r} has {nlist} lists but only {n} vectors: use Flat")
        # 64 training points per list, as faiss recommends: k-means on a sample places the lists.
        sample = np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
    for start in range(0, n, 100_000):  # add in slices: a memory-mapped array is read once
        index.add(np.ascontiguousarray(vectors[start : start + 100_000], dtype=np.float32))
    if kind.startswith("IVF"):
        faiss.extract_index_ivf(index).nprobe = default_nprobe(kind)
    if kind.endswith(",RFlat"):
        index.k_factor = REFINE_K_FACTOR
    return index


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (scores, ids), reading `vectors` (memory-mapped is fine) in slices."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(vectors), 65_536):
        block = np.ascontiguousarray(vectors[start : start + 65_536], dtype=np.float32)
        scores = np.concatenate([best_s, queries @ block.T], axis=1)
        ids = np.concatenate(
            [best_i, np.broadcast_to(np.arange(start, start + len(block)), (len(queries), len(block)))],
            axis=1,
        )
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


@dataclass(frozen=True)
class TuningQueries:
    """Queries for measuring recall: `vectors` and, for queries that are rows of the index, their ids
    (a row's own vector finds itself; that hit is left out of the count)."""

    vectors: np.ndarray
    own_ids: np.ndarray | None = None


def exact_kth_scores(vectors: np.ndarray, queries: TuningQueries, k: int = 10) -> np.ndarray:
    """Per query, the k-th best exact score among the indexed rows (its own row left out)."""
    own = queries.own_ids is not None
    q = np.ascontiguousarray(queries.vectors, dtype=np.float32)
    true_s, true_i = exact_neighbours(vectors, q, k + int(own))
    kth = np.empty(len(q), np.float32)
    for row in range(len(q)):
        truth = true_s[row][true_i[row] != queries.own_ids[row]] if own else true_s[row]
        kth[row] = truth[: min(k, len(truth))][-1]
    return kth


def recall_at(
    index, vectors: np.ndarray, queries: TuningQueries, k: int = 10, kth: np.ndarray | None = None
) -> float:
    """Recall@k of `index` as the server queries it (k + TIE_MARGIN fetched) against exact search.

    A result counts when its exact score reaches the k-th exact score (`kth`, computed when not
    given): exact copies tie, and any of them is a right answer.
    """
    own = queries.own_ids is not None
    q = np.ascontiguousarray(queries.vectors, dtype=np.float32)
    kth = exact_kth_scores(vectors, queries, k) if kth is None else kth
    wanted = min(k, len(vectors) - int(own))
    found = index.search(q, min(len(vectors), k + TIE_MARGIN))[1]
    hits = 0.0
    for row in range(len(q)):
        ids = [i for i in found[row] if i >= 0 and not (own and i == queries.own_ids[row])][:k]
        if ids:
            scores = np.asarray(vectors[np.sort(ids)], dtype=np.float32) @ q[row]
            hits += min(wanted, int((scores >= kth[row] - 1e-5).sum())) / max(1, wanted)
    return hits / len(q)


def tune_nprobe(index, vectors: np.ndarray, queries: list[TuningQueries], target: float) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose recall@10 reaches `target` on every query set, and that
    recall (nprobe = all lists and the recall there when no count reaches it; (1, recall) when `index`
    is not an inverted file). Sets the index's nprobe to it."""
    kths = [exact_kth_scores(vectors, q) for q in queries]  # exact search once, not once per nprobe

    def reached() -> float:
        return min(recall_at(index, vectors, q, kth=kth) for q, kth in zip(queries, kths))

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return 1, reached()
    nprobe = 1
    while True:
        ivf.nprobe = nprobe
        recall = reached()
        if recall >= target or nprobe >= ivf.nlist:
            return nprobe, recall
        nprobe = min(ivf.nlist, nprobe * 2)


def tuning_queries(vectors: dict[str, np.ndarray], modality: str, seed: int = 0) -> list[TuningQueries]:
    """Rows of the index itself ("more like this") and, when there is one, the other modality's rows
    at the same ids (a caption searching the pictures: the main use, and harder for an inverted file)."""
    n = len(vectors[modality])
    ids = np.sort(np.random.default_rng(seed).choice(n, size=min(n, TUNING_QUERIES), replace=False))
    sets = [TuningQueries(np.asarray(vectors[modality][ids], dtype=np.float32), ids)]
    for other, array in vectors.items():
        if other != modality:
            sets.append(TuningQueries(np.asarray(array[ids], dtype=np.float32)))
    return sets


# --- parts (one per dataset shard) ------------------------------------------------------------------


def _part_paths(out: Path, shard_name: str) -> dict[str, Path]:
    stem = Path(shard_name).stem
    folder = out / "parts"
    return {
        "rows": folder / f"{stem}.parquet",
        "image": folder / f"{stem}.image.npy",
        "text": folder / f"{stem}.text.npy",
        "marker": folder / f"{stem}.json",
    }


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.save would add ".npy"
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32))


def _part_done(out: Path, shard_name: str, sha256: str) -> bool:
    marker = _part_paths(out, shard_name)["marker"]
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("sha256") == sha256
    except json.JSONDecodeError:
        return False


def _save_part(out: Path, shard_name: str, sha256: str, part: Part) -> None:
    paths = _part_paths(out, shard_name)
    write_parquet_atomic(part.rows, paths["rows"], row_group_size=4096)
    _write_npy(paths["image"], part.image)
    _write_npy(paths["text"], part.text)
    atomic_write_json(
        paths["marker"],
        {"shard": shard_name, "sha256": sha256, "rows": part.rows.num_rows, "rejects": part.rejects},
    )


# --- the whole index --------------------------------------------------------------------------------


def read_index_meta(index_dir: Path | str) -> dict:
    index_dir = Path(index_dir)
    path = index_dir / "index.json"
    if not path.is_file():
        raise SearchIndexError(
            f"{index_dir} is not a search index (no index.json): build one with "
            "`python -m apps.search index DATASET --out DIR`"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != INDEX_FORMAT:
        raise SearchIndexError(f"{path}: format {meta.get('format')!r}, this code reads {INDEX_FORMAT}")
    return meta


def build_index(
    dataset: Path | str, out_dir: Path | str, clip, settings: IndexSettings = IndexSettings()
) -> IndexReport:
    """Embed every trusted shard of `dataset` not embedded yet, then write the index files (module doc)."""
    dataset, out = Path(dataset), Path(out_dir)
    shard_paths = trusted_shards(dataset, verify=False)  # a ShardError (UserError) names what is wrong
    if not shard_paths:
        raise SearchIndexError(f"{dataset}: the manifest lists no shards; nothing to index")
    manifest = load_manifest(dataset)
    if (out / "index.json").is_file():
        previous = read_index_meta(out)
        if previous["clip"] is None:
            raise SearchIndexError(f"{out} holds an index without a CLIP: index into a new --out")
        check_same_clip(out, previous["clip"], clip)  # parts embedded by another CLIP are not comparable
    todo = [p for p in shard_paths if not _part_done(out, p.name, manifest.shards[p.name].sha256)]
    reused = [p.name for p in shard_paths if p not in todo]
    total = sum(manifest.shards[p.name].rows for p in todo)
    with tqdm(total=total, desc="embedding", unit=" pair", disable=not settings.progress or not todo) as bar:
        for path in todo:
            part = embed_shard(clip, path, settings.batch_size, advance=bar.update)
            _save_part(out, path.name, manifest.shards[path.name].sha256, part)

    parts = [_part_paths(out, p.name) for p in shard_paths]
    rows = pa.concat_tables([pq.read_table(p["rows"]) for p in parts])
    rejects = [
        r | {"shard": p["marker"].stem} for p in parts for r in json.loads(p["marker"].read_text())["rejects"]
    ]
    image = np.concatenate([np.load(p["image"]) for p in parts])
    text = np.concatenate([np.load(p["text"]) for p in parts])
    radius = manifest.config.get("dedup_radius", settings.dedup_radius)
    meta = write_index_files(
        out,
        rows,
        {"image": image, "text": text},
        clip=clip_record(clip),
        dataset={
            "path": str(dataset.resolve()),
            "shards": [p.name for p in shard_paths],
            "rows": manifest.num_rows,
        },
        rejects=rejects,
        settings=settings,
        dedup_radius=radius,
    )
    return IndexReport(
        out,
        meta["count"],
        [p.name for p in todo],
        reused,
        len(rejects),
        meta["duplicate_groups"],
        {m: meta["faiss"][m]["type"] for m in MODALITIES},
        meta["bytes"],
        meta["faiss"],
    )


def near_duplicate_group_ids(rows: pa.Table, jpgs: list[bytes] | None, radius: int) -> np.ndarray:
    """Per row, the smallest row id of its near-duplicate group (its own id when it has no copy).

    Groups are curation's (`curation.dedup.duplicate_groups`): same sha256, or pHash within
    `radius` with matching colours, confirmed on the pixels when the pictures are at hand.
    """
    n = rows.num_rows
    group = np.arange(n, dtype=np.int64)
    if n < 2 or "phash" not in rows.column_names or rows["phash"].null_count == n:
        return group
    verify = None
    if jpgs is not None:

        def verify(pairs: list[tuple[int, int]]) -> list[bool]:
            thumbs = {i: thumbnail(jpgs[i]) for pair in pairs for i in pair}
            return same_pictures(thumbs, pairs)

    colours = rows["colour"].to_pylist() if "colour" in rows.column_names else None
    for members in duplicate_groups(
        rows["sha256"].to_pylist(), rows["phash"].to_pylist(), radius, colours, verify
    ):
        group[members] = min(members)
    return group


def write_index_files(
    out: Path | str,
    rows: pa.Table,
    vectors: dict[str, np.ndarray],
    clip: dict | None,
    dataset: dict | None = None,
    rejects: Iterable[dict] = (),
    settings: IndexSettings = IndexSettings(),
    dedup_radius: int = DEFAULT_DEDUP_RADIUS,
) -> dict:
    """Write metadata, pictures, embeddings and faiss indexes for `rows` (id = row number); index.json last.

    `rows` has PART_SCHEMA's columns (a missing column is written as nulls); `vectors` maps
    "image" and "text" to unit-length [n, dim] arrays. The benchmark calls this with synthetic
    vectors and no CLIP.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = rows.num_rows
    if not vectors or set(vectors) - set(MODALITIES):
        raise ValueError(f"vectors: a dict with keys among {MODALITIES}, got {sorted(vectors)}")
    for name, array in vectors.items():
        if array.shape[0] != n:
            raise ValueError(f"{name} vectors: {array.shape[0]} rows for {n} metadata rows")
    dim = next(iter(vectors.values())).shape[1]
    jpgs = rows["jpg"].to_pylist() if "jpg" in rows.column_names else None
    group = near_duplicate_group_ids(rows, jpgs, dedup_radius)

    columns = {"id": pa.array(np.arange(n, dtype=np.int64))}
    for name in METADATA_COLUMNS:
        columns[name] = rows[name] if name in rows.column_names else pa.nulls(n, PART_SCHEMA.field(name).type)
    columns["dup_group"] = pa.array(group)
    columns["dup_count"] = pa.array(np.bincount(group, minlength=n)[group].astype(np.int64))
    write_parquet_atomic(pa.table(columns), out / "metadata.parquet", row_group_size=65_536)

    sizes = (
        np.array([len(j or b"") for j in jpgs], dtype=np.int64) if jpgs is not None else np.zeros(n, np.int64)
    )
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    with atomic_path(out / "images.bin") as tmp, open(tmp, "wb") as handle:
        for jpg in jpgs or []:
            handle.write(jpg or b"")
    with atomic_path(out / "image_offsets.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, offsets)

    budget = settings.max_memory // len(vectors)
    faiss_meta = {}
    for name in MODALITIES:
        if name not in vectors:
            continue
        _write_npy(out / f"{name}.npy", vectors[name])
        kind = settings.index_type or choose_index_type(n, dim, budget)
        if n == 0:
            kind = "Flat"
        index = build_faiss(vectors[name], kind)
        entry = {"type": kind, "nprobe": 1, "recall_at_10": 1.0}
        if kind != "Flat" and n > 0:
            nprobe, reached = tune_nprobe(
                index, vectors[name], tuning_queries(vectors, name), settings.target_recall
            )
            entry = {"type": kind, "nprobe": nprobe, "recall_at_10": round(reached, 4)}
        entry["target_recall"] = settings.target_recall
        with atomic_path(out / f"{name}.faiss") as tmp:
            faiss.write_index(index, str(tmp))
        faiss_meta[name] = entry
    atomic_write_json(out / "rejects.json", list(rejects))
    used = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    meta = {
        "format": INDEX_FORMAT,
        "clip": clip,
        "dataset": dataset,
        "count": n,
        "dim": dim,
        "faiss": faiss_meta,
        "dedup_radius": dedup_radius,
        "duplicate_groups": int((np.bincount(group, minlength=n) > 1).sum()) if n else 0,
        "settings": {k: v for k, v in asdict(settings).items() if k != "progress"},
        "bytes": used,
    }
    atomic_write_json(out / "index.json", meta)
    return meta
