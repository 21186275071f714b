"""Flows against Prefect's ephemeral API: build (chunks, cache, concurrency, artifacts, lock), train, evaluate, Dask."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.atomic import OutputBusyError
from curation import download
from curation.config import BuildConfig
from curation.shards import load_manifest, read_table
from pipelines.flows import build_dataset_flow, evaluate_flow, train_flow
from pipelines.params import FlowOptions
from pipelines.runtime import apply_env_defaults
from pipelines.tasks import DOWNLOAD_TAG
from testbed.datasets import make_shape_dataset
from testbed.shapes import write_image_folder
from testbed.web import serve_testweb

apply_env_defaults()


@pytest.fixture
def img2dataset_calls(monkeypatch):
    """Counts the real img2dataset calls the build makes (each call still runs)."""
    calls: list[str] = []
    real = download.run_img2dataset

    def counting(candidates, output_folder, options):
        calls.append(Path(candidates).name)
        return real(candidates, output_folder, options)

    monkeypatch.setattr(download, "run_img2dataset", counting)
    return calls


def _build_config(wit: Path, out: Path, chunk_size: int = 12) -> BuildConfig:
    return BuildConfig(
        source=[f"wit:{wit}"],
        out=out,
        allow_networks=["127.0.0.0/8"],
        chunk_size=chunk_size,
        image_size=32,
        processes=1,
        threads=8,
        timeout=2,
    )


def _api(path: str, body: dict) -> list[dict]:
    """POST to the Prefect API this process uses (the ephemeral one in tests), with a full body."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        response = client._client.post(path, json={"offset": 0, **body})
        response.raise_for_status()
        return response.json()


def _task_runs(name_prefix: str) -> list[dict]:
    return _api("/task_runs/filter", {"task_runs": {"name": {"like_": name_prefix}}, "limit": 200})


def _artifacts_exist(*keys: str) -> bool:
    found = _api("/artifacts/filter", {"artifacts": {"key": {"any_": list(keys)}}, "limit": 200})
    return set(keys) <= {a["key"] for a in found}


def test_build_flow_chunks_concurrency_artifacts_and_cache(tmp_path, img2dataset_calls):
    out = tmp_path / "web"
    with serve_testweb(pages=3, seed=1, slow_delay_s=0.5) as web:
        cfg = _build_config(web.write_wit(tmp_path / "site.tsv"), out)
        first = build_dataset_flow(cfg, FlowOptions(download_concurrency=1, retries=0))
        chunks = len(first["chunks"])
        assert chunks >= 2 and len(img2dataset_calls) == chunks  # one img2dataset call per chunk
        assert first["summary"]["kept"] == load_manifest(out).num_rows > 0
        assert read_table(out, columns=["key"]).num_rows == first["summary"]["kept"]

        # The tag limit of 1 held: no two download tasks of this run overlapped.
        runs = sorted(
            (r for r in _task_runs("download-chunk-") if DOWNLOAD_TAG in r["tags"] and r["start_time"]),
            key=lambda r: r["start_time"],
        )[-chunks:]
        assert len(runs) == chunks
        for earlier, later in zip(runs, runs[1:]):
            assert earlier["end_time"] <= later["start_time"]
        assert _artifacts_exist("build-web-chunks", "build-web-counts", "build-web-picture-0")

        # Rerun: every chunk is done (its marker), img2dataset is not called again.
        second = build_dataset_flow(cfg, FlowOptions(download_concurrency=1, retries=0))
        assert len(img2dataset_calls) == chunks
        assert second["summary"]["kept"] == first["summary"]["kept"]
        # Nothing in the dataset folder is a pickle (one would run its writer's code on the next rerun).
        pickles = [p for p in out.rglob("*") if p.is_file() and p.read_bytes()[:1] == b"\x80"]
        assert not pickles and not (out / ".prefect-cache").exists()


