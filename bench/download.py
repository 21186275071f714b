"""Throughput of `curation build` (no CLIP score) against plain img2dataset on the same candidate list.

    python -m bench.download --pages 120 --repeats 3

Serves the loopback web (testbed/testweb.py) on 127.0.0.1 and writes its WIT TSV. Both sides fetch
the same URL list: the candidates that our reader and text filters keep from the TSV are collected
once (untimed) and handed to plain img2dataset as a parquet URL list. Then, alternating which goes
first in each repeat: (a) `img2dataset.download` on that list (its urllib `download_image`, parquet
output, same image size, processes, threads and shard split), (b) `build_dataset` on `wit:TSV` (reader,
text filters, img2dataset per chunk with our guarded fetch: address pinning, redirect checks,
robots.txt of image hosts, byte cap, deadline; image filters, pHash, dedup, shards, report). Prints
each run, the ratio plain time / our time per repeat, its median and spread (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@dataclass(frozen=True)
class BenchOptions:
    pages: int = 120
    repeats: int = 3
    processes: int = 2
    threads: int = 16
    image_size: int = 64


def plain_img2dataset(urls: Path, out: Path, rows: int, opt: BenchOptions) -> float:
    from img2dataset import download

    started = time.perf_counter()
    download(
        url_list=str(urls),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        output_format="parquet",
        output_folder=str(out),
        image_size=opt.image_size,
        resize_mode="center_crop",
        processes_count=opt.processes,
        thread_count=opt.threads,
        number_sample_per_shard=max(1, -(-rows // opt.processes)),
        timeout=10,
        enable_wandb=False,
        save_additional_columns=["page_url", "page_title", "section_title", "caption_alt_text_description"],
    )
    return time.perf_counter() - started


def same_url_list(wit: Path, root: Path, opt: BenchOptions) -> tuple[Path, int]:
    """The candidates our build downloads from `wit` (after reader and text filters), as one parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.build import collect_candidates
    from curation.config import BuildConfig

    cfg = BuildConfig(out=root / "url_list", source=[f"wit:{wit}"], allow_networks=["127.0.0.1/32"])
    chunks = collect_candidates(cfg).chunks
    table = pa.concat_tables([pq.read_table(c.path) for c in chunks])
    path = root / "urls.parquet"
    pq.write_table(table, path)
    shutil.rmtree(root / "url_list")
    return path, table.num_rows


def our_build(wit: Path, out: Path, opt: BenchOptions) -> float:
    from curation.build import build_dataset
    from curation.config import BuildConfig

    cfg = BuildConfig(
        out=out,
        source=[f"wit:{wit}"],
        allow_networks=["127.0.0.1/32"],
        image_size=opt.image_size,
        processes=opt.processes,
        threads=opt.threads,
    )
    started = time.perf_counter()
    build_dataset(cfg)
    return time.perf_counter() - started


def run(opt: BenchOptions) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from testbed.web import serve_testweb

    times: dict[str, list[float]] = {"img2dataset": [], "curation build": []}
    with (
        tempfile.TemporaryDirectory(prefix="bench_download_") as tmp,
        serve_testweb(pages=opt.pages, seed=0, slow_delay_s=0.5) as web,
    ):
        root = Path(tmp)
        wit = web.write_wit(root / "site.tsv")
        urls, rows = same_url_list(wit, root, opt)
        for i in range(opt.repeats):
            order = list(times) if i % 2 == 0 else list(reversed(times))  # who goes first alternates
            for name in order:
                out = root / f"{name.replace(' ', '_')}_{i}"
                if name == "img2dataset":
                    seconds = plain_img2dataset(urls, out, rows, opt)
                else:
                    seconds = our_build(wit, out, opt)
                times[name].append(seconds)
                shutil.rmtree(out, ignore_errors=True)
    ratios = [p / o for p, o in zip(times["img2dataset"], times["curation build"])]
    plain = statistics.median(times["img2dataset"])
    ours = statistics.median(times["curation build"])
    return {"rows": rows, "times": times, "plain_s": plain, "ours_s": ours, "ratios": ratios,
            "ratio": statistics.median(ratios)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=BenchOptions.pages, help="pages of the loopback site")
    parser.add_argument("--repeats", type=int, default=BenchOptions.repeats, help="runs of each, alternating")
    parser.add_argument("--processes", type=int, default=BenchOptions.processes)
    parser.add_argument("--threads", type=int, default=BenchOptions.threads)
    parser.add_argument("--image-size", type=int, default=BenchOptions.image_size)
    args = parser.parse_args(argv)
    opt = BenchOptions(args.pages, args.repeats, args.processes, args.threads, args.image_size)
    result = run(opt)
    rows = result["rows"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(
        f"candidates: {rows} image URLs (loopback web, {opt.pages} pages), {opt.processes} processes x {opt.threads} threads"
    )
    print("| pipeline | runs (s) | median (s) | rows/s |")
    print("|---|---|---:|---:|")
    for name, runs in result["times"].items():
        median = statistics.median(runs)
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in runs)} | {median:.1f} | {rows / median:.1f} |")
    ratios = result["ratios"]
    print(
        f"throughput ratio curation build / img2dataset per repeat: {', '.join(f'{r:.2f}' for r in ratios)}; "
        f"median {result['ratio']:.2f}, spread {min(ratios):.2f}-{max(ratios):.2f} (goal >= 0.9)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
