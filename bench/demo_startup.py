"""The demo's start: from the command to its first flow run, with Prefect's temporary API started early or not.

    python -m bench.demo_startup [--rounds 3] [--pages 1800]

`python -m pipelines.demo` builds the corpus test web (~20 s on one core) and then runs its flow on
Prefect's temporary local API, which the first flow run starts (a server process, ~10 s to its health
check). Each side here is a fresh process that runs `pipelines.demo.run_demo` with the flow replaced by
an empty one of the same name, timed from the process's start to the flow's return:
- `default`: as the demo runs: the API started in the background before the web is built
  (`pipelines.runtime.start_temporary_api`), on the core the build leaves free;
- `after web`: the API started by the first flow run, after the web (as before).
Alternates which side goes first each round; prints the seconds of each run and the median ratio
default / after web with its range. The corpus must be cached.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.sides import ratios_line, run_child  # noqa: E402

SIDES = ("default", "after web")


def one_side(side: str, out: Path, pages: int, started: float) -> None:
    """Run in the child process: the demo's start with an empty flow; prints the seconds."""
    from prefect import flow

    import pipelines.demo as demo
    import pipelines.flows as flows

    if side == "after web":
        demo.start_temporary_api = lambda: lambda: None

    @flow(name="end-to-end")
    def empty(**parameters: object) -> dict:
        return {}

    flows.end_to_end_flow = empty
    demo.write_report = lambda *args, **kwargs: out / "report.md"
    demo.run_demo(out, pages, 0, None, [], "corpus")
    print(f"SECONDS {time.time() - started:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_startup", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side, alternating (default: 3)")
    parser.add_argument(
        "--pages", type=int, default=1800, help="pages of the test web (default: the demo's 1800)"
    )
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        one_side(args.side, args.out, args.pages, args.started)
        return 0
    if args.rounds < 1 or args.pages < 1:
        parser.error("--rounds and --pages must be >= 1")
    command = "python -m bench.demo_startup " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, list[float]] = {side: [] for side in SIDES}
    for i in range(args.rounds):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            with tempfile.TemporaryDirectory(prefix="demo_startup_") as tmp:
                child = [sys.executable, "-m", "bench.demo_startup", "--side", side, "--out", tmp]
                child += ["--pages", str(args.pages), "--started", str(time.time())]
                values = run_child(child, "SECONDS", side)
            if values is None:
                return 1
            results[side].append(float(values[0]))
            print(f"round {i + 1}, {side}: {results[side][-1]:.1f} s", flush=True)
    print(f"\ncommand: {command.strip()}")
    for side, runs in results.items():
        print(f"{side:>10}: " + ", ".join(f"{s:.1f}" for s in runs) + " s")
    ratios = [d / a for d, a in zip(results["default"], results["after web"])]
    print(f"ratio default / after web per round: {ratios_line(ratios)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
