"""Throughput of `curation build` (no CLIP score) against plain img2dataset on the same candidate list.

    python -m bench.download --pages 60 --repeats 2

Serves the loopback web (testbed/testweb.py) on 127.0.0.1, writes its WIT TSV, then in one run,
alternating: (a) `img2dataset.download` on that TSV (parquet output, same image size, processes,
threads, shard split), (b) `build_dataset` on `wit:TSV` (reader, text filters, img2dataset per chunk,
image filters, pHash, dedup, shards, report). Prints rows/s of each and the ratio ours / plain
(goal >= 0.9). Both download every URL of the file, failures included.
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
    pages: int = 60
    repeats: int = 2
    processes: int = 2
    threads: int = 16
    image_size: int = 64


def plain_img2dataset(wit: Path, out: Path, rows: int, opt: BenchOptions) -> float:
    from img2dataset import download

    started = time.perf_counter()
    download(
        url_list=str(wit),
        input_format="tsv",
        url_col="image_url",
        caption_col="caption_reference_description",
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


def our_build(wit: Path, out: Path, opt: BenchOptions) -> float:
    from curation.build import build_dataset
    from curation.config import BuildConfig

    cfg = BuildConfig(
        out=out,
        source=[f"wit:{wit}"],
        allow_private=True,
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
        rows = len(web.site.wit_rows(web.base_url))
        for i in range(opt.repeats):
            for name in times:  # alternate so that neither always runs on a warmer machine
                out = root / f"{name.replace(' ', '_')}_{i}"
                if name == "img2dataset":
                    seconds = plain_img2dataset(wit, out, rows, opt)
                else:
                    seconds = our_build(wit, out, opt)
                times[name].append(seconds)
                shutil.rmtree(out, ignore_errors=True)
    plain = statistics.median(times["img2dataset"])
    ours = statistics.median(times["curation build"])
    return {"rows": rows, "times": times, "plain_s": plain, "ours_s": ours, "ratio": plain / ours}


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
    print(f"throughput ratio curation build / img2dataset: {result['ratio']:.2f} (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
