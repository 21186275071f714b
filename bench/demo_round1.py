"""The demo's round 1 through the build flow, with and without the download tag's concurrency limit.

    python -m bench.demo_round1 [--rounds 2] [--pages 1800]

Serves the corpus test web of `make demo` (pipelines.demo.start_web: 1800 pages, seed 0; the corpus
must be cached) and builds its round 1 with the demo's build and runner settings
(pipelines/params/demo_corpus.toml: 6 chunks, 2 img2dataset calls at a time) through
`pipelines.flows.build_dataset_flow` on the temporary local API, two ways, alternating which goes first:
- `default`: as the flow runs: the download tasks carry the tag with its concurrency limit
  (pipelines.tasks.DOWNLOAD_TAG), on a thread pool of `download_concurrency` workers; a tag's slot
  passes from a finished task to the next through the API, seconds at a time (bench/flow_tag_limit.py);
- `pool only`: the tag taken off the download tasks: the thread pool alone holds the limit (what the
  flow could do on the temporary local API, where no other process shares the limit).
Each build goes into a new folder; both must keep the same number of pairs. Prints each build's wall
time and the median ratio default / pool only with its range.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sides import ratios_line  # noqa: E402
from pipelines.runtime import apply_env_defaults  # noqa: E402

apply_env_defaults()

SIDES = ("default", "pool only")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_round1", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="builds of each side, alternating (default: 2)")
    parser.add_argument(
        "--pages", type=int, default=1800, help="pages of the test web (default: the demo's 1800)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.pages < 1:
        parser.error("--rounds and --pages must be >= 1")
    command = "python -m bench.demo_round1 " + " ".join(sys.argv[1:] if argv is None else argv)

    from prefect import flow

    import pipelines.flows as flows
    import pipelines.tasks as tasks
    from pipelines.demo import WORLDS, start_web
    from pipelines.flows import flow_parameters
    from pipelines.params import load_flow_params

    tagged = tasks.download_task_for

    def untagged(cfg, options):  # noqa: ANN001, ANN202 - the flow's own signature
        task = tagged(cfg, options)
        return task.with_options(tags=task.tags - {tasks.DOWNLOAD_TAG})

    def build(side: str, out: Path, wit: Path) -> tuple[float, int]:
        tasks.download_task_for = untagged if side == "pool only" else tagged
        try:
            params = flow_parameters(
                load_flow_params(
                    "end-to-end",
                    WORLDS["corpus"]["params"],
                    [
                        f"chain.out={out}",
                        "chain.world=corpus",
                        f"build.source=wit:{wit}",
                        f"build.out={out / 'r1'}",
                    ],
                )
            )
            started = time.perf_counter()
            result = flows.build_dataset_flow(params["build"], params["options"])
            return time.perf_counter() - started, result["summary"]["kept"]
        finally:
            tasks.download_task_for = tagged

    @flow(name="demo-round1-bench")
    def bench(wit: Path, work: Path) -> dict[str, list[tuple[float, int]]]:
        results: dict[str, list[tuple[float, int]]] = {side: [] for side in SIDES}
        for i in range(args.rounds):
            for side in SIDES if i % 2 == 0 else SIDES[::-1]:
                seconds, kept = build(side, work / f"{side.replace(' ', '_')}-{i}", wit)
                print(f"round {i + 1}, {side}: {seconds:.1f} s, {kept} pairs kept", flush=True)
                results[side].append((seconds, kept))
        return results

    with tempfile.TemporaryDirectory(prefix="demo_round1_") as tmp:
        work = Path(tmp)
        server, wit, _, info = start_web(work, args.pages, 0, "corpus")
        try:
            results = bench(wit, work)
        finally:
            server.stop()
    kept = {k for runs in results.values() for _, k in runs}
    print(f"\ncommand: {command.strip()}")
    print(
        f"{info['images']} pictures on {args.pages} pages; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end; pairs kept {sorted(kept)}"
    )
    for side, runs in results.items():
        print(f"{side:>10}: " + ", ".join(f"{s:.1f}" for s, _ in runs) + " s")
    ratios = [d[0] / p[0] for d, p in zip(results["default"], results["pool only"])]
    print(f"ratio default / pool only per round: {ratios_line(ratios)}")
    if len(kept) != 1:
        print("error: the two sides kept different numbers of pairs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
