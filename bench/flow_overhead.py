"""What the Prefect flow costs over the plain library call, for the same build, in one run.

    .venv/bin/python -m bench.flow_overhead [--pages 20] [--chunk-size 50] [--repeats 1]

Baseline: `curation.build.build_dataset(cfg)` (what `python -m curation build` runs).
Measured:  `pipelines.flows.build_dataset_flow(cfg)` (what `python -m pipelines run build-dataset` runs),
           one task per chunk, retries, cache records, artifacts, the output lock.
Both build the same WIT TSV of the loopback test web into fresh directories. The temporary
Prefect API starts once per process; its start-up is reported apart (a Prefect server removes it).
Prints a markdown table and the ratio flow / library (goal: at most 1.10).
"""

from __future__ import annotations

import argparse
import os
import platform
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
    parser.add_argument("--repeats", type=int, default=1, help="builds of each kind (alternating)")
    args = parser.parse_args(argv)

    from prefect import flow

    from curation.build import build_dataset
    from pipelines.flows import build_dataset_flow
    from pipelines.params import FlowOptions
    from testbed.testweb import build_site, serve

    @flow(name="warm-up")
    def warm_up() -> None:
        """Starts the temporary Prefect API so the timed flow runs do not pay for it."""

    with tempfile.TemporaryDirectory(prefix="flow_overhead_") as tmp:
        root = Path(tmp)
        site = build_site(args.pages, 0)
        with serve(site, "127.0.0.1", 0) as server:
            wit = root / "site.tsv"
            site.write_wit(wit, server.base_url)
            started = time.perf_counter()
            warm_up()
            api_start = time.perf_counter() - started
            library, flow_times, rows = [], [], None
            for i in range(args.repeats):
                cfg = _config(wit, root / f"library-{i}", args.chunk_size)
                t = time.perf_counter()
                summary = build_dataset(cfg)
                library.append(time.perf_counter() - t)
                cfg = _config(wit, root / f"flow-{i}", args.chunk_size)
                t = time.perf_counter()
                result = build_dataset_flow(cfg, FlowOptions(download_concurrency=1))
                flow_times.append(time.perf_counter() - t)
                rows = (summary.kept, result["summary"]["kept"], len(result["chunks"]))
    lib_s, flow_s = min(library), min(flow_times)
    ratio = flow_s / lib_s
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(
        f"build: {args.pages} pages, {rows[2]} chunks of <= {args.chunk_size}, kept {rows[0]} (library) / {rows[1]} (flow)"
    )
    print()
    print(f"| path | seconds (best of {args.repeats}) |")
    print("|---|---|")
    print(f"| library `build_dataset` (baseline) | {lib_s:.1f} |")
    print(f"| Prefect flow `build-dataset` | {flow_s:.1f} |")
    print(f"| temporary Prefect API start-up (once per process) | {api_start:.1f} |")
    print()
    print(
        f"ratio flow / library: {ratio:.3f} (goal <= 1.10); with the API start-up: {(flow_s + api_start) / lib_s:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
