"""The distributed engines of issue #15, each as separate processes talking TCP on loopback addresses that stand in
for hosts (127.0.0.2 and 127.0.0.3): a Dask cluster under Prefect, img2dataset's pyspark and ray distributors on
real clusters, and `torchrun --nnodes 2`. Slow (`make test-slow`); kept small (a few dozen images, a few steps).

Every cluster process starts in its own process group and the whole group is killed in a finally block.
Figures (rows/s, steps/s, overhead against one process) are printed for docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOST_A, HOST_B = "127.0.0.2", "127.0.0.3"


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "WANDB_MODE": "disabled",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TOKENIZERS_PARALLELISM": "false",
        "GLOO_SOCKET_IFNAME": "lo",
        **extra,
    }


def free_port(host: str = HOST_A) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args[:3]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s")


@contextlib.contextmanager
def processes(
    commands: list[list[str]], logs_dir: Path, env: dict[str, str]
) -> Iterator[tuple[list, list[Path]]]:
    """Start each command in its own process group (logs in files); kill every group on exit."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    try:
        for i, command in enumerate(commands):
            log = logs_dir / f"{i}-{Path(command[0]).name}.log"
            with open(log, "w") as fh:
                procs.append(
                    subprocess.Popen(
                        command, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
                    )
                )
            logs.append(log)
        yield procs, logs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # grandchildren (raylet, JVM executors) too
            proc.wait()


def need_extra(module: str, extra: str) -> None:
    """Skip without the extra, except under `make test-slow` (REQUIRE_ENGINES=1), which installs the
    extras: there a missing engine fails instead of passing as a skip."""
    if importlib.util.find_spec(module) is None:
        message = f"needs the [{extra}] extra: pip install -e '.[{extra}]' (`make test-slow` installs it)"
        if os.environ.get("REQUIRE_ENGINES") == "1":
            pytest.fail(message)
        pytest.skip(message)


# --- a chunk of candidates from the loopback web ----------------------------------------------------------------


@pytest.fixture(scope="module")
def web():
    from testbed.web import serve_testweb

    with serve_testweb(pages=4, seed=2) as running:
        yield running


@pytest.fixture(scope="module")
def chunk(web, tmp_path_factory) -> Path:
    from curation.build import collect_candidates
    from curation.config import BuildConfig

    tmp = tmp_path_factory.mktemp("chunk")
    wit = web.write_wit(tmp / "site.tsv")
    candidates = collect_candidates(
        BuildConfig(out=tmp / "ds", source=[f"wit:{wit}"], allow_networks=["127.0.0.1/32"], chunk_size=10_000)
    )
    assert len(candidates.chunks) == 1 and candidates.chunks[0].rows >= 20
    return candidates.chunks[0].path


COMPARED = ["key_candidate", "status", "error_message", "sha256", "width", "height", "original_width"]


def download_rows(chunk: Path, out: Path, distributor: str) -> tuple[list[dict], float]:
    import dataclasses

    from curation.build import download_options
    from curation.config import BuildConfig
    from curation.download import run_img2dataset

    cfg = BuildConfig(
        out=out.parent / "cfg",
        source=[],
        allow_networks=["127.0.0.1/32"],
        image_size=32,
        processes=2,
        threads=4,
    )
    options = dataclasses.replace(download_options(cfg), distributor=distributor)
    started = time.perf_counter()
    table = run_img2dataset(chunk, out, options)
    seconds = time.perf_counter() - started
    rows = sorted(table.select(COMPARED).to_pylist(), key=lambda r: r["key_candidate"])
    return rows, seconds


@pytest.fixture(scope="module")
def multiprocessing_rows(chunk, tmp_path_factory) -> tuple[list[dict], float]:
    return download_rows(chunk, tmp_path_factory.mktemp("mp") / "out", "multiprocessing")


def _report(name: str, rows: int, seconds: float, baseline: float) -> None:
    print(
        f"\n{name}: {rows} rows in {seconds:.1f} s = {rows / seconds:.1f} rows/s "
        f"(multiprocessing {baseline:.1f} s; overhead x{seconds / baseline:.1f})"
    )


# --- (b) img2dataset distributors on real clusters ------------------------------------------------------------


