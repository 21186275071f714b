"""Near-duplicate search at 100k, 1M and 10M hashes: the banded numpy search of before #15 against curation.neardup.

    python -m bench.dedup                                   # 100k, 1M, 10M; radius 8; baseline time-boxed at 600 s
    python -m bench.dedup --sizes 100000 1000000 --repeats 3 --timebox 300

Synthetic hashes: random 64-bit values plus near copies (0-8 flipped bits) of one in seven, as
16-hex-digit strings (the form the dataset stores). Each measurement is a fresh process (`--child`)
so peak RSS (ru_maxrss, hashes included) is its own; the parent kills a run that passes the time
box and records it as unfinished with the RSS it had reached. Order alternates between repeats.
Printed: seconds (median and spread), peak RSS, ratio baseline / ours where both finished, both
found the same groups (checked at the smallest size), and the growth exponent
d log(time) / d log(n) of each between sizes and over all sizes. Goal (issue #15): 10M in at most
10 minutes on 2 cores, peak RSS at most 4 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np

from curation.dedup import hashes_to_ints, near_duplicate_pairs

IMPLEMENTATIONS = ("baseline", "ours")


def baseline_pairs(phashes: Sequence[str], radius: int) -> list[tuple[int, int, int]]:
    """The near-duplicate search of curation/dedup.py before #15, verbatim: radius + 1 exact bands,
    equal band values compared in sorted runs (numpy). Bands of 7 bits at radius 8: chance matches
    grow with n^2 / 128."""
    values = hashes_to_ints(phashes)
    if len(values) < 2:
        return []
    uniq, inverse = np.unique(values, return_inverse=True)
    members: dict[int, list[int]] = {}
    for i, u in enumerate(inverse.tolist()):
        members.setdefault(u, []).append(i)

    def expand(u1: int, u2: int | None, distance: int) -> Iterator[tuple[int, int, int]]:
        a = members[u1]
        b = members[u2] if u2 is not None else a
        if len(a) * len(b) > 10_000:
            if u2 is None:
                yield from ((x, y, distance) for x, y in zip(a, a[1:]))
            else:
                yield from ((a[0], y, distance) for y in b)
            return
        for x in a:
            for y in b:
                if u2 is not None or x < y:
                    yield (x, y, distance)

    pairs = [pair for u, rows in members.items() if len(rows) > 1 for pair in expand(u, None, 0)]
    width = 64 // (radius + 1)
    mask = np.uint64((1 << width) - 1)
    found: set[tuple[int, int]] = set()
    for band in range(radius + 1):
        band_values = (uniq >> np.uint64(band * width)) & mask
        order = np.argsort(band_values, kind="stable")
        sorted_band, sorted_values = band_values[order], uniq[order]
        offset = 1
        while offset < len(order):
            same = np.nonzero(sorted_band[offset:] == sorted_band[:-offset])[0]
            if len(same) == 0:
                break
            dist = np.bitwise_count(sorted_values[same] ^ sorted_values[same + offset])
            close = same[dist <= radius]
            for a, b, d in zip(
                order[close].tolist(), order[close + offset].tolist(), dist[dist <= radius].tolist()
            ):
                pair = (min(a, b), max(a, b))
                if pair not in found:
                    found.add(pair)
                    pairs.extend(expand(pair[0], pair[1], int(d)))
            offset += 1
    return pairs


def synthetic_hashes(n: int, seed: int) -> list[str]:
    """n hashes: random values, then near copies (0-8 flipped bits) of every 7th of the first half."""
    rng = np.random.default_rng(seed)
    planted = n // 14
    values = rng.integers(0, 2**63, size=n - planted, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    values |= rng.integers(0, 2, size=len(values)).astype(np.uint64)
    sources = values[: 7 * planted : 7]
    flips = np.zeros(planted, dtype=np.uint64)
    for _ in range(8):  # each copy gets 0-8 random bit flips (repeats cancel: at most 8)
        bit = rng.integers(0, 64, size=planted).astype(np.uint64)
        flips ^= np.where(rng.random(planted) < 0.5, np.uint64(1) << bit, np.uint64(0))
    values = np.concatenate([values, sources ^ flips])
    return [f"{v:016x}" for v in values.tolist()]


def groups_signature(pairs: list[tuple[int, int, int]], n: int) -> str:
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    for i, j, _ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(n)])
    return hashlib.sha256(roots.tobytes()).hexdigest()


def child(implementation: str, n: int, radius: int, seed: int) -> None:
    hashes = synthetic_hashes(n, seed)
    search = baseline_pairs if implementation == "baseline" else near_duplicate_pairs
    if implementation == "ours":
        near_duplicate_pairs(hashes[:1000], radius)  # compile the kernel (cached on disk after the first run)
    started = time.perf_counter()
    pairs = search(hashes, radius)
    seconds = time.perf_counter() - started
    result = {
        "seconds": seconds,
        "pairs": len(pairs),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if n <= 200_000:
        result["groups"] = groups_signature(pairs, n)
    print(json.dumps(result))


def measure(implementation: str, n: int, radius: int, seed: int, timebox: float) -> dict:
    """One run in a fresh process; a run past `timebox` seconds is killed and reported unfinished."""
    import psutil

    argv = [sys.executable, "-m", "bench.dedup", "--child", implementation, "--n", str(n)]
    argv += ["--radius", str(radius), "--seed", str(seed)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch, peak, started = psutil.Process(proc.pid), 0, time.monotonic()
    try:
        while proc.poll() is None:
            try:
                peak = max(peak, watch.memory_info().rss)
            except psutil.Error:
                pass
            if time.monotonic() - started > timebox + 120:  # + time to generate the hashes
                proc.kill()
                proc.wait()
                return {"seconds": None, "peak_rss_mb": peak / 2**20, "note": f"killed after {timebox:.0f} s"}
            time.sleep(0.5)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        raise SystemExit(f"{implementation} at {n}: exit {proc.returncode}\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    if result["seconds"] > timebox:
        result["note"] = f"over the {timebox:.0f} s time box"
    return result


def exponent(sizes: list[int], seconds: list[float | None]) -> str:
    points = [(math.log(n), math.log(s)) for n, s in zip(sizes, seconds) if s]
    if len(points) < 2:
        return "n/a"
    steps = [f"{(b[1] - a[1]) / (b[0] - a[0]):.2f}" for a, b in zip(points, points[1:])]
    xs, ys = zip(*points)
    slope = np.polyfit(xs, ys, 1)[0]
    return f"{slope:.2f} overall (between sizes: {', '.join(steps)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dedup",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--radius", type=int, default=8, help="pHash Hamming radius (the build's default: 8)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per size below 10M (10M: one run)")
    parser.add_argument("--timebox", type=float, default=600.0, help="seconds before a search is killed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.n, args.radius, args.seed)
        return 0

    load = os.getloadavg()[0]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.1f}; radius {args.radius}"
    )
    table: dict[str, dict[int, list[dict]]] = {impl: {} for impl in IMPLEMENTATIONS}
    given_up: set[str] = set()
    for n in args.sizes:
        repeats = 1 if n >= 10_000_000 else args.repeats
        for r in range(repeats):
            order = IMPLEMENTATIONS if r % 2 == 0 else IMPLEMENTATIONS[::-1]
            for impl in order:
                if impl in given_up:
                    continue
                result = measure(impl, n, args.radius, args.seed + r, args.timebox)
                table[impl].setdefault(n, []).append(result)
                shown = f"{result['seconds']:.1f} s" if result["seconds"] is not None else result["note"]
                print(
                    f"  {n:>10,} {impl:>8} run {r + 1}: {shown}, peak RSS {result['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
                if result["seconds"] is None or result.get("note"):
                    given_up.add(impl)  # larger sizes would only take longer
        first = [table[i].get(n, [{}])[0].get("groups") for i in IMPLEMENTATIONS]
        if first[0] is not None and first[1] is not None:
            print(f"  {n:>10,} same duplicate groups: {first[0] == first[1]}")

    print(
        f"\n{'hashes':>10} | {'baseline s':>16} | {'ours s':>16} | {'baseline / ours':>15} | peak RSS MB (base / ours)"
    )
    medians: dict[str, list[float | None]] = {impl: [] for impl in IMPLEMENTATIONS}
    for n in args.sizes:
        cells = []
        for impl in IMPLEMENTATIONS:
            runs = table[impl].get(n, [])
            done = [r["seconds"] for r in runs if r["seconds"] is not None and not r.get("note")]
            median = statistics.median(done) if done else None
            medians[impl].append(median)
            if median is None:
                note = runs[0]["note"] if runs else "not run (smaller size timed out)"
                cells.append(note)
            else:
                spread = (max(done) - min(done)) / 2 if len(done) > 1 else 0.0
                cells.append(f"{median:.1f} +- {spread:.1f}")
        rss = [
            f"{max(r['peak_rss_mb'] for r in table[i][n]):.0f}" if table[i].get(n) else "-"
            for i in IMPLEMENTATIONS
        ]
        b, o = medians["baseline"][-1], medians["ours"][-1]
        ratio = f"{b / o:.1f}x" if b and o else "-"
        print(f"{n:>10,} | {cells[0]:>16} | {cells[1]:>16} | {ratio:>15} | {rss[0]} / {rss[1]}")
    for impl in IMPLEMENTATIONS:
        print(f"growth exponent, {impl}: {exponent(args.sizes, medians[impl])}")
    ours_10m = dict(zip(args.sizes, medians["ours"])).get(10_000_000)
    if ours_10m is not None:
        rss = max(r["peak_rss_mb"] for r in table["ours"][10_000_000])
        ok = ours_10m <= 600 and rss <= 4096
        print(
            f"goal 10M <= 600 s and <= 4096 MB: {ours_10m:.0f} s, {rss:.0f} MB -> {'met' if ok else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
