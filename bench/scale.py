"""Streaming at scale: a synthetic WIT TSV of up to 1 M rows through read, text filters and candidate writing.

    python bench/scale.py                        # 10k, 100k and 1M rows, 2 repeats (1 at 1M), alternating order
    python bench/scale.py --sizes 10000 100000 --repeats 1

Each measurement runs in a fresh process (peak RSS is per process), and three variants run at every size,
in alternating order:

- `reader`:   `curation.wit.read_wit` alone, every row parsed and dropped (the floor: what reading costs)
- `collect`:  `curation.build.collect_candidates` (ours): read + caption choice + URL check + text filters
              (length, boilerplate, language with py3langid) + URL dedup + candidate chunks and rejects
              written as Parquet; memory holds one chunk of rows and ~70 bytes per URL
- `hold-all`: the same rows read into one list first (what a non-streaming reader holds), for memory only
              (up to --max-hold-all rows)

Prints rows/s and peak RSS per size, the ratio collect/reader and the spread over repeats, and the growth of
RSS from 10k to 1M rows (goal: at most 1 GB at 1M).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from curation.schema import WIT_COLUMNS

REPO = Path(__file__).resolve().parents[1]
COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "black", "white", "grey", "brown"]
THINGS = ["circle", "square", "triangle", "star", "house", "tree", "boat", "bird", "flower", "car", "hat"]
PLACES = ["on a white page", "in a sketchbook", "on a poster", "drawn with a pen", "cut from paper"]
GERMAN = ["Ein rotes Haus mit einem kleinen Garten", "Zwei blaue Vögel sitzen auf dem Dach"]


def write_tsv(path: Path, rows: int, seed: int = 0) -> Path:
    """`rows` WIT lines (header first): ~90 % clean captions, the rest junk the filters must reject."""
    rng = np.random.default_rng(seed)
    kinds = rng.random(rows)
    colour = rng.integers(len(COLOURS), size=rows)
    thing = rng.integers(len(THINGS), size=rows)
    place = rng.integers(len(PLACES), size=rows)
    empty = dict.fromkeys(WIT_COLUMNS, "")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\t".join(WIT_COLUMNS) + "\n")
        for i in range(rows):
            row = dict(empty)
            page = i // 7
            row.update(
                language="en",
                page_url=f"http://127.0.0.1:9/wiki/page{page}",
                image_url=f"http://127.0.0.1:9/img/{i}.jpg",
                page_title=f"Gallery {page}",
                caption_reference_description=(
                    f"A {COLOURS[colour[i]]} {THINGS[thing[i]]} {PLACES[place[i]]}, number {i % 997}"
                ),
                mime_type="image/jpeg",
                original_height="480",
                original_width="640",
            )
            k = kinds[i]
            if k < 0.03:
                row["caption_reference_description"] = f"IMG_{i % 9000 + 1000}.JPG"
            elif k < 0.05:
                row["caption_reference_description"] = "image"
            elif k < 0.07:
                row["caption_reference_description"] = GERMAN[i % 2]
            elif k < 0.08:
                row["image_url"] = f"ftp://127.0.0.1/img/{i}.jpg"
            elif k < 0.10:
                row["image_url"] = f"http://127.0.0.1:9/img/{max(0, i - 3)}.jpg"  # an earlier row's image
            fh.write("\t".join(row[c] for c in WIT_COLUMNS) + "\n")
    return path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(mode: str, tsv: Path, out: Path) -> dict:
    """One measurement in this (fresh) process."""
    from curation.wit import read_wit

    start = time.perf_counter()
    if mode == "reader":
        rows = sum(1 for _ in read_wit(tsv))
    elif mode == "hold-all":
        held = list(read_wit(tsv))
        rows = len(held)
    else:
        from curation.build import collect_candidates
        from curation.config import BuildConfig

        result = collect_candidates(
            BuildConfig(out=out, source=[f"wit:{tsv}"], allow_networks=["127.0.0.0/8"], chunk_size=5000)
        )
        rows = result.candidates + result.rejected
    seconds = time.perf_counter() - start
    return {"mode": mode, "rows": rows, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def measure(mode: str, tsv: Path, scratch: Path) -> dict:
    out = scratch / f"ds-{mode}-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--worker", mode, str(tsv), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} on {tsv} failed:\n{done.stderr[-3000:]}")
    subprocess.run(["rm", "-rf", str(out)], check=False)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=2, help="repeats per size below 1M rows")
    parser.add_argument("--large-repeats", type=int, default=1, help="repeats at 1M rows and more")
    parser.add_argument(
        "--max-hold-all", type=int, default=100_000, help="largest size for hold-all (it holds every row)"
    )
    parser.add_argument("--modes", nargs="+", default=["reader", "collect", "hold-all"])
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "TSV", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        mode, tsv, out = args.worker
        print(json.dumps(worker(mode, Path(tsv), Path(out))))
        return 0

    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        scratch = Path(tmp)
        for size in args.sizes:
            t = time.perf_counter()
            tsv = write_tsv(scratch / f"wit-{size}.tsv", size)
            print(
                f"{size:>9,} rows: TSV {tsv.stat().st_size / 1e6:.0f} MB written in {time.perf_counter() - t:.0f} s"
            )
            modes = [m for m in args.modes if m != "hold-all" or size <= args.max_hold_all]
            for repeat in range(args.repeats if size < 1_000_000 else args.large_repeats):
                order = modes if repeat % 2 == 0 else modes[::-1]  # alternate the order
                for mode in order:
                    r = measure(mode, tsv, scratch)
                    results.setdefault((mode, size), []).append(r)
                    print(
                        f"  {mode:9s} repeat {repeat}: {r['rows'] / r['seconds']:>9,.0f} rows/s "
                        f"({r['seconds']:.1f} s), peak RSS {r['peak_rss_mb']:,.0f} MB",
                        flush=True,
                    )
            tsv.unlink()

    print("\n| rows | variant | rows/s (median) | spread | peak RSS MB (max) |")
    print("|---:|---|---:|---:|---:|")
    for (mode, size), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rates = [r["rows"] / r["seconds"] for r in runs]
        spread = (max(rates) - min(rates)) / statistics.median(rates) * 100 if len(rates) > 1 else 0.0
        rss = max(r["peak_rss_mb"] for r in runs)
        print(f"| {size:,} | {mode} | {statistics.median(rates):,.0f} | ±{spread / 2:.0f} % | {rss:,.0f} |")
    for size in args.sizes:
        if ("collect", size) in results and ("reader", size) in results:
            ours = statistics.median(r["rows"] / r["seconds"] for r in results[("collect", size)])
            floor = statistics.median(r["rows"] / r["seconds"] for r in results[("reader", size)])
            print(f"{size:>9,} rows: collect/reader speed ratio {ours / floor:.2f}")
    if (
        ("collect", args.sizes[0]) in results
        and ("collect", args.sizes[-1]) in results
        and len(args.sizes) > 1
    ):
        small = max(r["peak_rss_mb"] for r in results[("collect", args.sizes[0])])
        large = max(r["peak_rss_mb"] for r in results[("collect", args.sizes[-1])])
        grow = np.log(large / small) / np.log(args.sizes[-1] / args.sizes[0])
        verdict = "within" if large <= 1024 else "OVER"
        print(
            f"collect peak RSS {small:,.0f} MB at {args.sizes[0]:,} rows -> {large:,.0f} MB at {args.sizes[-1]:,} "
            f"(growth exponent {grow:.2f}; {verdict} the 1 GB goal)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
