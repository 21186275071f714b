"""What Prefect's tag concurrency limit costs per task, on the temporary local API and a thread pool.

    python -m bench.flow_tag_limit [--tasks 4] [--seconds 2] [--repeats 2]

The build flow's download tasks carry a tag with a concurrency limit (pipelines.tasks.DOWNLOAD_TAG,
set by pipelines.flows.ensure_tag_concurrency) and run on a thread pool of `download_concurrency`
workers. Here the same subflow runs `--tasks` tasks that each sleep `--seconds`, on a thread pool of one
worker: baseline without a tag, measured with a tag limited to 1 (the build flow's setting). The two
alternate, `--repeats` times each, after one warm-up flow. Prints the wall time per subflow, the gaps
between one task's end and the next one's start, and the ratio per repeat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sides import ratios_line  # noqa: E402
from pipelines.runtime import apply_env_defaults  # noqa: E402

apply_env_defaults()

TAG = "bench-tag-limit"
MARKS: list[tuple[str, float]] = []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flow_tag_limit", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--tasks", type=int, default=4, help="tasks per subflow (default: 4)")
    parser.add_argument("--seconds", type=float, default=2.0, help="each task's sleep (default: 2)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="subflows of each kind, alternating (default: 2)"
    )
    args = parser.parse_args(argv)
    if args.tasks < 2 or args.repeats < 1 or args.seconds < 0:
        parser.error("--tasks must be >= 2, --repeats >= 1, --seconds >= 0")
    command = "python -m bench.flow_tag_limit " + " ".join(sys.argv[1:] if argv is None else argv)

    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from pipelines.flows import ensure_tag_concurrency

    def body(seconds: float) -> None:
        MARKS.append(("start", time.perf_counter()))
        time.sleep(seconds)
        MARKS.append(("end", time.perf_counter()))

    tagged = task(name="tagged", tags=[TAG], persist_result=False)(body)
    untagged = task(name="untagged", persist_result=False)(body)

    @flow(name="tag-limit-subflow")
    def subflow(kind: str, tasks: int, seconds: float) -> None:
        fn = tagged if kind == "tag limit 1" else untagged
        for future in [fn.submit(seconds) for _ in range(tasks)]:
            future.result()

    @flow(name="tag-limit-bench")
    def bench() -> dict:
        ensure_tag_concurrency(TAG, 1)
        runner = ThreadPoolTaskRunner(max_workers=1)
        subflow.with_options(task_runner=runner)("no tag", 1, 0.0)  # warm-up
        results: dict[str, list[tuple[float, list[float]]]] = {"no tag": [], "tag limit 1": []}
        for i in range(args.repeats):
            for kind in ("no tag", "tag limit 1") if i % 2 == 0 else ("tag limit 1", "no tag"):
                MARKS.clear()
                started = time.perf_counter()
                subflow.with_options(task_runner=runner)(kind, args.tasks, args.seconds)
                wall = time.perf_counter() - started
                marks = sorted(MARKS, key=lambda m: m[1])
                gaps = [b[1] - a[1] for a, b in zip(marks, marks[1:]) if a[0] == "end" and b[0] == "start"]
                results[kind].append((wall, gaps))
        return results

    results = bench()
    print(f"\ncommand: {command.strip()}")
    print(
        f"{args.tasks} tasks of {args.seconds:g} s per subflow, thread pool of 1 worker, temporary local API; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end\n"
    )
    print("| subflow | wall (s) per repeat | gaps between tasks (s) |")
    print("|---|---|---|")
    for kind, runs in results.items():
        walls = ", ".join(f"{w:.2f}" for w, _ in runs)
        gaps = " / ".join(", ".join(f"{g:.2f}" for g in gs) for _, gs in runs)
        print(f"| {kind} | {walls} | {gaps} |")
    ratios = [t[0] / n[0] for n, t in zip(results["no tag"], results["tag limit 1"])]
    extra = [(t[0] - n[0]) / (args.tasks - 1) for n, t in zip(results["no tag"], results["tag limit 1"])]
    print(
        f"\nratio tag limit / no tag per repeat: {ratios_line(ratios)}; extra seconds per task "
        f"transition: median {statistics.median(extra):.2f} (min-max {min(extra):.2f}-{max(extra):.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
