"""The record schema, atomic shards, the manifest and resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import shards
from curation.schema import RECORD_SCHEMA, REJECT_SCHEMA, SCHEMA_VERSION, SchemaError, conform, validate

REPO = Path(__file__).resolve().parents[1]


def pairs(n: int, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "key": [f"{i:09d}" for i in range(start, start + n)],
            "url": [f"http://127.0.0.1/img/{i}.jpg" for i in range(start, start + n)],
            "caption": [f"a red circle number {i}" for i in range(start, start + n)],
            "status": ["success"] * n,
            "width": [64] * n,
            "height": [64] * n,
            "jpg": [bytes([i % 256]) * 100 for i in range(start, start + n)],
            "page_title": ["Shapes"] * n,
            "extra_column": list(range(n)),
        }
    )


def test_schema_is_superset_of_img2dataset_and_wit():
    img2dataset = (
        "key url caption status error_message width height original_width original_height sha256 jpg"
    )
    wit = (
        "page_url page_title section_title caption_reference_description caption_alt_text_description "
        "caption_attribution_description context_page_description language"
    )
    for name in (img2dataset + " " + wit + " phash clip_score text_source").split():
        assert name in RECORD_SCHEMA.names, name
    assert REJECT_SCHEMA.names[-2:] == ["reject_stage", "reject_reason"]


def test_round_trip_keeps_values_types_and_extra_columns(tmp_path):
    table = pairs(1200)
    entry = shards.write_shard(tmp_path, "00000", table)
    assert entry.rows == 1200
    back = shards.read_table(tmp_path)
    assert back.column("caption").to_pylist() == table.column("caption").to_pylist()
    assert back.column("jpg").to_pylist() == table.column("jpg").to_pylist()
    assert back.schema.field("width").type == pa.int64()
    assert back.column("extra_column").to_pylist() == list(range(1200))
    assert back.column("clip_score").null_count == 1200
    meta = pq.ParquetFile(tmp_path / "shards" / "00000.parquet")
    assert meta.schema_arrow.metadata[b"clip_workbench.schema_version"].decode() == SCHEMA_VERSION
    assert meta.metadata.row_group(0).column(0).compression == "ZSTD"
    assert meta.num_row_groups == 3  # 512-row groups
    refs = shards.row_groups(tmp_path)
    assert sum(r.num_rows for r in refs) == 1200
    assert shards.read_row_group(refs[1], ["key"]).column("key")[0].as_py() == "000000512"
    projected = next(shards.iter_batches(tmp_path, columns=["key", "caption"], batch_size=10))
    assert projected.schema.names == ["key", "caption"] and projected.num_rows == 10
    assert [r["key"] for r in shards.iter_rows(tmp_path, ["key"])][:2] == ["000000000", "000000001"]


def test_rejects_carry_stage_and_reason(tmp_path):
    table = pairs(3).append_column("reject_stage", pa.array(["filter"] * 3))
    table = table.append_column("reject_reason", pa.array(["min_side: 16 < 32"] * 3))
    shards.write_shard(tmp_path, "r0", table, kind="rejects")
    back = shards.read_table(tmp_path, kind="rejects")
    assert back.column("reject_reason").to_pylist() == ["min_side: 16 < 32"] * 3
    assert shards.load_manifest(tmp_path).rejects["r0.parquet"].rows == 3


def test_shards_with_different_extra_columns_read_as_one_table(tmp_path):
    first = pairs(2).append_column("reject_stage", pa.array(["download"] * 2))
    second = pairs(3, start=2).append_column("colour_signature", pa.array(["ff0000"] * 3))
    shards.write_shard(tmp_path, "a", first, kind="rejects")
    shards.write_shard(tmp_path, "b", second, kind="rejects")
    both = shards.read_table(tmp_path, kind="rejects")
    assert both.num_rows == 5
    assert both.column("colour_signature").to_pylist() == [None, None, "ff0000", "ff0000", "ff0000"]
    assert both.column("reject_stage").to_pylist()[:2] == ["download", "download"]


def test_validator_names_file_column_and_expectation(tmp_path):
    no_jpg = pairs(2).drop_columns(["jpg"])
    path = tmp_path / "bad.parquet"
    pq.write_table(no_jpg, path)
    with pytest.raises(SchemaError, match=r"bad\.parquet: missing column `jpg`.*binary"):
        shards.open_shard(path)
    mistyped = pairs(2).set_column(
        pairs(2).schema.get_field_index("width"), "width", pa.array(["wide", "narrow"])
    )
    pq.write_table(mistyped, path)
    with pytest.raises(SchemaError, match=r"bad\.parquet: column `width` has type string; expected int64"):
        shards.open_shard(path)
    with pytest.raises(SchemaError, match="`caption`"):
        validate(pairs(1).drop_columns(["caption"]), "table")
    with pytest.raises(SchemaError):
        conform(mistyped)


def test_truncated_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pairs(50), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(shards.ShardError, match=r"t\.parquet: not a readable Parquet file"):
        shards.open_shard(path)


def test_manifest_checksum_mismatch_is_refused(tmp_path):
    shards.write_shard(tmp_path, "00000", pairs(10))
    path = tmp_path / "shards" / "00000.parquet"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(shards.ShardError, match="checksum does not match"):
        shards.trusted_shards(tmp_path)
    with pytest.raises(shards.ShardError, match="checksum"):
        list(shards.iter_batches(tmp_path))


def test_shard_without_manifest_entry_is_not_trusted(tmp_path):
    shards.write_shard(tmp_path, "00000", pairs(10))
    stray = tmp_path / "shards" / "00001.parquet"
    pq.write_table(pairs(10, start=10), stray)
    assert shards.trusted_shards(tmp_path) == [tmp_path / "shards" / "00000.parquet"]
    assert shards.read_table(tmp_path).num_rows == 10
    assert not shards.has_shard(tmp_path, "00001")
    assert shards.untrusted_files(tmp_path) == [stray]
    assert shards.remove_untrusted(tmp_path) == [stray] and not stray.exists()


def test_missing_manifest_and_missing_dir_are_clear(tmp_path):
    with pytest.raises(shards.ShardError, match="no manifest.json"):
        shards.trusted_shards(tmp_path)
    with pytest.raises(shards.ShardError, match="does not exist"):
        shards.trusted_shards(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(shards.ShardError, match="not valid JSON"):
        shards.load_manifest(tmp_path)


def test_manifest_fields_and_checksum(tmp_path):
    shards.write_shard(tmp_path, "a", pairs(4))
    before = shards.manifest_checksum(tmp_path)
    shards.update_manifest(tmp_path, config={"min_side": 32}, counts={"filter:min_side": 3})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"] == {"min_side": 32} and manifest["shards"]["a.parquet"]["rows"] == 4
    assert shards.manifest_checksum(tmp_path) == before
    shards.write_shard(tmp_path, "b", pairs(4, start=4))
    assert shards.manifest_checksum(tmp_path) != before


WRITER = textwrap.dedent(
    """
    import sys, time
    import pyarrow as pa
    from curation import shards
    root, n_shards, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    shards.remove_untrusted(root)
    for s in range(n_shards):
        name = f"{s:05d}"
        if shards.has_shard(root, name):
            continue
        keys = [f"{s:05d}-{i:06d}" for i in range(rows)]
        table = pa.table({"key": keys, "caption": keys, "jpg": [b"x" * 2000] * rows})
        shards.write_shard(root, name, table, row_group_size=64)
        print("wrote", name, flush=True)
    print("done", flush=True)
    """
)


def test_sigkill_mid_write_then_resume_gives_exactly_the_expected_rows(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    root = tmp_path / "ds"
    n_shards, rows = 12, 3000
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = 0
    for delay in (0.9, 1.3, 1.1):
        proc = subprocess.Popen([sys.executable, str(script), str(root), str(n_shards), str(rows)], env=env)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        # Whatever is on disk now, readers see only complete, checksummed shards.
        if (root / "manifest.json").exists():
            for path in shards.trusted_shards(root):
                assert pq.ParquetFile(path).metadata.num_rows == rows
    assert killed >= 1
    done = subprocess.run(
        [sys.executable, str(script), str(root), str(n_shards), str(rows)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "done" in done.stdout
    keys = shards.read_table(root, ["key"]).column("key").to_pylist()
    expected = [f"{s:05d}-{i:06d}" for s in range(n_shards) for i in range(rows)]
    assert sorted(keys) == expected  # nothing lost, nothing duplicated
    assert shards.untrusted_files(root) == []