def test_pyspark_distributor_on_a_standalone_cluster_gives_the_rows_of_multiprocessing(
    chunk, multiprocessing_rows, tmp_path, monkeypatch
):
    need_extra("pyspark", "spark")
    from pyspark.sql import SparkSession

    from curation.download import DistributorError, connect_distributor

    port = free_port()
    env = _env(PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_DIRS=str(tmp_path / "spark-local"))
    spark_class = str(BIN / "spark-class")
    master = [spark_class, "org.apache.spark.deploy.master.Master", "--host", HOST_A, "--port", str(port)]
    master += ["--webui-port", str(free_port())]
    worker = [
        spark_class,
        "org.apache.spark.deploy.worker.Worker",
        f"spark://{HOST_A}:{port}",
        "--host",
        HOST_B,
    ]
    worker += ["--cores", "2", "--memory", "1g", "--webui-port", str(free_port(HOST_B))]
    worker += ["--work-dir", str(tmp_path / "spark-work")]
    with processes([master, worker], tmp_path / "logs", env) as (procs, logs):
        wait_port(HOST_A, port, 120, procs, logs)
        monkeypatch.setenv("SPARK_MASTER", f"spark://{HOST_A}:{port}")
        monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
        monkeypatch.setenv("PYTHONPATH", str(REPO))
        spark = None
        try:
            connect_distributor("pyspark")
            spark = SparkSession.getActiveSession()
            assert spark.sparkContext.master == f"spark://{HOST_A}:{port}"
            rows, seconds = download_rows(chunk, tmp_path / "out", "pyspark")
            executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().keySet().toString()
        finally:
            if spark is not None:
                spark.stop()
        assert HOST_B in executors, executors  # the work ran on the worker "host"
        assert "Registering worker" in logs[0].read_text()
    expected, baseline = multiprocessing_rows
    assert rows == expected
    _report("pyspark (standalone master + 1 worker, 2 cores)", len(rows), seconds, baseline)

    monkeypatch.setenv("SPARK_MASTER", f"spark://{HOST_A}:{port}")  # the cluster is gone: one clear line
    with pytest.raises(DistributorError, match="cannot start a Spark session"):
        connect_distributor("pyspark")
    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


def test_ray_distributor_on_a_two_node_cluster_gives_the_rows_of_multiprocessing(
    chunk, multiprocessing_rows, tmp_path, monkeypatch
):
    need_extra("ray", "ray")
    import ray

    from curation.download import connect_distributor

    port = free_port()
    temp = Path("/tmp") / f"ray-t{os.getpid()}"  # short: Ray's socket paths must fit in 107 bytes
    env = _env(RAY_USAGE_STATS_ENABLED="0")
    common = [
        "--num-cpus",
        "1",
        "--object-store-memory",
        str(100 * 2**20),
        "--block",
        "--disable-usage-stats",
    ]
    head = [str(BIN / "ray"), "start", "--head", "--node-ip-address", HOST_A, "--port", str(port)]
    head += ["--include-dashboard", "false", "--temp-dir", str(temp), *common]
    worker = [
        str(BIN / "ray"),
        "start",
        "--address",
        f"{HOST_A}:{port}",
        "--node-ip-address",
        HOST_B,
        *common,
    ]
    with processes([head], tmp_path / "logs-head", env) as (procs, logs):
        wait_port(HOST_A, port, 180, procs, logs)
        with processes([worker], tmp_path / "logs-worker", env) as (wprocs, wlogs):
            monkeypatch.setenv("RAY_ADDRESS", f"{HOST_A}:{port}")
            try:
                connect_distributor("ray")
                deadline = time.monotonic() + 120
                while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
                    time.sleep(1)
                hosts = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
                assert hosts == [HOST_A, HOST_B], hosts
                rows, seconds = download_rows(chunk, tmp_path / "out", "ray")
            finally:
                ray.shutdown()
    expected, baseline = multiprocessing_rows
    assert rows == expected
    _report("ray (head + 1 worker node, 1 CPU each)", len(rows), seconds, baseline)


# --- (a) Prefect on a Dask cluster ---------------------------------------------------------------------------