def test_build_flow_scores_each_chunk_in_its_own_task_and_merges_like_the_library(tmp_path, tiny_checkpoint):
    import dataclasses
    from datetime import UTC, datetime

    from curation.build import build_dataset
    from curation.clipscore import load_embedder

    started = datetime.now(UTC)  # the API's database outlives a test session: count this run's tasks

    def since_start(runs: list[dict]) -> list[dict]:
        return [r for r in runs if r["start_time"] and datetime.fromisoformat(r["start_time"]) >= started]

    with serve_testweb(pages=3, seed=1, slow_delay_s=0.5) as web:
        wit = web.write_wit(tmp_path / "site.tsv")
        clip = {"clip_checkpoint": tiny_checkpoint, "clip_top_fraction": 0.7}
        cfg = dataclasses.replace(_build_config(wit, tmp_path / "flow"), **clip)
        result = build_dataset_flow(cfg, FlowOptions(retries=0))
        library = dataclasses.replace(cfg, out=tmp_path / "library")
        build_dataset(library, load_embedder(library))
    chunks = result["chunks"]
    assert len(chunks) >= 2
    scored = since_start(_task_runs("score-chunk-"))
    assert len(scored) == len(chunks)  # one CLIP-scoring task per chunk (on Dask: spread over the workers)
    assert all(r["state_type"] == "COMPLETED" for r in scored)
    assert len(since_start(_task_runs("dedup-increment"))) == 1
    got = read_table(cfg.out, columns=["key", "clip_score"]).to_pylist()
    want = read_table(library.out, columns=["key", "clip_score"]).to_pylist()
    assert got == want and all(r["clip_score"] is not None for r in got)  # same pairs kept, same scores
    rejects = read_table(cfg.out, columns=["reject_stage"], kind="rejects")["reject_stage"].to_pylist()
    assert "clip" in rejects  # the top fraction was applied over every chunk's scores together


def test_second_run_on_the_same_output_refuses(tmp_path):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from common.atomic import output_lock\n"
            f"with output_lock({str(out)!r}, 'build-dataset flow'):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = BuildConfig(source=["wit:/nonexistent.tsv"], out=out)
        started = time.perf_counter()
        with pytest.raises(
            OutputBusyError, match=rf"{out.name} is being written by another run .*pid.*{holder.pid}"
        ):
            build_dataset_flow(cfg, FlowOptions())
        assert time.perf_counter() - started < 30
        assert not (out / "work").exists()  # refused before any work
    finally:
        holder.kill()
        holder.wait()


def test_train_and_evaluate_flows(tmp_path):
    data = make_shape_dataset(tmp_path / "data", n=48, seed=0, size=32)
    from training.config import EvalConfig, TrainConfig

    run = tmp_path / "run"
    result = train_flow(
        TrainConfig(
            data=[data],
            out=run,
            model="clip-tiny",
            steps=2,
            batch_size=16,
            workers=1,  # a forked loader worker inside a flow: it must exit cleanly (training/data.py)
            warmup=1,
            progress=False,
        )
    )
    assert result["steps"] == 2 and Path(result["checkpoint"]).exists()
    folder = write_image_folder(tmp_path / "heldout", 1, seed=5, size=32)
    report = evaluate_flow(EvalConfig(checkpoint=run, zeroshot=folder, batch_size=64, progress=False))
    assert 0.0 <= report["zeroshot"]["single"]["top1"] <= 1.0
    assert _artifacts_exist("train-run-summary", "evaluate-run")


@pytest.mark.slow  # ~40 s: one more img2dataset call and a Dask cluster start
def test_dask_task_runner_on_a_local_cluster(tmp_path):
    from distributed import LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", dashboard_address=None
        ) as cluster,
        serve_testweb(pages=3, seed=1, slow_delay_s=0.5) as web,
    ):
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        cfg = _build_config(web.write_wit(tmp_path / "site.tsv"), tmp_path / "dask", chunk_size=100)
        result = build_dataset_flow(cfg, FlowOptions(dask_address=cluster.scheduler_address, retries=0))
        assert result["summary"]["kept"] > 0
        done = [key for key in cluster.scheduler.task_prefixes if "download" in key]
        assert done, f"no download task ran on the Dask cluster: {list(cluster.scheduler.task_prefixes)}"


