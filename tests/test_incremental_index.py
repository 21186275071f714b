"""Increments dedup through the persisted near-duplicate index: old pixels are read only for the index's
candidates, and the index is never ahead of the dataset's version log (crash before / after the commit)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation import shards, versions
from curation.build import STAGED_SCHEMA, build_dataset, dedup_new_pairs
from curation.config import BuildConfig
from curation.dedup import image_signature
from curation.increments import (
    PairColumns,
    dedup_against_dataset,
    index_radii,
    open_dataset_index,
)
from curation.neardup import INDEX_DIR, NearDupIndex
from curation.schema import conform
from testbed.web import serve_testweb
from tests.test_incremental import FAST, GROWING, _expected_new, _kept

ROW_GROUP = 8  # small row groups, so "one row group per candidate" is far from "every row"


def signed(rows: list[dict]) -> list[dict]:
    for row in rows:
        row["phash"], row["colour_signature"], row["ahash"] = image_signature(row["jpg"])
        row["original_width"], row["original_height"] = row["width"], row["height"]
        row["text_source"] = "caption_reference_description"
    return rows


def reencoded(jpg: bytes, quality: int = 70) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpg)).convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def picture_rows(n: int, seed: int, start: int = 0) -> list[dict]:
    """Pairs whose pictures are smooth random colour fields: their hashes are spread like real photos'
    (the generated shapes share plain backgrounds, so their 8x8 average hashes crowd together)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(start, start + n):
        grid = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grid).resize((48, 48), Image.BICUBIC).save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
        rows.append(
            {
                "key": f"{i:09d}", "url": f"http://127.0.0.1/pictures/{i}.jpg", "caption": f"picture {i}",
                "status": "success", "width": 48, "height": 48, "sha256": hashlib.sha256(data).hexdigest(),
                "jpg": data,
            }
        )  # fmt: skip
    return rows


def committed_dataset(root: Path, n_shards: int = 3, per_shard: int = 64) -> list[dict]:
    """Version 0 of a dataset: pairs with their hashes in shards of small row groups, committed."""
    rows = signed(picture_rows(n_shards * per_shard, seed=4))
    # what a build keeps: no two committed pairs are duplicates of each other
    columns = PairColumns.from_table(conform(pa.Table.from_pylist(rows), STAGED_SCHEMA))
    empty = PairColumns.from_table(STAGED_SCHEMA.empty_table())
    drop = dedup_against_dataset(columns, empty, 8, ["caption_reference_description"])
    rows = [r for r in rows if r["key"] not in drop]
    files = []
    for i in range(n_shards):
        part = rows[i * per_shard : (i + 1) * per_shard]
        if part:
            name = f"i00000-part-{i:05d}"
            shards.write_shard(root, name, pa.Table.from_pylist(part), row_group_size=ROW_GROUP)
            files.append(f"shards/{name}.parquet")
    versions.commit(root, files, {"increment": 0, "added": len(rows)})
    return rows


def staged_increment(path: Path, old: list[dict]) -> tuple[Path, set[str]]:
    """New rows: fresh pictures, exact and re-encoded copies of old ones. Returns the copies' keys."""
    fresh = signed(picture_rows(24, seed=99, start=1000))
    copies = []
    for n, row in enumerate(old[5::37]):  # from every shard
        jpg = row["jpg"] if n % 2 else reencoded(row["jpg"])
        copies.append({**row, "key": f"{2000 + n:09d}", "url": f"http://127.0.0.1/copy/{n}.jpg", "jpg": jpg})
    copies = signed(copies)
    table = conform(pa.Table.from_pylist(fresh + copies), STAGED_SCHEMA)
    pq.write_table(table, path)
    return path, {r["key"] for r in copies}


class ShardReads:
    """Rows (and whether pixels) read from the dataset's committed shards, through pyarrow.parquet's
    whole-table and row-group reads (the streaming reader, iter_batches, is what the old full scan
    avoided too: it is not how dedup reads)."""

    def __init__(self, monkeypatch, shards_dir: Path) -> None:
        self.shards_dir = shards_dir.resolve()
        self.pixel_rows = 0
        self.rows = 0
        original_init = pq.ParquetFile.__init__

        def init(pf, source, *args, **kwargs):
            original_init(pf, source, *args, **kwargs)
            pf._source_path = source

        monkeypatch.setattr(pq.ParquetFile, "__init__", init)
        for name in ("read_row_group", "read", "read_row_groups"):
            self._wrap_method(monkeypatch, name)
        original = pq.read_table

        def read_table(source, *args, **kwargs):
            table = original(source, *args, **kwargs)
            self._count(source, kwargs.get("columns"), table.num_rows)
            return table

        monkeypatch.setattr(pq, "read_table", read_table)

    def _wrap_method(self, monkeypatch, name: str) -> None:
        original = getattr(pq.ParquetFile, name)
        reads = self

        def wrapper(pf, *args, **kwargs):
            result = original(pf, *args, **kwargs)
            reads._count(getattr(pf, "_source_path", None), kwargs.get("columns"), result.num_rows)
            return result

        monkeypatch.setattr(pq.ParquetFile, name, wrapper)

    def _count(self, source, columns, rows: int) -> None:
        if source is None or not isinstance(source, (str, Path)):
            return
        if Path(source).resolve().parent != self.shards_dir:
            return
        self.rows += rows
        if columns is None or "jpg" in columns:
            self.pixel_rows += rows