def test_build_flow_runs_its_chunk_tasks_and_clip_scoring_on_a_dask_cluster(web, tmp_path):
    port = free_port()
    # img2dataset's process pool cannot start inside the nanny's daemonic worker process
    env = _env(DASK_DISTRIBUTED__WORKER__DAEMON="False")
    scheduler = [str(BIN / "dask"), "scheduler", "--host", HOST_A, "--port", str(port), "--no-dashboard"]
    workers = [
        [
            str(BIN / "dask"),
            "worker",
            f"tcp://{HOST_A}:{port}",
            "--host",
            host,
            "--nthreads",
            "1",
            "--nworkers",
            "1",
        ]
        + ["--no-dashboard", "--name", f"worker-{host}", "--local-directory", str(tmp_path / f"dask-{host}")]
        for host in (HOST_A, HOST_B)
    ]
    wit = web.write_wit(tmp_path / "site.tsv")
    checkpoint = tmp_path / "tiny.pt"
    _tiny_checkpoint(checkpoint)
    out = tmp_path / "ds"
    args = [sys.executable, "-m", "pipelines", "run", "build-dataset", f"source=wit:{wit}", f"out={out}"]
    args += [
        "allow_networks=127.0.0.1/32",
        "chunk_size=12",
        "image_size=32",
        "processes=1",
        "threads=4",
        "timeout=5",
    ]
    args += [f"clip_checkpoint={checkpoint}", "clip_top_fraction=0.9", "runner.download_concurrency=2"]
    with processes([scheduler, *workers], tmp_path / "logs", env) as (procs, logs):
        wait_port(HOST_A, port, 120, procs, logs)
        from distributed import Client

        with Client(f"tcp://{HOST_A}:{port}", timeout=30) as client:
            client.wait_for_workers(2, timeout=120)
            client.get_task_stream()  # installs the scheduler's task-stream plugin: which worker ran what
            started = time.perf_counter()
            done = subprocess.run(
                [*args, "--dask-address", f"tcp://{HOST_A}:{port}"],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            assert done.returncode == 0, done.stderr[-4000:]
            stream = client.get_task_stream()
    result = json.loads(done.stdout[done.stdout.index("{") :])
    chunks = result["chunks"]
    assert len(chunks) >= 2
    ran = [(record["key"], record["worker"]) for record in stream]
    downloads = [(k, w) for k, w in ran if "download" in str(k)]
    scoring = [(k, w) for k, w in ran if "score_chunk" in str(k)]  # Dask keys: function names
    assert len(downloads) == len(chunks), ran  # every chunk task ran on the cluster
    assert len(scoring) == len(chunks), ran  # CLIP scoring too, one task per chunk
    assert sum("dedup_increment" in str(k) for k, _ in ran) == 1, ran  # and the dedup they wait for
    assert {w.split("//")[1].rsplit(":", 1)[0] for _, w in ran} <= {HOST_A, HOST_B}
    assert len(list((out / "work" / "clip").glob("chunk-*.parquet"))) == len(chunks)  # what finalize merged
    table = pq.read_table(next((out / "shards").glob("*.parquet")), columns=["clip_score"])
    assert table.num_rows and table["clip_score"].null_count == 0
    rows = sum(c["rows"] for c in chunks)
    per_worker = {host: sum(host in w for _, w in downloads) for host in (HOST_A, HOST_B)}

    started = time.perf_counter()  # the same flow on the default thread pool, for the overhead
    local = subprocess.run(
        [*args[:6], f"out={tmp_path / 'local'}", *args[7:]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    local_seconds = time.perf_counter() - started
    assert local.returncode == 0, local.stderr[-3000:]
    assert pq.read_table(out / "shards").num_rows == pq.read_table(tmp_path / "local" / "shards").num_rows
    print(
        f"\ndask (scheduler + 2 workers): {rows} candidate rows, {len(chunks)} chunks in {seconds:.1f} s "
        f"({rows / seconds:.2f} rows/s incl. flow start; thread pool {local_seconds:.1f} s, "
        f"overhead x{seconds / local_seconds:.2f}); chunks per worker {per_worker}; keys {[k for k, _ in ran]}"
    )


def _tiny_checkpoint(path: Path) -> None:
    import torch

    from models import create_model, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(path, create_model("clip-tiny")[0], "clip-tiny")


def test_dask_address_is_refused_for_train_and_evaluate_with_a_clear_line(tmp_path):
    for flow in ("train", "evaluate"):
        done = subprocess.run(
            [sys.executable, "-m", "pipelines", "run", flow, "--dask-address", "tcp://127.0.0.2:1"],
            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        line = done.stderr.strip().splitlines()[-1]
        assert "--dask-address" in line and "torchrun" in line and "Traceback" not in done.stderr, line


# --- (c) torchrun across two launchers ------------------------------------------------------------------------


def test_torchrun_two_nodes_train_the_weights_of_one_node(tmp_path):
    import torch

    from models import read_checkpoint
    from testbed.datasets import make_shape_dataset

    data = make_shape_dataset(tmp_path / "data", n=64, seed=0, size=32, shards=2, row_group_size=16)
    train = ["-m", "training.train", "--data", str(data), "--model", "clip-tiny", "--steps", "4"]
    train += [
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--seed",
        "3",
        "--checkpoint-every",
        "4",
        "--warmup",
        "1",
    ]
    train += ["--lr", "2e-3", "--no-progress", "--threads", "1"]
    torchrun = [str(BIN / "torchrun")]

    started = time.perf_counter()
    one = subprocess.run(
        [*torchrun, "--standalone", "--nproc-per-node", "2", *train, "--out", str(tmp_path / "one")],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    one_seconds = time.perf_counter() - started
    assert one.returncode == 0, one.stderr[-3000:]

    port = free_port()
    launchers = [
        [*torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank)]
        + [
            "--rdzv-backend",
            "static",
            "--master-addr",
            HOST_A,
            "--master-port",
            str(port),
            "--local-addr",
            host,
        ]
        + [*train, "--out", str(tmp_path / "two")]
        for rank, host in enumerate((HOST_A, HOST_B))
    ]
    started = time.perf_counter()
    with processes(launchers, tmp_path / "logs", _env()) as (procs, logs):
        for proc in procs:
            proc.wait(timeout=600)
        two_seconds = time.perf_counter() - started
        codes = [p.returncode for p in procs]
        assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["world_size"] == 2
    a = read_checkpoint(tmp_path / "one" / "checkpoints" / "step_000004.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "two" / "checkpoints" / "step_000004.pt")["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    print(
        f"\ntorchrun: 2 nodes x 1 process {4 / two_seconds:.2f} steps/s ({two_seconds:.1f} s incl. start), "
        f"1 node x 2 processes {4 / one_seconds:.2f} steps/s ({one_seconds:.1f} s); overhead x{two_seconds / one_seconds:.2f}"
    )
