"""apps.search indexing: embeddings in id order, rejects, duplicate groups, incremental and resumed runs,
the faiss type chosen by size and memory, and the command line's one-line errors."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from apps.search.__main__ import main
from apps.search.embed import encode_images, encode_texts
from apps.search.index import (
    IndexSettings,
    SearchIndexError,
    TuningQueries,
    build_faiss,
    build_index,
    choose_index_type,
    read_index_meta,
    recall_at,
    write_index_files,
)
from apps.search.store import SearchIndex
from curation.shards import write_shard
from testbed.datasets import shape_rows
from tests.searchdata import COPIED, SCRIPT_CAPTION, build_search_world


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoint):
    return build_search_world(tmp_path_factory.mktemp("search"), tiny_checkpoint)


def test_ids_keys_vectors_and_metadata_line_up(world):
    index = SearchIndex(world.index)
    kept = [r for r in world.rows if r["key"] != "broken"]
    assert index.count == len(kept) == 64
    assert index.metadata["key"].to_pylist() == [r["key"] for r in kept]
    for key in ("000000003", "copy-2", "script"):
        row = world.id_of(key)
        jpg = kept[row]["jpg"]
        expected = encode_images(world.clip, [Image.open(io.BytesIO(jpg)).convert("RGB")])[0]
        assert np.allclose(index.vector(row, "image"), expected, atol=1e-5)
        assert np.allclose(
            index.vector(row, "text"), encode_texts(world.clip, [kept[row]["caption"]])[0], atol=1e-5
        )
        assert index.image_bytes(row) == jpg
    script = index.rows([world.id_of("script")])[0]
    assert script["caption"] == SCRIPT_CAPTION and script["clip_score_from"] == "index"
    assert script["clip_score"] == pytest.approx(
        float(index.vector(script["id"], "image") @ index.vector(script["id"], "text")), abs=1e-5
    )


def test_broken_picture_is_a_recorded_reject_and_copies_share_a_group(world):
    rejects = json.loads((world.index / "rejects.json").read_text())
    assert [r["key"] for r in rejects] == ["broken"] and "does not decode" in rejects[0]["reason"]
    index = SearchIndex(world.index)
    for i in range(COPIED):
        original, copy = index.rows([world.id_of(f"{i:09d}"), world.id_of(f"copy-{i}")])
        assert original["dup_group"] == copy["dup_group"] == original["id"] and original["dup_count"] == 2
    singles = index.metadata.filter(pa.compute.equal(index.metadata["dup_count"], 1))
    assert singles.num_rows == 64 - 2 * COPIED  # distinct drawings of one class are not grouped
    assert read_index_meta(world.index)["duplicate_groups"] == COPIED


def test_a_new_dataset_version_embeds_only_its_new_shard(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world.dataset, data)
    out = tmp_path / "index"
    shutil.copytree(world.index, out)
    parts_before = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    write_shard(data, "part-00002", pa.Table.from_pylist(shape_rows(10, seed=9, size=32, start=500)))
    report = build_index(data, out, world.clip, IndexSettings(progress=False))
    assert report.embedded_shards == ["part-00002.parquet"] and len(report.reused_shards) == 2
    assert report.rows == 64 + 10
    assert all((out / "parts" / name).stat().st_mtime_ns == t for name, t in parts_before.items())
    index = SearchIndex(out)
    assert index.metadata["key"].to_pylist()[:64] == SearchIndex(world.index).metadata["key"].to_pylist()
    new_id = index.metadata["key"].to_pylist().index("000000503")
    assert index.knn(index.vector(new_id, "image"), "image", k=1)[0].id == new_id

    # A run killed before a part's marker was written redoes that shard only; a changed shard too.
    (out / "parts" / "part-00001.json").unlink()
    rows = shape_rows(5, seed=3, size=32, start=900)
    write_shard(data, "part-00000", pa.Table.from_pylist(rows))  # rewritten: another sha256
    report = build_index(data, out, world.clip, IndexSettings(progress=False))
    assert sorted(report.embedded_shards) == ["part-00000.parquet", "part-00001.parquet"]
    assert report.reused_shards == ["part-00002.parquet"] and report.rows == 5 + 32 + 10


def test_an_index_refuses_a_different_clip(world, tmp_path):
    import torch

    from models import create_model, load_clip, save_checkpoint

    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "other.pt", create_model("clip-tiny")[0], "clip-tiny")
    out = tmp_path / "index"
    shutil.copytree(world.index, out)
    with pytest.raises(Exception, match="different image-encoder weights"):
        build_index(world.dataset, out, load_clip(other), IndexSettings(progress=False))


def test_index_type_follows_size_and_memory_budget():
    assert choose_index_type(10_000, 512) == "Flat"
    assert choose_index_type(1_000_000, 512, 4 << 30) == "IVF4096,PQ128x4fs,RFlat"
    assert choose_index_type(1_000_000, 512, 1 << 30) == "IVF4096,SQ8"
    assert choose_index_type(100_000_000, 512, 16 << 30) == "IVF32768,PQ64"
    with pytest.raises(SearchIndexError, match="raise --max-memory"):
        choose_index_type(100_000_000, 512, 100 << 20)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for kind in ("IVF64,Flat", "IVF64,PQ8x4fs,RFlat", "IVF64,SQ8"):
        ivf = build_faiss(vectors, kind)
        assert ivf.ntotal == 5_000 and ivf.search(vectors[:5], 1)[1][:, 0].tolist() == [0, 1, 2, 3, 4], kind
    with pytest.raises(SearchIndexError, match="not understood"):
        build_faiss(vectors, "IVF64,Bogus")


def _clustered(n: int, dim: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim)).astype(
        np.float32
    ) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_nprobe_is_the_smallest_that_reaches_the_recall_target(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 32)).astype(np.float32)
    image, text = _clustered(8_000, 32, 1, centres), _clustered(8_000, 32, 2, centres)
    rows = pa.table({"key": pa.array([str(i) for i in range(8_000)])})
    chosen = {}
    for target in (0.6, 0.97):
        settings = IndexSettings(index_type="IVF128,PQ8x4fs,RFlat", target_recall=target, progress=False)
        meta = write_index_files(
            tmp_path / str(target), rows, {"image": image, "text": text}, None, settings=settings
        )
        entry = meta["faiss"]["image"]
        assert entry["recall_at_10"] >= target and entry["target_recall"] == target
        chosen[target] = entry["nprobe"]
        index = SearchIndex(tmp_path / str(target))
        assert faiss_nprobe(index) == entry["nprobe"]  # served with the tuned nprobe
        if entry["nprobe"] > 1:  # the smallest: half as many lists misses the target
            faiss_ivf(index).nprobe = entry["nprobe"] // 2
            own = np.arange(0, 8_000, 40)
            below = min(
                recall_at(index.faiss["image"], image, TuningQueries(image[own], own)),
                recall_at(index.faiss["image"], image, TuningQueries(text[own])),
            )
            assert below < target
            faiss_ivf(index).nprobe = entry["nprobe"]
        # held-out queries served through SearchIndex.knn reach about the target too
        queries = _clustered(100, 32, 3, centres)
        truth = (queries @ image.T).argsort(axis=1)[:, ::-1][:, :10]
        found = [[h.id for h in index.knn(q, "image", 10)] for q in queries]
        assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]) >= target - 0.05
    assert chosen[0.6] < chosen[0.97]


def faiss_ivf(index: SearchIndex):
    import faiss

    return faiss.extract_index_ivf(index.faiss["image"])


def faiss_nprobe(index: SearchIndex) -> int:
    return faiss_ivf(index).nprobe


def test_rows_across_record_batches_and_one_openmp_thread_per_query(tmp_path, monkeypatch):
    import threading

    import faiss

    import apps.search.store

    n = 140_000  # three Parquet row groups of 65,536
    vectors = np.eye(4, dtype=np.float32)[np.arange(n) % 4]
    rows = pa.table({"key": pa.array([f"k{i}" for i in range(n)])})
    settings = IndexSettings(index_type="Flat", progress=False)
    write_index_files(tmp_path, rows, {"image": vectors}, None, settings=settings)
    wanted = [139_999, 5, 70_000, 65_536, 65_535, 5, 131_072]
    assert [r["key"] for r in SearchIndex(tmp_path).rows(wanted)] == [f"k{i}" for i in wanted]
    # captions over 2 GB cannot become one batch: lookups then go row group by row group
    monkeypatch.setattr(apps.search.store, "one_batch", lambda table: table)
    index = SearchIndex(tmp_path, threads=3)  # 3: no machine's default, so the last check means something
    assert len(index._batches) == 3
    assert [r["key"] for r in index.rows(wanted)] == [f"k{i}" for i in wanted]
    assert [r["id"] for r in index.rows(wanted)] == wanted
    # OpenMP's thread count belongs to the calling thread: a server worker thread must get one too
    seen = []

    def search_in_a_new_thread() -> None:
        index.knn(vectors[1], "image", 3)
        seen.append(faiss.omp_get_max_threads())

    worker = threading.Thread(target=search_in_a_new_thread)
    worker.start()
    worker.join()
    assert seen == [3]


def test_command_line_errors_are_one_line(world, tmp_path, capsys):
    assert (
        main(
            [
                "index",
                str(tmp_path / "nowhere"),
                "--out",
                str(tmp_path / "i"),
                "--checkpoint",
                str(world.checkpoint),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nowhere" in err and "\n" not in err
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a search index" in capsys.readouterr().err
    assert (
        main(
            [
                "index",
                str(world.dataset),
                "--out",
                str(tmp_path / "i"),
                "--checkpoint",
                str(tmp_path / "none.pt"),
            ]
        )
        == 2
    )
    assert "none.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["index", str(world.dataset), "--out", "x", "--max-memory", "lots"])
    assert exit_info.value.code == 2 and "not a size" in capsys.readouterr().err
    out = tmp_path / "cli"
    assert (
        main(
            [
                "index",
                str(world.dataset),
                "--out",
                str(out),
                "--checkpoint",
                str(world.checkpoint),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "indexed 64 pairs" in printed and f"python -m apps.search serve {out}" in printed


def test_serve_command_answers_on_loopback(world, tmp_path):
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "apps.search", "serve", str(world.index), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the server did not start within 120 s"
                time.sleep(0.3)
        assert health["rows"] == 64 and health["text_queries"] is True  # the index's own CLIP was loaded
        hits = httpx.get(f"http://127.0.0.1:{port}/knn", params={"text": "a red circle", "k": 3}).json()
        assert len(hits["results"]) == 3
    finally:
        server.terminate()
        server.wait(timeout=30)
