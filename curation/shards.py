"""Parquet shards and the manifest that says which of them to trust.

A dataset directory::

    DIR/shards/*.parquet    kept pairs (RECORD_SCHEMA)
    DIR/rejects/*.parquet   dropped pairs (REJECT_SCHEMA: + reject_stage, reject_reason)
    DIR/manifest.json       schema version, config, per-shard rows + sha256, per-filter counts

Every file is written to a temporary name, fsynced and renamed; the manifest entry is added
afterwards, under a lock. A shard on disk that the manifest does not list is not trusted:
readers ignore it and writers overwrite it, so a killed writer never leaves a half-written
shard that anybody reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.atomic import atomic_path, atomic_write_json, file_lock, file_sha256
from common.errors import UserError
from curation import versions
from curation.schema import (
    RECORD_SCHEMA,
    REJECT_SCHEMA,
    SCHEMA_VERSION,
    TRAINING_COLUMNS,
    SchemaError,
    conform,
    schema_version_of,
    validate,
    with_version,
)

SHARDS = "shards"
REJECTS = "rejects"
KINDS = (SHARDS, REJECTS)
MANIFEST = "manifest.json"
DEFAULT_ROW_GROUP_SIZE = 512  # about 5-30 MB of JPEGs at training sizes: a good unit for loader workers


class ShardError(UserError, RuntimeError):
    """A shard or manifest is missing, truncated or does not match its checksum."""


@dataclass
class ShardEntry:
    rows: int
    sha256: str
    bytes: int


@dataclass
class Manifest:
    schema_version: str = SCHEMA_VERSION
    shards: dict[str, ShardEntry] = field(default_factory=dict)
    rejects: dict[str, ShardEntry] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    updated: float = 0.0

    def entries(self, kind: str) -> dict[str, ShardEntry]:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return self.shards if kind == SHARDS else self.rejects

    @property
    def num_rows(self) -> int:
        return sum(e.rows for e in self.shards.values())

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, source: str) -> Manifest:
        try:
            return cls(
                schema_version=data["schema_version"],
                shards={k: ShardEntry(**v) for k, v in data.get("shards", {}).items()},
                rejects={k: ShardEntry(**v) for k, v in data.get("rejects", {}).items()},
                config=data.get("config", {}),
                counts=data.get("counts", {}),
                extra=data.get("extra", {}),
                updated=data.get("updated", 0.0),
            )
        except (KeyError, TypeError) as exc:
            raise ShardError(
                f"{source}: not a valid manifest ({exc}); delete it to rebuild the dataset"
            ) from exc


# --- manifest -----------------------------------------------------------------------------------


@contextlib.contextmanager
def manifest_lock(root: Path | str) -> Iterator[None]:
    """An exclusive lock for read-modify-write of the manifest, across threads and processes."""
    with file_lock(Path(root) / ".manifest.lock"):
        yield


def load_manifest(root: Path | str) -> Manifest:
    """The dataset's manifest; an empty one when there is none yet."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return Manifest()
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path}: manifest is not valid JSON ({exc}); delete it to rebuild") from exc
    return Manifest.from_json(data, str(path))


def save_manifest(root: Path | str, manifest: Manifest) -> None:
    manifest.updated = time.time()
    atomic_write_json(Path(root) / MANIFEST, manifest.to_json())


def update_manifest(root: Path | str, **fields) -> Manifest:
    """Set top-level manifest fields (config, counts, extra, ...) atomically, under the lock."""
    with manifest_lock(root):
        manifest = load_manifest(root)
        for name, value in fields.items():
            if not hasattr(manifest, name) or name in KINDS:
                raise ValueError(f"manifest has no settable field {name!r}")
            setattr(manifest, name, value)
        save_manifest(root, manifest)
        return manifest


def manifest_checksum(root: Path | str, version: int | None = None) -> str:
    """One sha256 over the trusted shards' checksums (of `version`): identifies the data a model was trained on."""
    manifest = load_manifest(root)
    names = sorted(manifest.shards)
    if version is not None or versions.has_versions(root):
        names = sorted(Path(f).name for f in versions.resolve(root, version).files)
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}:{manifest.shards[name].sha256}\n".encode())
    return digest.hexdigest()


# --- writing ------------------------------------------------------------------------------------


def shard_path(root: Path | str, name: str, kind: str = SHARDS) -> Path:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not name.endswith(".parquet"):
        name += ".parquet"
    if "/" in name or name.startswith("."):
        raise ValueError(f"shard name {name!r} must be a plain file name")
    return Path(root) / kind / name


