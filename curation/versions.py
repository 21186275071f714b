"""Dataset versions: a Delta Lake log (the `deltalake` package) over the dataset's own Parquet shards.

    DIR/_delta_log/00000000000000000000.json    version 0: the first build's shards
    DIR/_delta_log/00000000000000000001.json    version 1: + the shards a rerun added

The shards stay where `curation.shards` writes them (`shards/*.parquet`, plain Parquet with
img2dataset's columns, per-shard sha256 in manifest.json); a version only lists which of them it
holds. A build writes its new shards atomically, records them in the manifest, then commits them
here in one Delta transaction: that commit is the moment a version exists. A killed build leaves
no version behind, and every earlier version stays readable (time travel), also by DuckDB
(`delta_scan('DIR')`), Polars (`pl.scan_delta('DIR', version=N)`) and Spark
(`spark.read.format("delta").option("versionAsOf", N)`). Versions are Delta's numbers: 0, 1, 2...
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from common.errors import UserError

DELTA_LOG = "_delta_log"
COMMIT_KEY = "clip_workbench"  # our entry in each commit's commitInfo: what the build added


class VersionError(UserError, LookupError):
    """The dataset has no such version, or no version log at all."""


@dataclass(frozen=True)
class DatasetVersion:
    version: int
    files: tuple[str, ...]  # paths relative to the dataset directory, e.g. "shards/v00001-part-00000.parquet"
    info: dict  # what the build that committed it recorded (added pairs, sources, counts)


def has_versions(root: Path | str) -> bool:
    return (Path(root) / DELTA_LOG).is_dir()


def _table(root: Path | str, version: int | None = None):
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    try:
        return DeltaTable(str(root), version=version)
    except TableNotFoundError as exc:
        raise VersionError(
            f"{root}: no dataset version log ({DELTA_LOG}/); build it with `python -m curation build`"
        ) from exc
    except (DeltaError, OSError, ValueError) as exc:
        latest = latest_version(root) if version is not None else None
        raise VersionError(
            f"{root}: cannot open version {version} ({exc}); the dataset has versions 0-{latest}"
            if latest is not None
            else f"{root}: cannot open the version log ({exc})"
        ) from exc


def latest_version(root: Path | str) -> int | None:
    """The newest committed version, or None when the dataset has no version log."""
    if not has_versions(root):
        return None
    from deltalake import DeltaTable

    return int(DeltaTable(str(root)).version())


def _relative(root: Path, uri: str) -> str:
    path = Path(uri.removeprefix("file://"))
    return path.relative_to(root.resolve()).as_posix() if path.is_absolute() else path.as_posix()


def resolve(root: Path | str, version: int | None = None) -> DatasetVersion:
    """The files of `version` (None: the latest), with a one-line error for a version that does not exist."""
    root = Path(root)
    latest = latest_version(root)
    if latest is None:
        raise VersionError(
            f"{root}: dataset has no versions ({DELTA_LOG}/ missing); it was written without a version "
            "log, so drop --data-version or rebuild it with `python -m curation build`"
        )
    if version is not None and not 0 <= version <= latest:
        raise VersionError(f"{root}: no version {version}; the dataset has versions 0-{latest}")
    table = _table(root, version)
    files = tuple(sorted(_relative(root, uri) for uri in table.file_uris()))
    return DatasetVersion(int(table.version()), files, _commit_info(root, int(table.version())))


def _commit_info(root: Path, version: int) -> dict:
    path = root / DELTA_LOG / f"{version:020d}.json"
    try:
        for line in path.read_text().splitlines():
            action = json.loads(line)
            if "commitInfo" in action:
                return json.loads(action["commitInfo"].get(COMMIT_KEY, "{}"))
    except (OSError, json.JSONDecodeError):
        pass
    return {}


def history(root: Path | str) -> list[dict]:
    """Every version, oldest first: {"version", "timestamp", **what its build recorded}."""
    root = Path(root)
    if not has_versions(root):
        return []
    entries = []
    for item in _table(root).history():
        entries.append(
            {
                "version": int(item["version"]),
                "timestamp": item.get("timestamp"),
                **_commit_info(root, int(item["version"])),
            }
        )
    return sorted(entries, key=lambda e: e["version"])


def commit(root: Path | str, files: list[str], info: dict) -> int:
    """Add `files` (written and checksummed already, relative to `root`) as one new version; returns it."""
    from deltalake import DeltaTable, Schema
    from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

    root = Path(root)
    if not files:
        raise ValueError("a version needs at least one new shard")
    actions = []
    for name in files:
        path = root / name
        meta = pq.read_metadata(path)
        stat = os.stat(path)
        stats = json.dumps({"numRecords": meta.num_rows})
        actions.append(AddAction(name, stat.st_size, {}, int(stat.st_mtime * 1000), True, stats))
    arrow_schema = pq.read_schema(root / files[0]).remove_metadata()
    schema = Schema.from_arrow(arrow_schema)
    properties = CommitProperties(custom_metadata={COMMIT_KEY: json.dumps(info, default=str)})
    if has_versions(root):
        DeltaTable(str(root)).create_write_transaction(
            actions, mode="append", schema=schema, commit_properties=properties
        )
    else:
        create_table_with_add_actions(
            str(root), schema, actions, mode="error", name=root.name, commit_properties=properties
        )
    return int(latest_version(root))  # type: ignore[arg-type]