@pytest.mark.slow  # two torchrun ranks start torch and open_clip: ~1 min on 2 cores
def test_train_flow_under_torchrun(tmp_path):
    from training.config import TrainConfig

    data = make_shape_dataset(tmp_path / "data", n=64, seed=0, size=32, shards=2)
    run = tmp_path / "ddp"
    cfg = TrainConfig(
        data=[data], out=run, model="clip-tiny", steps=2, batch_size=16, workers=0, warmup=1, progress=False
    )
    result = train_flow(cfg, FlowOptions(train_processes=2))
    assert result["processes"] == 2 and Path(result["checkpoint"]).exists()


@pytest.mark.slow  # the whole chain at toy sizes: ~3 min on 2 cores per world
@pytest.mark.parametrize("world, sketch", [("shapes", "red_star.svg"), ("corpus", "chelsea.svg")])
def test_demo_runs_every_stage_and_writes_the_report(tmp_path, world, sketch):
    from pipelines.demo import WORLDS, run_demo

    overrides = [
        "train.steps=3",
        "train.batch_size=8",
        "train.workers=0",
        "train.warmup=1",
        "chain.heldout_per_class=1",
        "chain.clipasso_iterations=2",
        "chain.clip4clip_train_videos=8",
        "chain.clip4clip_epochs=1",
        "build.chunk_size=60",
    ]
    if world == "corpus":  # the apps' own demos ran in the shapes case: here the world's own stages only
        assert 'apps = ["search"]' in WORLDS["corpus"]["params"].read_text()
        overrides.append("chain.apps=[]")
    # the corpus world fetches the whole corpus into the cache once (~45 s, 349 MB), then runs offline
    report = run_demo(tmp_path / "demo", pages=4 if world == "shapes" else 10, seed=0, params_file=None,
                      overrides=overrides, world=world)  # fmt: skip
    text = report.read_text()
    headings = ["Round 1", "Training", "Evaluation", "Round 2", "apps.clipasso"]
    for heading in headings + (["apps.clip4clip", "apps.coop", "apps.search"] if world == "shapes" else []):
        assert f". {heading}" in text, heading
    assert "skipped" not in text
    assert (tmp_path / "demo" / "apps" / "clipasso" / sketch).exists()
    # round 2 filters the same sources again: every chunk is round 1's, copied, none fetched twice
    built = json.loads((tmp_path / "demo" / "result.json").read_text())
    round1 = built["round1"]["out"]
    assert len(built["round2"]["chunks"]) == len(built["round1"]["chunks"]) >= 1
    assert all(chunk["reused_from"] == round1 for chunk in built["round2"]["chunks"])
    if world == "corpus":  # held-out style: 100 concepts, then the same pictures by their 9 emoji groups
        result = json.loads((tmp_path / "demo" / "result.json").read_text())
        assert result["evaluate"]["zeroshot"]["classes"] == 100
        assert result["evaluate_categories"]["zeroshot"]["classes"] == 9
        # ... and through the names of the concepts each group holds (subclasses.json, CHiLS)
        assert result["evaluate_categories"]["zeroshot"]["subclass_names"] > 1000
        # the 5 skimage photos and 5 held-out line icons, sketched and put on one sheet
        assert result["clipasso_gallery"]["pictures"] == 10
        assert (tmp_path / "demo" / "apps" / "clipasso_gallery" / "gallery.png").exists()
        assert "clipasso gallery" in text
        # clip4clip on real emoji moving, its test videos in the held-out style
        assert "real emoji moving" in text
        assert (tmp_path / "demo" / "apps" / "clip4clip" / "search.html").exists()
        assert "real emoji and icons" in text and "Category level" in text
    else:
        assert (tmp_path / "demo" / "apps" / "clip4clip" / "search.html").exists()