def test_increment_reads_old_pixels_only_for_the_index_candidates(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    old = committed_dataset(out)
    staged, copies = staged_increment(tmp_path / "staged.parquet", old)
    cfg = BuildConfig(out=out, source=["wit:unused.tsv"])

    # Today's answer, for comparison: every committed pair read and searched with the new ones.
    every_old = PairColumns.from_table(
        conform(shards.read_table(out, columns=None), STAGED_SCHEMA).select(
            ["key", "sha256", "phash", "colour_signature", "ahash", "caption", "text_source"]
            + ["original_width", "original_height"]
        )
    )
    new = PairColumns.from_table(pq.read_table(staged))
    pictures = {r["key"]: r["jpg"] for r in old} | dict(
        zip(pq.read_table(staged)["key"].to_pylist(), pq.read_table(staged)["jpg"].to_pylist())
    )
    keys = every_old.keys + new.keys

    def verify(pairs):
        from curation.dedup import same_picture

        return [same_picture(pictures[keys[i]], pictures[keys[j]]) for i, j in pairs]

    full_scan = dedup_against_dataset(new, every_old, cfg.dedup_radius, cfg.caption_policy, verify)

    open_dataset_index(out, index_radii(cfg.dedup_radius), increment=1)  # the first build writes it
    reads = ShardReads(monkeypatch, out / "shards")
    decisions = dedup_new_pairs(cfg, [staged], increment=1)

    assert set(decisions) == copies, decisions
    assert all("already in the dataset" in d.reason for d in decisions.values())
    assert decisions == full_scan  # same rows dropped, same kept keys, same reasons
    # Old pixels: at most one row group per candidate, far fewer than the dataset's rows.
    assert 0 < reads.pixel_rows <= len(copies) * ROW_GROUP < len(old) / 2, (reads.pixel_rows, len(old))
    assert reads.rows == reads.pixel_rows  # no other column of the old shards read either


def test_index_rebuilt_from_the_versions_when_missing_and_never_ahead(tmp_path):
    out = tmp_path / "ds"
    old = committed_dataset(out, n_shards=2, per_shard=20)
    radii = index_radii(8)
    built = open_dataset_index(out, radii, increment=1)  # no index yet: all of version 0 from its shards
    assert sorted(built.keys) == sorted(r["key"] for r in old) and built.dataset_version == 0
    assert {built.location(i) for i in range(len(built))} == {
        "shards/i00000-part-00000.parquet",
        "shards/i00000-part-00001.parquet",
    }
    # A segment of a version the log does not hold (a build killed between an index save and its
    # commit, if one ever saved first) is not trusted: left out, then dropped at the next save.
    ahead = NearDupIndex.open(out, radii)
    ahead.add({"phash": ["00000000000000ff"]}, ["ghost"], locations="shards/ghost.parquet")
    ahead.save(dataset_version=1)
    reopened = open_dataset_index(out, radii, increment=1)
    assert "ghost" not in reopened.keys and reopened.dataset_version == 0
    reopened.save(dataset_version=0)
    assert "ghost" not in NearDupIndex.open(out, radii).keys
    assert len(list((out / INDEX_DIR).glob("*.parquet"))) == 2  # the ghost's segment file is gone too

    # A segment saved without a dataset version (by hand, not by a build) makes the index untrusted:
    # it is rebuilt from the versions rather than trusted to hold them.
    by_hand = NearDupIndex.open(out, radii)
    by_hand.add({"phash": ["00000000000000ff"]}, ["by-hand"])
    by_hand.save()
    rebuilt = open_dataset_index(out, radii, increment=1)
    assert sorted(rebuilt.keys) == sorted(r["key"] for r in old) and rebuilt.dataset_version == 0
    assert sorted(NearDupIndex.open(out, radii).keys) == sorted(rebuilt.keys)


@pytest.fixture
def growing_web():
    with serve_testweb(slow_delay_s=0.5, **GROWING) as web:
        yield web


def test_index_follows_the_version_log_through_crashes_before_and_after_the_commit(
    tmp_path, monkeypatch, growing_web
):
    web = growing_web
    wit = web.write_wit(tmp_path / "site.tsv")
    cfg = BuildConfig(out=tmp_path / "ds", source=[f"wit:{wit}"], allow_networks=["127.0.0.0/8"], **FAST)
    build_dataset(cfg)
    radii = index_radii(cfg.dedup_radius)
    v0 = _kept(cfg.out)
    index = NearDupIndex.open(cfg.out, radii)
    assert index.dataset_version == 0 and sorted(index.keys) == sorted(v0)  # the first build wrote it
    old_urls, kept_before = set(web.truth["images"]), {r["url"] for r in v0.values()}

    web.grow()
    web.write_wit(wit)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:  # killed just before the Delta commit
        patch.setattr(versions, "commit", killed)
        with pytest.raises(KeyboardInterrupt):
            build_dataset(cfg)
    assert versions.latest_version(cfg.out) == 0
    index = NearDupIndex.open(cfg.out, radii)
    assert index.dataset_version == 0 and sorted(index.keys) == sorted(v0)  # not ahead of the log

    with monkeypatch.context() as patch:  # killed after the commit, before the index is saved
        patch.setattr(NearDupIndex, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            build_dataset(cfg)
    assert versions.latest_version(cfg.out) == 1
    assert NearDupIndex.open(cfg.out, radii).dataset_version == 0  # behind: allowed, repaired next

    summary = build_dataset(cfg)  # resumes the increment: finds its commit, saves the index
    assert summary.version == 1 and versions.latest_version(cfg.out) == 1
    v1 = _kept(cfg.out)
    index = NearDupIndex.open(cfg.out, radii)
    assert index.dataset_version == 1 and sorted(index.keys) == sorted(v1)
    added = {v1[k]["url"] for k in set(v1) - set(v0)}
    assert added == _expected_new(web.truth, old_urls, kept_before)
    locations = {index.location(i) for i in range(len(index))}
    assert locations == set(versions.resolve(cfg.out).files)
