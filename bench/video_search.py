"""Benchmark of apps.clip4clip: vector search (faiss vs brute force) and video decoding + encoding.

Part 1, search: N random 512-d unit vectors; queries are noisy copies of random database vectors
(cosine about 0.7 to their source, like a caption near its video). Baseline: exact brute force
(numpy matrix product + argpartition), measured in the same run. Reported: per-query latency,
recall@10 against the exact top-10, and the speed ratio to the baseline.

Part 2, frames: frames/s of our reader (two-pass PyAV, codec threads, early shrink) + CLIP image
encoding, against the naive baseline of decoding every frame at full size to RGB and sampling after.
Part 3, memory: peak RSS of reading a 4000x4000 video, ours vs the same naive baseline.

    python bench/video_search.py                 # 1 M vectors (about 2 GB of RAM, a few minutes on 2 cores)
    python bench/video_search.py --n 100000      # quicker
    python bench/video_search.py --n 0 --videos 16 --huge-frames 0             # frames part only
    python bench/video_search.py --data clustered --videos 0 --huge-frames 0   # one data kind, search only

The headline IVF row is the index `python -m apps.clip4clip index` builds for that many videos, with its
own nprobe (apps.clip4clip.index.build_faiss_index: IVF sqrt(n) lists, nprobe = max(16, lists / 16));
`--nprobe` adds rows with other probe counts for comparison. Both data kinds by default: random
(i.i.d. Gaussian, no cluster structure: the worst case for IVF) and clustered (`--topics` topic centres
plus noise; not as many topics as lists, so the lists do not line up with the clusters). Each table is
printed under the exact command that reproduces it alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ db.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def per_query_ms(search, queries: np.ndarray) -> float:
    """Median latency of single-query calls (what a person typing a query waits for)."""
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def bench_search(
    n: int, dim: int, n_queries: int, k: int, nprobes: list[int], seed: int, data: str, topics: int
) -> list[str]:
    from apps.clip4clip.index import build_faiss_index, choose_faiss_type

    rng = np.random.default_rng(seed)
    what = f"{data} ({topics} topics)" if data == "clustered" else data
    print(f"search: {n:,} x {dim} {what} unit vectors, {n_queries} queries, k={k}", flush=True)
    # clustered: topic centres, each vector a centre plus noise, as real embeddings cluster by content.
    centres = rng.standard_normal((topics, dim)).astype(np.float32) if data == "clustered" else None
    db = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in chunks: the float64 normal draw of 1 M x 512 would need 4 GB
        count = min(100_000, n - start)
        block = rng.standard_normal((count, dim)).astype(np.float32)
        if centres is not None:
            block = centres[rng.integers(len(centres), size=count)] + 0.6 * block
        db[start : start + count] = unit(block)
    sources = rng.choice(n, n_queries, replace=False)
    queries = unit(
        db[sources] + rng.standard_normal((n_queries, dim)).astype(np.float32) * (1.0 / np.sqrt(dim))
    )

    exact = brute_force(db, queries, k)
    base_ms = per_query_ms(lambda q: brute_force(db, q, k), queries[:30])
    rows = [("brute force (numpy)", base_ms, 1.0, "-")]

    flat = build_faiss_index(db, "Flat")
    ms = per_query_ms(lambda q: flat.search(q, k), queries[:30])
    product_kind = choose_faiss_type(n)
    label = "faiss IndexFlatIP" + (" (what `index` builds for this n)" if product_kind == "Flat" else "")
    rows.append((label, ms, recall_at_k(flat.search(queries, k)[1], exact), "-"))
    flat.reset()  # free its copy of the vectors before the IVF build

    if product_kind != "Flat":
        start = time.perf_counter()
        ivf = build_faiss_index(db, seed=seed)  # exactly what `python -m apps.clip4clip index` builds
        build_s = time.perf_counter() - start
        ivf_part = faiss.extract_index_ivf(ivf)
        product_nprobe = ivf_part.nprobe
        for nprobe in [product_nprobe] + [p for p in nprobes if p != product_nprobe]:
            ivf_part.nprobe = nprobe
            ms = per_query_ms(lambda q: ivf.search(q, k), queries)
            found = ivf.search(queries, k)[1]
            mark = " (what `index` builds: its own nprobe)" if nprobe == product_nprobe else ""
            rows.append(
                (
                    f"faiss {product_kind} nprobe={nprobe}{mark}",
                    ms,
                    recall_at_k(found, exact),
                    f"{build_s:.0f} s",
                )
            )

    lines = [
        f"| index | ms / query | recall@{k} | speed-up vs brute force | build |",
        "|---|---|---|---|---|",
    ]
    for name, ms, recall, build in rows:
        lines.append(f"| {name} | {ms:.2f} | {recall:.3f} | {base_ms / ms:.1f}x | {build} |")
    return lines


def bench_frames(n_videos: int, model_name: str, max_frames: int) -> list[str]:
    import av
    import torch

    from apps.clip4clip.cache import encode_images
    from apps.clip4clip.video import FrameSampling, choose_times, read_video
    from models import create_model
    from testbed.videos import SynthConfig, generate_synthetic_set

    with tempfile.TemporaryDirectory() as tmp:
        made = generate_synthetic_set(
            tmp, SynthConfig(n_train=n_videos, n_test_pairs=0, size=256, fps=25, event_seconds=2.0)
        )
        paths = sorted(made.videos_dir.glob("*.mp4"))
        sampling = FrameSampling(max_frames=max_frames, fps=None)

        def naive(path: Path) -> list:
            # Baseline: every frame decoded to a full-size RGB array, then uniform sampling.
            with av.open(str(path)) as container:
                frames = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
            keep = set(choose_times([t for t, _ in frames], sampling))
            return [a for t, a in frames if t in keep]

        start = time.perf_counter()
        naive_frames = sum(len(naive(p)) for p in paths)
        naive_s = time.perf_counter() - start
        start = time.perf_counter()
        videos = [read_video(p, sampling) for p in paths]
        ours_s = time.perf_counter() - start
        ours_frames = sum(len(v.frames) for v in videos)

        torch.manual_seed(0)
        model, _, preprocess, _ = create_model(model_name)
        model.eval()
        images = [im for v in videos for im in v.frames]
        start = time.perf_counter()
        encode_images(model, preprocess, images)
        encode_s = time.perf_counter() - start
    return [
        f"{len(paths)} synthetic 256x256 H.264 videos, 100 frames each, {max_frames} sampled per video; encoder {model_name}",
        "",
        "| stage | frames kept | seconds | kept frames / s | ratio |",
        "|---|---|---|---|---|",
        f"| naive decode (all frames to RGB, then sample) | {naive_frames} | {naive_s:.2f} | {naive_frames / naive_s:.0f} | 1.0x |",
        f"| our reader (2-pass, threads, early shrink) | {ours_frames} | {ours_s:.2f} | {ours_frames / ours_s:.0f} | "
        f"{(ours_frames / ours_s) / (naive_frames / naive_s):.1f}x |",
        f"| CLIP image encoding | {len(images)} | {encode_s:.2f} | {len(images) / encode_s:.0f} | - |",
        f"| decode + encode | {ours_frames} | {ours_s + encode_s:.2f} | {ours_frames / (ours_s + encode_s):.0f} | - |",
    ]


def _memory_mb(field: str) -> int:
    """VmHWM (peak) or VmRSS (current) of this process in MB: Linux /proc, fresh in a spawned process.

    (getrusage's ru_maxrss would carry the parent's peak over fork + exec.)
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no {field} in /proc/self/status: this measurement needs Linux")


