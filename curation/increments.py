"""What a rerun over a grown source must know about earlier runs: which rows it read and which URLs it claimed.

Every increment (one `curation build` run that found something new) leaves
`DIR/seen/increment-NNNNN.parquet`: one row per source row it read, kept or rejected, with

    row   uint64  digest of the row's content (URL, texts, page): the same row read again is skipped
    url   uint64  digest of the image URL the row claimed (null when rejected before claiming one)
    key   string  the key it was given

so the next increment reads only rows it has not seen, never hands an already-claimed URL to the
downloader again (a new row with an old URL is a `duplicate_url` reject, as within one build),
and gives keys that continue after the last one. In memory: about 70 bytes per row read so far
(two Python ints and a key), 1 M rows = ~70 MB; the rows themselves are never held.

Dedup against the dataset goes through the persisted near-duplicate index (curation/neardup.py,
DIR/index/neardup): `open_dataset_index` opens it as of the last version an earlier increment
committed (repairing a missing tail from the Delta log), `dataset_candidates` queries it with the
new rows' pHash and aHash and names the old rows near them, and `dedup_against_dataset` decides
with the new pairs and those candidates only (their pixels are read from their own shards). The
rows an increment keeps join the index by `record_version`, called only after the version commits:

    crash before the commit        the index holds the earlier versions only (never ahead of the log)
    crash after it, before save    the resumed run saves the segment (it finds its commit); a dataset
                                   whose index lags anyway (built before the index existed, or the
                                   index deleted) gets the missing versions' hashes from their shards
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.atomic import atomic_path
from curation import versions
from curation.dedup import AHASH_RADIUS, DedupDecision, PairVerifier, copy_quality, duplicate_groups
from curation.neardup import NearDupIndex, NearDupIndexError
from curation.schema import WIT_TEXT_COLUMNS

SEEN_DIR = "seen"
SEEN_SCHEMA = pa.schema([("row", pa.uint64()), ("url", pa.uint64()), ("key", pa.string())])
# What makes two source rows the same row: its image, its texts and its page (and a bad line's text).
_IDENTITY = ("url", "caption", "text_source", *WIT_TEXT_COLUMNS, "error_message")


def row_digest(record: dict) -> int:
    text = "\x1f".join(str(record.get(name) or "") for name in _IDENTITY)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def url_digest(url: str) -> int:
    return int.from_bytes(hashlib.blake2b(url.encode(), digest_size=8).digest(), "little")


def seen_path(root: Path | str, increment: int) -> Path:
    return Path(root) / SEEN_DIR / f"increment-{increment:05d}.parquet"


@dataclass
class SeenIndex:
    """Rows read and URLs claimed by the dataset's finished increments."""

    rows: set[int] = field(default_factory=set)
    urls: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path | str, increments: int) -> SeenIndex:
        index = cls()
        for i in range(increments):
            path = seen_path(root, i)
            if not path.exists():
                continue
            for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
                index.rows.update(batch.column("row").to_pylist())
                for url, key in zip(batch.column("url").to_pylist(), batch.column("key").to_pylist()):
                    if url is not None:
                        index.urls.setdefault(url, key)
        return index


class SeenWriter:
    """Streams this increment's (row, url, key) triples to a Parquet file, a batch at a time."""

    def __init__(self, path: Path, batch_rows: int = 65_536) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.batch_rows = batch_rows
        self._writer = pq.ParquetWriter(path, SEEN_SCHEMA, compression="zstd")
        self._rows: list[int] = []
        self._urls: list[int | None] = []
        self._keys: list[str] = []

    def add(self, row: int, url: int | None, key: str) -> None:
        self._rows.append(row)
        self._urls.append(url)
        self._keys.append(key)
        if len(self._rows) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(
                pa.table(
                    [
                        pa.array(self._rows, pa.uint64()),
                        pa.array(self._urls, pa.uint64()),
                        pa.array(self._keys, pa.string()),
                    ],
                    schema=SEEN_SCHEMA,
                )  # fmt: skip
            )
        self._rows, self._urls, self._keys = [], [], []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def publish_seen(root: Path | str, increment: int, work_file: Path) -> Path:
    """Copy the increment's seen file into the dataset (atomically) when the increment commits."""
    target = seen_path(root, increment)
    with atomic_path(target) as tmp:
        tmp.write_bytes(work_file.read_bytes())
    return target


# --- the dedup seam -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairColumns:
    """The small columns of some pairs that dedup looks at (no pixels)."""

    keys: list[str]
    sha256: list[str | None]
    phash: list[str | None]
    captions: list[str | None]
    text_sources: list[str | None]
    pixels: list[int]
    colours: list[str | None]
    ahashes: list[str | None] | None = None  # second candidate hash (#15); None: pHash only

    @classmethod
    def from_table(cls, table: pa.Table) -> PairColumns:
        columns = {name: table[name].to_pylist() for name in table.column_names}
        return cls(
            keys=columns["key"],
            sha256=columns["sha256"],
            phash=columns["phash"],
            captions=columns["caption"],
            text_sources=columns["text_source"],
            pixels=[
                (w or 0) * (h or 0) for w, h in zip(columns["original_width"], columns["original_height"])
            ],
            colours=columns.get("colour_signature") or [None] * table.num_rows,
            ahashes=columns.get("ahash") or [None] * table.num_rows,
        )

    def __len__(self) -> int:
        return len(self.keys)


