"""Incremental builds over a web that grows, dataset versions (Delta Lake), and training pinned to a version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation import shards, versions
from curation.build import build_dataset
from curation.config import BuildConfig
from testbed.datasets import rows_table, shape_rows
from testbed.testweb import SiteOptions
from testbed.web import serve_testweb

FAST = {"processes": 1, "threads": 8, "image_size": 64, "timeout": 5}
REPO = Path(__file__).resolve().parents[1]
# 8 galleries, 4 served at first. With this seed the 4 new galleries hold an exact and a near-duplicate
# (resized) copy of pictures on the first 4, besides their own clean pictures and junk.
GROWING = {"pages": 8, "seed": 2, "options": SiteOptions(junk_fraction=0.6), "visible_pages": 4}


def _is_page(path: str) -> bool:
    return path == "/" or path.endswith((".html", "robots.txt"))


def _kept(out: Path, version: int | None = None) -> dict[str, dict]:
    table = shards.read_table(out, columns=["key", "url", "sha256"], version=version)
    return {row["key"]: row for row in table.to_pylist()}


def _expected_new(truth: dict, old_urls: set[str], kept_before: set[str]) -> set[str]:
    """New image URLs a correct increment keeps: clean ones (no CLIP filter here, so a mismatched caption
    is kept too), unless a picture of the same duplicate group is already in the dataset."""
    groups: dict[int, set[str]] = {}
    for url, t in truth["images"].items():
        if t["dup_group"] is not None:
            groups.setdefault(t["dup_group"], set()).add(url)
    expected = set()
    for url, t in truth["images"].items():
        if url in old_urls:
            continue
        reject = t["expected_reject"]
        if reject is not None and reject["stage"] != "clip_score":
            continue
        if t["dup_group"] is not None and groups[t["dup_group"]] & kept_before:
            continue  # the dataset holds a copy already (here: an old copy of a new original)
        expected.add(url)
    return expected


def test_growing_web_adds_exactly_the_new_clean_pairs_as_a_new_version(tmp_path):
    with serve_testweb(slow_delay_s=0.5, **GROWING) as web:
        wit = web.write_wit(tmp_path / "site.tsv")
        cfg = BuildConfig(
            out=tmp_path / "ds",
            source=[f"wit:{wit}", f"crawl:{web.base_url}/"],
            allow_networks=["127.0.0.0/8"],
            **FAST,
        )
        first = build_dataset(cfg)
        old_urls = set(web.truth["images"])
        fetched_first = [p for p in web.requests if not _is_page(p)]
        v0 = _kept(cfg.out)
        assert first.version == 0 and first.added == len(v0) > 10

        web.grow()  # new galleries, new TSV rows, new copies of old pictures
        web.write_wit(wit)
        asked_before = len(web.requests)
        second = build_dataset(cfg)
        asked_second = web.requests[asked_before:]
        after_second = len(web.requests)
        third = build_dataset(cfg)  # nothing new since: no new version, nothing fetched but pages
        asked_third = web.requests[after_second:]

    assert second.version == 1 and second.unchanged > 0
    images_again = set(fetched_first) & {p for p in asked_second if not _is_page(p)}
    assert not images_again, f"old images fetched again: {sorted(images_again)[:5]}"
    assert all(_is_page(p) for p in asked_third), asked_third
    assert third.skipped and third.version == 1 and third.added == 0

    # Version 0 still reads exactly its rows; version 1 = version 0 + the new pairs.
    assert _kept(cfg.out, version=0) == v0
    v1 = _kept(cfg.out)
    assert set(v0) <= set(v1)
    added = {k: v1[k] for k in set(v1) - set(v0)}
    assert len(added) == second.added > 0
    truth = web.truth
    kept_before = {r["url"] for r in v0.values()}
    assert {r["url"] for r in added.values()} == _expected_new(truth, old_urls, kept_before)

    # No duplicate across versions: one URL, one sha256, one picture per duplicate group.
    urls = [r["url"] for r in v1.values()]
    assert len(urls) == len(set(urls))
    digests = [r["sha256"] for r in v1.values()]
    assert len(digests) == len(set(digests))
    for group in truth["duplicate_groups"]:
        members = {group["original"], *group["members"]}
        assert len(members & set(urls)) <= 1, group
    new_copies_of_old = [
        u for u, t in truth["images"].items()
        if u not in old_urls and t["duplicate_of"] in old_urls and t["duplicate_of"] in kept_before
    ]  # fmt: skip
    assert new_copies_of_old, "the grown site should hold copies of old pictures"
    rejects = shards.read_table(cfg.out, columns=["url", "reject_stage", "reject_reason"], kind="rejects")
    stage_of = {r["url"]: r for r in rejects.to_pylist()}
    for url in new_copies_of_old:
        assert stage_of[url]["reject_stage"] == "dedup", stage_of[url]
        assert "already in the dataset" in stage_of[url]["reject_reason"]

    # Every version is in the Delta log with what its build recorded.
    log = versions.history(cfg.out)
    assert [e["version"] for e in log] == [0, 1]
    assert [e["added"] for e in log] == [first.added, second.added]
    manifest = shards.load_manifest(cfg.out)
    assert manifest.counts["kept"] == len(v1)


def _versioned_dataset(root: Path, sizes: list[int]) -> Path:
    """A dataset whose version i adds sizes[i] shape pairs (shards written and committed as a build does)."""
    start = 0
    for i, n in enumerate(sizes):
        name = f"i{i:05d}-part-00000"
        shards.write_shard(root, name, rows_table(shape_rows(n, seed=i, size=32, start=start)))
        versions.commit(root, [f"shards/{name}.parquet"], {"increment": i, "added": n})
        start += n
    return root


def test_versions_time_travel_and_errors(tmp_path):
    data = _versioned_dataset(tmp_path / "data", [20, 12])
    assert versions.latest_version(data) == 1
    assert len(shards.read_table(data, columns=["key"], version=0)) == 20
    assert len(shards.read_table(data, columns=["key"])) == 32
    # a shard written but not committed (a build killed before its commit) is not read
    shards.write_shard(data, "i00002-part-00000", rows_table(shape_rows(5, seed=9, size=32, start=40)))
    assert len(shards.read_table(data, columns=["key"])) == 32
    with pytest.raises(versions.VersionError, match="no version 7; the dataset has versions 0-1"):
        shards.read_table(data, version=7)
    # plain Parquet underneath, and the Delta log readable by deltalake itself
    from deltalake import DeltaTable

    assert DeltaTable(str(data), version=0).to_pyarrow_table(columns=["key"]).num_rows == 20


def test_versions_command_lists_them(tmp_path, capsys):
    from curation.__main__ import main

    data = _versioned_dataset(tmp_path / "data", [20, 12])
    assert main(["versions", str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["0", "20", "20"] and lines[2].split()[:3] == ["1", "12", "32"]
    assert main(["versions", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no dataset versions" in err and len(err.splitlines()) == 1


def test_training_and_evaluation_pin_a_version(tmp_path, capsys):
    from training.evaluate import main as evaluate_main
    from training.train import main as train_main

    data = _versioned_dataset(tmp_path / "data", [24, 16])
    args = ["--data", str(data), "--model", "clip-tiny", "--steps", "1", "--batch-size", "8",
            "--workers", "0", "--warmup", "0", "--no-progress", "--threads", "1"]  # fmt: skip
    assert train_main([*args, "--out", str(tmp_path / "v0"), "--data-version", "0"]) == 0
    assert train_main([*args, "--out", str(tmp_path / "latest")]) == 0
    config0 = json.loads((tmp_path / "v0" / "config.json").read_text())
    config1 = json.loads((tmp_path / "latest" / "config.json").read_text())
    assert config0["data_version"] == 0 and config0["data_versions"] == {str(data): 0}
    assert config1["data_version"] is None and config1["data_versions"] == {str(data): 1}
    assert config0["data_checksums"] != config1["data_checksums"]
    capsys.readouterr()
    assert train_main([*args, "--out", str(tmp_path / "bad"), "--data-version", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no version 5; the dataset has versions 0-1" in err[-1]

    report_path = tmp_path / "e.json"
    assert evaluate_main(["--checkpoint", str(tmp_path / "v0"), "--retrieval", str(data),
                          "--data-version", "0", "--out", str(report_path), "--no-progress"]) == 0  # fmt: skip
    report = json.loads(report_path.read_text())
    assert report["retrieval"]["data_version"] == 0 and report["retrieval"]["pairs"] == 24
    assert report["config"]["data_version"] == 0


def test_crawl_frontier_spills_to_disk_and_finds_the_same(tmp_path):
    import pyarrow.parquet as pq

    from curation.crawl import CrawlConfig, crawl

    def run(name: str, max_frontier: int):
        cfg = CrawlConfig(
            seed=[web.base_url + "/"], out=tmp_path / name / "c.parquet", allow_networks=["127.0.0.0/8"],
            max_frontier=max_frontier, progress=False, concurrency=2,
        )  # fmt: skip
        result = crawl(cfg)
        rows = pq.read_table(result.out).to_pylist()
        return result, {(r["url"], r["page_url"]) for r in rows}, len(rows)

    with serve_testweb(pages=12, seed=3, slow_delay_s=0.2) as web:
        spilled, spilled_rows, n_spilled = run("small", 2)
        memory, memory_rows, n_memory = run("large", 10_000)
    assert spilled.stats["frontier_peak"] <= 2 and spilled.stats["frontier_spilled"] > 5
    assert memory.stats["frontier_spilled"] == 0
    assert spilled.pages_fetched == memory.pages_fetched
    assert spilled_rows == memory_rows and n_spilled == n_memory == len(memory_rows) > 50
    assert not (tmp_path / "small" / "c.parquet.state" / "frontier.jsonl").exists()  # removed when done


def test_a_dataset_without_versions_is_not_extended_silently(tmp_path):
    from curation.build import BuildError, collect_candidates
    from testbed.datasets import make_shape_dataset

    old = make_shape_dataset(tmp_path / "old", n=8, size=32)
    wit = tmp_path / "a.tsv"
    wit.write_text("")
    with pytest.raises(BuildError, match="without a version log.*new --out"):
        collect_candidates(BuildConfig(out=old, source=[f"wit:{wit}"]))