def write_parquet_atomic(
    table: pa.Table, path: Path | str, row_group_size: int = DEFAULT_ROW_GROUP_SIZE
) -> None:
    """zstd Parquet with the schema version in its metadata, written atomically."""
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), **with_version(pa.schema([])).metadata}
    )
    with atomic_path(path) as tmp:
        pq.write_table(
            table, tmp, compression="zstd", row_group_size=max(1, row_group_size), write_statistics=True
        )


def write_shard(
    root: Path | str,
    name: str,
    table: pa.Table,
    kind: str = SHARDS,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
) -> ShardEntry:
    """Write one shard atomically and record it in the manifest (the manifest last)."""
    path = shard_path(root, name, kind)
    table = conform(table, REJECT_SCHEMA if kind == REJECTS else RECORD_SCHEMA, source=str(path))
    write_parquet_atomic(table, path, row_group_size)
    entry = ShardEntry(rows=table.num_rows, sha256=file_sha256(path), bytes=path.stat().st_size)
    with manifest_lock(root):
        manifest = load_manifest(root)
        manifest.entries(kind)[path.name] = entry
        save_manifest(root, manifest)
    return entry


def has_shard(root: Path | str, name: str, kind: str = SHARDS) -> bool:
    """True when the manifest lists the shard and the file on disk has the recorded size."""
    path = shard_path(root, name, kind)
    entry = load_manifest(root).entries(kind).get(path.name)
    return entry is not None and path.exists() and path.stat().st_size == entry.bytes


def untrusted_files(root: Path | str) -> list[Path]:
    """Files in shards/ and rejects/ that the manifest does not vouch for (leftovers of a killed run)."""
    root = Path(root)
    manifest = load_manifest(root)
    found = []
    for kind in KINDS:
        folder = root / kind
        if not folder.is_dir():
            continue
        listed = manifest.entries(kind)
        for path in sorted(folder.iterdir()):
            if path.name not in listed:
                found.append(path)
    return found


def remove_untrusted(root: Path | str) -> list[Path]:
    """Delete what a killed writer left behind; returns what was removed."""
    removed = untrusted_files(root)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


# --- reading ------------------------------------------------------------------------------------


def trusted_shards(
    root: Path | str, kind: str = SHARDS, verify: bool = True, version: int | None = None
) -> list[Path]:
    """Paths of the shards the manifest lists, checked against their size (and sha256 when `verify`).

    In a dataset with a version log (curation/versions.py) kept shards are those of `version`
    (None: the latest); a shard the manifest lists but no version holds yet is not read.
    """
    root = Path(root)
    if not root.is_dir():
        raise ShardError(f"{root}: dataset directory does not exist")
    if not (root / MANIFEST).exists():
        raise ShardError(
            f"{root}: no {MANIFEST}; this is not a finished dataset (build one with `python -m curation build`)"
        )
    manifest = load_manifest(root)
    entries = manifest.entries(kind)
    if kind == SHARDS and (version is not None or versions.has_versions(root)):
        chosen = versions.resolve(root, version)
        names = [Path(f).name for f in chosen.files]
        unlisted = [n for n in names if n not in entries]
        if unlisted:
            raise ShardError(
                f"{root}: version {chosen.version} holds {unlisted[0]}, which {MANIFEST} does not list; "
                "the manifest was replaced or edited: restore it or rebuild the dataset"
            )
        entries = {n: entries[n] for n in names}
    paths = []
    for name, entry in sorted(entries.items()):
        path = shard_path(root, name, kind)
        if not path.exists():
            raise ShardError(f"{path}: listed in the manifest but missing; rerun the build to rewrite it")
        size = path.stat().st_size
        if size != entry.bytes or (verify and file_sha256(path) != entry.sha256):
            raise ShardError(
                f"{path}: checksum does not match the manifest (file changed or truncated); "
                "rerun the build to rewrite it"
            )
        paths.append(path)
    return paths


def _resolve(
    source: Path | str | Sequence[Path | str], kind: str, verify: bool, version: int | None = None
) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return trusted_shards(path, kind, verify=verify, version=version)
        return [path]
    return [Path(p) for p in source]


def open_shard(path: Path | str, required: Iterable[str] = TRAINING_COLUMNS) -> pq.ParquetFile:
    """Open a Parquet shard with errors that name the file: missing, truncated, wrong columns."""
    path = Path(path)
    if not path.exists():
        raise ShardError(f"{path}: no such shard")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardError(
            f"{path}: not a readable Parquet file ({exc}); truncated or corrupt, rewrite it"
        ) from exc
    schema = pf.schema_arrow
    version = schema_version_of(schema)
    if version is not None and version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ShardError(f"{path}: schema version {version}, this code reads {SCHEMA_VERSION}")
    validate(schema, str(path), required=required, schema=REJECT_SCHEMA)
    return pf


