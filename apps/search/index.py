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
- `index.json` last: format, CLIP, dataset, parts in order, faiss kinds and nprobe.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
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
from curation.dedup import duplicate_groups, same_picture
from curation.shards import load_manifest, trusted_shards, write_parquet_atomic

INDEX_FORMAT = "clip-search-index/1"
MODALITIES = ("image", "text")
FLAT_LIMIT = (
    20_000  # exact search below this many vectors: 10k x 512 takes about 5-15 ms per query on a busy core
)
DEFAULT_MAX_MEMORY = 4 << 30
REFINE_K_FACTOR = 8  # candidates per wanted result re-ranked exactly (k_factor of faiss's IndexRefine)
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
    """About sqrt(n) lists, a power of two: faiss suggests 4-16 sqrt(n), but k-means over that many
    lists takes minutes at a million vectors on 2 cores; more probes make up the recall (bench/search.py)."""
    return int(2 ** round(math.log2(max(16, math.sqrt(n)))))


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
    """Lists scanned per query: enough for recall@10 >= 0.95 on clustered data (bench/search.py)."""
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
            return [same_picture(jpgs[i], jpgs[j]) for i, j in pairs]

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
        with atomic_path(out / f"{name}.faiss") as tmp:
            faiss.write_index(index, str(tmp))
        faiss_meta[name] = {"type": kind, "nprobe": default_nprobe(kind)}
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