def dedup_against_dataset(
    new: PairColumns,
    old: PairColumns,
    radius: int,
    policy: Sequence[str],
    verify: PairVerifier | None = None,
) -> dict[str, DedupDecision]:
    """Which new pairs to drop: exact or near duplicates of a pair already in the dataset, or of a
    better new pair. Pairs already in the dataset are never dropped (their versions are committed).

    `old`: the dataset's pairs that can matter, i.e. the index's candidates for the new rows
    (`dataset_candidates`), not the whole dataset. Committed pairs never confirm each other (each
    increment dropped such pairs), so the groups are those a search over every pair would find.
    """
    keys = old.keys + new.keys
    n_old = len(old)
    sha = old.sha256 + new.sha256
    phash = old.phash + new.phash
    captions = old.captions + new.captions
    sources = old.text_sources + new.text_sources
    pixels = old.pixels + new.pixels
    ahash = (old.ahashes or [None] * n_old) + (new.ahashes or [None] * len(new))
    groups = duplicate_groups(sha, phash, radius, old.colours + new.colours, verify, ahash)
    decisions: dict[str, DedupDecision] = {}
    for group in groups:
        committed = [i for i in group if i < n_old]
        candidates = committed or group
        best = max(
            candidates,
            key=lambda i: (
                copy_quality(captions[i], sources[i], pixels[i], policy),
                tuple(-ord(c) for c in keys[i]),
            ),
        )
        for i in group:
            if i < n_old or i == best:
                continue
            where = " (already in the dataset)" if best < n_old else ""
            if sha[i] and sha[i] == sha[best]:
                reason = f"exact_duplicate: same sha256 as key {keys[best]}{where}"
            else:
                distance = (
                    bin(int(phash[i], 16) ^ int(phash[best], 16)).count("1")
                    if phash[i] and phash[best]
                    else "?"
                )
                if ahash[i] and ahash[best]:
                    distance = f"{distance}, ahash distance {bin(int(ahash[i], 16) ^ int(ahash[best], 16)).count('1')}"
                reason = f"near_duplicate: of key {keys[best]}{where} (phash distance {distance})"
            decisions[keys[i]] = DedupDecision(keys[best], reason)
    return decisions


# --- the persisted index ------------------------------------------------------------------------------


def index_radii(phash_radius: int) -> dict[str, int]:
    """The hash kinds and radii of a dataset's near-duplicate index (the build's `dedup_radius`)."""
    return {"phash": phash_radius, "ahash": AHASH_RADIUS}


def _earlier_version(root: Path | str, increment: int) -> int:
    """The newest version committed by an increment before `increment` (-1: none)."""
    earlier = [e["version"] for e in versions.history(root) if e.get("increment", -1) < increment]
    return max(earlier, default=-1)


def _added_files(root: Path | str, version: int) -> list[str]:
    files = set(versions.resolve(root, version).files)
    if version > 0:
        files -= set(versions.resolve(root, version - 1).files)
    return sorted(files)


def _index_version(index: NearDupIndex, root: Path | str, version: int) -> None:
    """Add the rows `version` added to the dataset, read from its shards (hash columns only), and save."""
    import pyarrow.parquet as pq

    for name in _added_files(root, version):
        present = pq.read_schema(Path(root) / name).names
        table = pq.read_table(
            Path(root) / name, columns=[c for c in ("key", "phash", "ahash") if c in present]
        )
        hashes = {kind: table[kind].to_pylist() for kind in index.radii if kind in table.column_names}
        index.add(hashes, table["key"].to_pylist(), locations=name)
    index.save(dataset_version=version)


def open_dataset_index(root: Path | str, radii: dict[str, int], increment: int) -> NearDupIndex:
    """The index of every pair committed before `increment`, ready to query.

    Segments of versions this increment committed itself (a resumed run) are left out; versions
    the index lacks are indexed from their shards' hash columns first (no pixels read).
    """
    base = _earlier_version(root, increment)
    index = NearDupIndex.open(root, radii, up_to_version=base)
    if index.has_untagged_segments:  # not written by a build: which versions it holds is unknown
        index.reset()
    for version in range(index.dataset_version + 1, base + 1):
        _index_version(index, root, version)
    return index


def dataset_candidates(index: NearDupIndex, new: PairColumns) -> dict[str, list[str]]:
    """Committed pairs whose pHash or aHash is within the radius of a new pair: {shard: keys}."""
    hashes = {"phash": new.phash, "ahash": new.ahashes}
    wanted: dict[str, set[str]] = {}
    for candidate in index.query({k: v for k, v in hashes.items() if k in index.radii}, len(new)):
        if candidate.other_location is None:
            raise NearDupIndexError(
                f"index row {candidate.other_key} has no shard recorded (an index written before shards "
                f"were): delete {index.root} and rerun the build to rebuild it from the versions"
            )
        wanted.setdefault(candidate.other_location, set()).add(candidate.other_key)
    return {location: sorted(keys) for location, keys in sorted(wanted.items())}


def record_version(
    root: Path | str, radii: dict[str, int], increment: int, version: int, kept: Sequence[pa.Table]
) -> None:
    """Add the pairs `version` committed to the index; call it after the commit, never before.

    `kept`: the version's shards' rows (key, phash, ahash and `location`, the shard's path).
    """
    base = _earlier_version(root, increment)
    index = NearDupIndex.open(root, radii, up_to_version=base, load_rows=False)
    if index.dataset_version != base or index.has_untagged_segments:  # index the missing versions first
        index = open_dataset_index(root, radii, increment)
    for table in kept:
        hashes = {kind: table[kind].to_pylist() for kind in radii if kind in table.column_names}
        index.add(hashes, table["key"].to_pylist(), locations=table["location"].to_pylist())
    index.save(dataset_version=version)