def _peak_rss_reading(path: str, mode: str) -> tuple[int, float, int]:
    """Run in a fresh process: (frames, seconds, peak RSS growth in MB) of reading one video."""
    import av

    from apps.clip4clip.video import FrameSampling, read_video

    before = _memory_mb("VmRSS")
    start = time.perf_counter()
    if mode == "ours":
        count = len(read_video(path, FrameSampling(max_frames=12, fps=None)).frames)
    else:
        with av.open(path) as container:
            count = len([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    seconds = time.perf_counter() - start
    return count, seconds, _memory_mb("VmHWM") - before


def bench_huge(frames: int) -> list[str]:
    """Peak memory of reading a 4000x4000 video: ours (bounded) vs decoding every frame to RGB."""
    import multiprocessing

    from testbed.videos import write_mp4

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "huge.mp4")
        base = np.zeros((4000, 4000, 3), np.uint8)
        pictures = []
        for i in range(frames):
            picture = base.copy()
            picture[:, i * 100 : i * 100 + 400] = 200
            pictures.append(picture)
        write_mp4(Path(path), pictures, fps=10)
        del pictures
        # One fresh process per reader: peak RSS is a per-process figure.
        with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            naive = pool.apply(_peak_rss_reading, (path, "naive"))
        with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            ours = pool.apply(_peak_rss_reading, (path, "ours"))
    return [
        f"4000x4000 H.264 video, {frames} frames",
        "",
        "| reader | frames returned | seconds | peak RSS growth (MB) |",
        "|---|---|---|---|",
        f"| naive (every frame to full-size RGB) | {naive[0]} | {naive[1]:.1f} | {naive[2]} |",
        f"| ours (12 frames, shrunk on decode) | {ours[0]} | {ours[1]:.1f} | {ours[2]} |",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="database vectors (default 1 M)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument(
        "--nprobe",
        default="32,128",
        help="comma-separated IVF probe counts to compare with the product's own (always measured first)",
    )
    parser.add_argument(
        "--videos", type=int, default=16, help="synthetic videos for the frames/s part (0 skips)"
    )
    parser.add_argument("--model", default="clip-small", help="CLIP whose image encoder is timed")
    parser.add_argument(
        "--huge-frames", type=int, default=30, help="frames of the 4000x4000 memory test (0 skips)"
    )
    parser.add_argument("--max-frames", type=int, default=12)
    parser.add_argument(
        "--data",
        choices=("both", "random", "clustered"),
        default="both",
        help="random: i.i.d. Gaussian, the worst case for IVF; clustered: --topics topics; both (default)",
    )
    parser.add_argument(
        "--topics", type=int, default=4096, help="topic centres of the clustered data (default: 4096)"
    )
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(argv)
    if (ns.n and ns.n < 100) or ns.k < 1 or ns.queries < 1:
        parser.error("--n must be 0 (no search part) or >= 100, -k and --queries >= 1")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads"
    print(f"machine: {machine}")
    search_flags = (
        f"--n {ns.n} --dim {ns.dim} --queries {ns.queries} -k {ns.k} --nprobe {ns.nprobe} --seed {ns.seed}"
    )
    for data in () if not ns.n else ("random", "clustered") if ns.data == "both" else (ns.data,):
        flags = search_flags + (f" --data {data}" + (f" --topics {ns.topics}" if data == "clustered" else ""))
        lines = bench_search(
            ns.n,
            ns.dim,
            ns.queries,
            ns.k,
            [int(x) for x in ns.nprobe.split(",") if x],
            ns.seed,
            data,
            ns.topics,
        )
        print(f"\ncommand: python bench/video_search.py {flags} --videos 0 --huge-frames 0")
        print(f"load average: {os.getloadavg()[0]:.1f}")
        print("\n".join(lines))
    if ns.videos > 0:
        lines = bench_frames(ns.videos, ns.model, ns.max_frames)
        print(
            f"\ncommand: python bench/video_search.py --n 0 --videos {ns.videos} --model {ns.model} "
            f"--max-frames {ns.max_frames} --huge-frames 0"
        )
        print(f"load average: {os.getloadavg()[0]:.1f}")
        print("\n".join(lines))
    if ns.huge_frames > 0:
        lines = bench_huge(ns.huge_frames)
        print(f"\ncommand: python bench/video_search.py --n 0 --videos 0 --huge-frames {ns.huge_frames}")
        print(f"load average: {os.getloadavg()[0]:.1f}")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
