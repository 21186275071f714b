"""What the Prefect flow costs over the plain library call, for the same build, in one run.

    .venv/bin/python -m bench.flow_overhead [--pages 20] [--chunk-size 50] [--repeats 3]

Baseline: `curation.build.build_dataset(cfg)` (what `python -m curation build` runs).
Measured:  `pipelines.flows.build_dataset_flow(cfg)` (what `python -m pipelines run build-dataset` runs),
           one task per chunk, retries, cache records, artifacts, the output lock.
Both build the same WIT TSV of the loopback test web into fresh directories. Both paths are warmed
once (untimed) so one-time imports are charged to neither; then they alternate (library first, then
flow first, ...) `--repeats` times. The temporary Prefect API starts once per process; its start-up
is reported apart (a Prefect server removes it). Prints a markdown table, the per-repeat ratios, and
their median and spread (goal: flow / library at most 1.10).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pipelines.runtime import apply_env_defaults

apply_env_defaults()


def _config(wit: Path, out: Path, chunk_size: int):
    from curation.config import BuildConfig

    return BuildConfig(
        source=[f"wit:{wit}"],
        out=out,
        allow_networks=["127.0.0.1/32"],
        chunk_size=chunk_size,
        image_size=64,
        processes=1,
        threads=16,
        timeout=5,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flow_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--pages", type=int, default=20, help="pages of the test web (~7 pictures each)")
    parser.add_argument("--chunk-size", type=int, default=50, help="candidates per img2dataset call")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed builds of each kind, alternating (default: 3)"
    )
    args = parser.parse_args(argv)
    command = "python -m bench.flow_overhead " + " ".join(sys.argv[1:] if argv is None else argv)

    from prefect import flow

    from curation.build import build_dataset
    from pipelines.flows import build_dataset_flow
    from pipelines.params import FlowOptions
    from testbed.testweb import build_site, serve

    @flow(name="warm-up")
    def warm_up() -> None:
        """Starts the temporary Prefect API so the timed flow runs do not pay for it."""

    def library_build(cfg):
        return build_dataset(cfg).kept

    def flow_build(cfg):
        result = build_dataset_flow(cfg, FlowOptions(download_concurrency=1))
        return result["summary"]["kept"], len(result["chunks"])

    with tempfile.TemporaryDirectory(prefix="flow_overhead_") as tmp:
        root = Path(tmp)
        site = build_site(args.pages, 0)
        with serve(site, "127.0.0.1", 0) as server:
            wit = root / "site.tsv"
            site.write_wit(wit, server.base_url)
            started = time.perf_counter()
            warm_up()
            api_start = time.perf_counter() - started
            # Warm both paths once, untimed: the first build of a process pays one-time imports
            # (img2dataset, OpenCV, the language-ID model) that neither path should be charged.
            started = time.perf_counter()
            library_build(_config(wit, root / "warm-library", args.chunk_size))
            flow_build(_config(wit, root / "warm-flow", args.chunk_size))
            warm_s = time.perf_counter() - started
            library, flow_times, kept = [], [], {}
            for i in range(args.repeats):
                # Alternate which path goes first, so a change of machine load hits both.
                for who in ("library", "flow") if i % 2 == 0 else ("flow", "library"):
                    cfg = _config(wit, root / f"{who}-{i}", args.chunk_size)
                    t = time.perf_counter()
                    if who == "library":
                        kept["library"] = library_build(cfg)
                        library.append(time.perf_counter() - t)
                    else:
                        kept["flow"], chunks = flow_build(cfg)
                        flow_times.append(time.perf_counter() - t)
    ratios = [f / lib for f, lib in zip(flow_times, library)]
    lib_s, flow_s, ratio = (statistics.median(x) for x in (library, flow_times, ratios))
    print()
    print(f"command: {command.strip()}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"build: {args.pages} pages, {chunks} chunks of <= {args.chunk_size}, kept {kept['library']} (library) / "
        f"{kept['flow']} (flow); both paths warmed once first ({warm_s:.1f} s, untimed), then "
        f"{args.repeats} timed builds each, alternating"
    )
    print()
    print(f"| path | seconds, median of {args.repeats} | min-max | runs |")
    print("|---|---|---|---|")
    for name, times in (
        ("library `build_dataset` (baseline)", library),
        ("Prefect flow `build-dataset`", flow_times),
    ):
        runs = ", ".join(f"{t:.1f}" for t in times)
        print(f"| {name} | {statistics.median(times):.1f} | {min(times):.1f}-{max(times):.1f} | {runs} |")
    print(f"| temporary Prefect API start-up (once per process) | {api_start:.1f} | | |")
    print()
    print(
        f"ratio flow / library per repeat: {', '.join(f'{r:.3f}' for r in ratios)}; median {ratio:.3f} "
        f"(min-max {min(ratios):.3f}-{max(ratios):.3f}; goal <= 1.10); "
        f"first flow of a process with the API start-up: {(flow_s + api_start) / lib_s:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