@dataclass(frozen=True)
class RowGroupRef:
    path: Path
    index: int
    num_rows: int


def row_groups(
    source: Path | str | Sequence[Path | str],
    kind: str = SHARDS,
    required: Iterable[str] = TRAINING_COLUMNS,
    verify: bool = True,
    version: int | None = None,
) -> list[RowGroupRef]:
    """Every row group of every trusted shard (of `version`): the unit that loaders split across ranks and workers."""
    refs = []
    for path in _resolve(source, kind, verify, version):
        pf = open_shard(path, required)
        for i in range(pf.num_row_groups):
            refs.append(RowGroupRef(path, i, pf.metadata.row_group(i).num_rows))
    return refs


def read_row_group(ref: RowGroupRef, columns: Sequence[str] | None = None) -> pa.Table:
    try:
        return pq.ParquetFile(ref.path).read_row_group(ref.index, columns=list(columns) if columns else None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardError(f"{ref.path}: row group {ref.index} is unreadable ({exc})") from exc


def read_rows_by_key(path: Path | str, keys: Iterable[str], columns: Sequence[str]) -> pa.Table:
    """The rows of one shard whose `key` is in `keys`, reading only the row groups whose key range
    (Parquet statistics) holds one of them: a dedup candidate costs one row group, not the shard.

    Columns the shard lacks are left out (the caller fills them)."""
    import pyarrow.compute as pc

    wanted = sorted(set(keys))
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if "key" not in names:
            raise ShardError(f"{path} has no `key` column: not a shard written by curation")
        present = [c for c in dict.fromkeys(["key", *columns]) if c in names]
        leaf = pf.metadata.schema
        key_index = next(i for i in range(len(leaf)) if leaf.column(i).path == "key")
        parts = []
        for group in range(pf.num_row_groups):
            stats = pf.metadata.row_group(group).column(key_index).statistics
            if stats is not None and stats.has_min_max:
                if not any(stats.min <= k <= stats.max for k in wanted):
                    continue
            table = pf.read_row_group(group, columns=present)
            parts.append(table.filter(pc.is_in(table["key"], value_set=pa.array(wanted, pa.string()))))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardError(
            f"{path}: unreadable ({exc}); the shard is damaged: restore it or rebuild the dataset"
        ) from exc
    if not parts:
        return pf.schema_arrow.empty_table().select(present)
    return pa.concat_tables(parts)


def iter_batches(
    source: Path | str | Sequence[Path | str],
    columns: Sequence[str] | None = None,
    batch_size: int = 1024,
    kind: str = SHARDS,
    verify: bool = True,
    version: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream record batches with column projection; memory stays at one batch."""
    required = [c for c in (columns or ()) if c in REJECT_SCHEMA.names]
    for path in _resolve(source, kind, verify, version):
        pf = open_shard(path, required=required)
        try:
            yield from pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ShardError(f"{path}: unreadable while streaming ({exc})") from exc


def iter_rows(
    source: Path | str | Sequence[Path | str],
    columns: Sequence[str] | None = None,
    kind: str = SHARDS,
    verify: bool = True,
    version: int | None = None,
) -> Iterator[dict]:
    for batch in iter_batches(source, columns, kind=kind, verify=verify, version=version):
        yield from batch.to_pylist()


def read_table(
    source: Path | str | Sequence[Path | str],
    columns: Sequence[str] | None = None,
    kind: str = SHARDS,
    verify: bool = True,
    version: int | None = None,
) -> pa.Table:
    """All rows of the trusted shards (of `version`) as one table (for small datasets and tests)."""
    batches = list(iter_batches(source, columns, kind=kind, verify=verify, version=version))
    if batches:
        # Shards may carry different extra columns (rejects of different stages): unify, nulls where absent.
        tables = [pa.Table.from_batches([b]) for b in batches]
        return pa.concat_tables(tables, promote_options="permissive")
    schema = REJECT_SCHEMA if kind == REJECTS else RECORD_SCHEMA
    if columns:
        schema = pa.schema([schema.field(c) for c in columns if c in schema.names])
    return schema.empty_table()


__all__ = [
    "KINDS",
    "MANIFEST",
    "REJECTS",
    "SHARDS",
    "Manifest",
    "RowGroupRef",
    "SchemaError",
    "ShardEntry",
    "ShardError",
    "has_shard",
    "iter_batches",
    "iter_rows",
    "load_manifest",
    "manifest_checksum",
    "manifest_lock",
    "open_shard",
    "read_row_group",
    "read_rows_by_key",
    "read_table",
    "remove_untrusted",
    "row_groups",
    "save_manifest",
    "shard_path",
    "trusted_shards",
    "untrusted_files",
    "update_manifest",
    "write_parquet_atomic",
    "write_shard",
]
