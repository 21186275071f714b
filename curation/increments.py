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

`dedup_against_dataset` is the one seam between a build and the near-duplicate search: it takes
the new pairs and the pairs already in the dataset and says which new ones to drop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.atomic import atomic_path
from curation.dedup import DedupDecision, PairVerifier, copy_quality, duplicate_groups
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

    Today: curation.dedup's search over old + new at once (its cost grows with the whole dataset).
    The persisted index (`NearDupIndex.open(dataset_dir).query_and_add(...)`) replaces this body.
    """
    keys = old.keys + new.keys
    n_old = len(old)
    sha = old.sha256 + new.sha256
    phash = old.phash + new.phash
    captions = old.captions + new.captions
    sources = old.text_sources + new.text_sources
    pixels = old.pixels + new.pixels
    groups = duplicate_groups(sha, phash, radius, old.colours + new.colours, verify)
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
                reason = f"near_duplicate: of key {keys[best]}{where} (phash distance {distance})"
            decisions[keys[i]] = DedupDecision(keys[best], reason)
    return decisions
