"""Search latency over HTTP and recall@10 against exact search, at 10k and 1M synthetic vectors.

    python bench/search.py                                   # 10k and 1M vectors of width 512
    python bench/search.py --sizes 10000 --queries 50        # quick

For each size, in one run: synthetic unit vectors (clustered, as CLIP embeddings are: many
concepts, each a cloud), two indexes written by `apps.search.index.write_index_files` and served
by `python -m apps.search serve` in their own process with one thread each:
- ours: exactly what `python -m apps.search index` writes for that many vectors: the index type it
  picks for the size (exact Flat when small, IVF when large) with the nprobe it tuned at index time
  for recall@10 >= 0.95 (`apps.search.index.tune_nprobe`, recorded in index.json);
- baseline: exact search (faiss IndexFlatIP) behind the same service.
Queries are held-out vectors (not the index's tuning queries) sent as POST /knn {"vector": [...],
"k": 10}, one client, keep-alive, the two servers alternating in order, repeated. Recall@10 is
measured on the served answers against exact inner-product search computed here. Prints p50/p95
per server, the ratio and the spread over repeats, the machine's load average (the cores are
shared), and where a query's time goes: the client's own CPU (it runs on the same cores), the
server's handler (`took_ms`, of which `cpu_ms` is CPU), and the rest (HTTP, uvicorn, scheduling).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import httpx
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.search.index import IndexSettings, build_faiss, read_index_meta, write_index_files  # noqa: E402
from common.atomic import atomic_write_json  # noqa: E402

K = 10


def clustered_vectors(n: int, dim: int, seed: int, clusters: int, spread: float, centers=None) -> np.ndarray:
    """Unit vectors around `clusters` random unit centres; `spread` is the noise norm relative to 1."""
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = rng.standard_normal((clusters, dim)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        chunk = centers[rng.integers(0, len(centers), m)] + rng.standard_normal((m, dim)).astype(
            np.float32
        ) * (spread / np.sqrt(dim))
        out[start : start + m] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out, centers


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index.search(queries, k)[1]


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t[:K])) / K for f, t in zip(found, truth)]))


def write_indexes(work: Path, vectors: np.ndarray) -> tuple[Path, Path]:
    """ours (automatic type) and baseline (Flat) sharing the metadata and vector files (hard links)."""
    n = len(vectors)
    rows = pa.table({"key": pa.array([f"{i:09d}" for i in range(n)])})
    ours, base = work / "ours", work / "exact"
    if all(
        (d / "index.json").is_file()
        and read_index_meta(d)["count"] == n
        and "target_recall" in read_index_meta(d)["faiss"]["image"]  # written by this version
        for d in (ours, base)
    ):
        print(f"  reusing the indexes in {work} (same seeds: same vectors)", flush=True)
        return ours, base
    t0 = time.perf_counter()
    write_index_files(ours, rows, {"image": vectors}, clip=None, settings=IndexSettings(progress=False))
    build_s = time.perf_counter() - t0
    base.mkdir(parents=True, exist_ok=True)
    for f in ours.iterdir():
        if f.is_file() and f.name not in ("image.faiss", "index.json"):
            os.link(f, base / f.name)
    faiss.write_index(build_faiss(vectors, "Flat"), str(base / "image.faiss"))
    meta = read_index_meta(ours)
    meta["faiss"] = {"image": {"type": "Flat", "nprobe": 1, "recall_at_10": 1.0, "target_recall": 1.0}}
    atomic_write_json(base / "index.json", meta)
    meta_ours = read_index_meta(ours)
    print(f"  index written in {build_s:.1f} s: {meta_ours['faiss']['image']['type']}", flush=True)
    return ours, base


class Server:
    def __init__(self, index_dir: Path, port: int, threads: int):
        cmd = [
            sys.executable,
            "-m",
            "apps.search",
            "serve",
            str(index_dir),
            "--port",
            str(port),
            "--threads",
            str(threads),
        ]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=120)
        deadline = time.monotonic() + 180
        while True:
            try:
                if self.client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"server for {index_dir} did not start: {self.proc.stderr.read().decode()[-500:]}"
                )
            time.sleep(0.2)

    def query(self, vector: np.ndarray) -> dict:
        """One request; wall time and the client's CPU time (this thread) include reading the reply."""
        body = json.dumps({"vector": [round(float(x), 6) for x in vector], "k": K})
        t0, c0 = time.perf_counter(), time.thread_time()
        reply = self.client.post("/knn", content=body, headers={"content-type": "application/json"})
        reply.raise_for_status()
        data = reply.json()
        elapsed, client_cpu = time.perf_counter() - t0, time.thread_time() - c0
        return {
            "ms": 1000 * elapsed,
            "client_cpu_ms": 1000 * client_cpu,
            "handler_ms": data["took_ms"],
            "server_cpu_ms": data["cpu_ms"],
            "ids": [h["id"] for h in data["results"]],
        }

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def run_size(n: int, args, work: Path, port: int) -> dict:
    print(f"\n== {n:,} vectors of width {args.dim}", flush=True)
    clusters = max(10, n // 100)
    vectors, centers = clustered_vectors(n, args.dim, seed=1, clusters=clusters, spread=args.spread)
    queries, _ = clustered_vectors(
        args.queries, args.dim, seed=3, clusters=clusters, spread=args.spread, centers=centers
    )
    ours_dir, base_dir = write_indexes(work / f"n{n}", vectors)
    tuned = read_index_meta(ours_dir)["faiss"]["image"]
    print(
        f"  ours: {tuned['type']}, nprobe {tuned['nprobe']} chosen at index time "
        f"(recall@10 {tuned['recall_at_10']:.3f} on its tuning queries, target {tuned['target_recall']})",
        flush=True,
    )
    truth = exact_top(vectors, queries)
    del vectors
    servers = {
        "ours": Server(ours_dir, port, args.threads),
        "exact": Server(base_dir, port + 1, args.threads),
    }
    try:
        for server in servers.values():  # warm up: page the memory-mapped files in
            for q in queries[: min(20, len(queries))]:
                server.query(q)
        samples = {name: [] for name in servers}  # one list of query records per repeat
        loads = [os.getloadavg()[0]]
        for rep in range(args.repeats):
            order = list(servers) if rep % 2 == 0 else list(reversed(servers))
            for name in order:
                samples[name].append([servers[name].query(q) for q in queries])
            loads.append(os.getloadavg()[0])
    finally:
        for server in servers.values():
            server.close()
    meta = read_index_meta(ours_dir)
    result = {
        "n": n,
        "dim": args.dim,
        "index": meta["faiss"]["image"]["type"],
        "nprobe": tuned["nprobe"],
        "tuned_recall_at_10": tuned["recall_at_10"],
        "load_avg_1min": loads,
    }
    for name in servers:
        every = [s for rep in samples[name] for s in rep]

        def pct(field: str, q: float, every=every) -> float:
            return float(np.percentile([s[field] for s in every], q))

        slowest = sorted(every, key=lambda s: s["ms"])[int(0.95 * len(every)) :]  # the p95 tail
        result[name] = {
            "p50_ms": pct("ms", 50),
            "p95_ms": pct("ms", 95),
            "p95_per_repeat_ms": [float(np.percentile([s["ms"] for s in rep], 95)) for rep in samples[name]],
            "recall_at_10": recall([s["ids"] for s in samples[name][0]], truth),
            "server_cpu_ms_p50": pct("server_cpu_ms", 50),
            "handler_ms_p50": pct("handler_ms", 50),
            "client_cpu_ms_p50": pct("client_cpu_ms", 50),
            "client_cpu_ms_p95": pct("client_cpu_ms", 95),
            "tail_client_cpu_ms": float(np.mean([s["client_cpu_ms"] for s in slowest])),
            "tail_handler_ms": float(np.mean([s["handler_ms"] for s in slowest])),
            "tail_ms": float(np.mean([s["ms"] for s in slowest])),
        }
    result["p95_ratio_exact_over_ours"] = result["exact"]["p95_ms"] / result["ours"]["p95_ms"]
    for name in servers:
        r = result[name]
        spread = r["p95_per_repeat_ms"]
        print(
            f"  {name:>5}: p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms "
            f"(repeats {min(spread):.1f}-{max(spread):.1f}), recall@10 {r['recall_at_10']:.3f}; per query p50: "
            f"server handler {r['handler_ms_p50']:.2f} ms (CPU {r['server_cpu_ms_p50']:.2f}), "
            f"client CPU {r['client_cpu_ms_p50']:.2f} ms (p95 {r['client_cpu_ms_p95']:.2f}); "
            f"slowest 5%: {r['tail_ms']:.1f} ms of which client CPU {r['tail_client_cpu_ms']:.1f}, "
            f"handler {r['tail_handler_ms']:.1f}",
            flush=True,
        )
    print(f"  p95 exact / ours: {result['p95_ratio_exact_over_ours']:.2f}x; load average {loads}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,1000000", help="comma-separated vector counts")
    parser.add_argument("--dim", type=int, default=512, help="vector width (ViT-B-32: 512)")
    parser.add_argument(
        "--spread", type=float, default=1.0, help="cluster noise norm (1 = as far as the centres)"
    )
    parser.add_argument("--queries", type=int, default=200, help="queries per server and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads per server")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument(
        "--work", type=Path, help="where the indexes go (default: a temporary folder, removed)"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_search_"))
    print(f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()}", flush=True)
    try:
        results = [run_size(int(s), args, work, args.port) for s in args.sizes.split(",")]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        "\n| vectors | index (ours) | nprobe | p50 ours | p95 ours | p50 exact | p95 exact | p95 ratio "
        "| recall@10 ours | server CPU/query ours, exact | client CPU/query p50, p95 | load average |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['n']:,} x {r['dim']} | {r['index']} | {r['nprobe']} | {r['ours']['p50_ms']:.1f} ms | "
            f"{r['ours']['p95_ms']:.1f} ms | {r['exact']['p50_ms']:.1f} ms | {r['exact']['p95_ms']:.1f} ms | "
            f"{r['p95_ratio_exact_over_ours']:.2f}x | {r['ours']['recall_at_10']:.3f} | "
            f"{r['ours']['server_cpu_ms_p50']:.2f} ms, {r['exact']['server_cpu_ms_p50']:.2f} ms | "
            f"{r['ours']['client_cpu_ms_p50']:.2f}, {r['ours']['client_cpu_ms_p95']:.2f} ms | "
            f"{min(r['load_avg_1min']):.1f}-{max(r['load_avg_1min']):.1f} |"
        )


if __name__ == "__main__":
    main()
