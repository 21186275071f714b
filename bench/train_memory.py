"""Training with and without `--keep-freed-memory` (glibc keeps freed blocks for the next step).

    python bench/train_memory.py --pairs 2 --steps 300 -- --config training/presets/corpus.toml \\
        --data runs/demo/data/round1 ...   # the rest of a `training.train` command line, without --out

Runs the same `python -m training.train` command in fresh processes, once with `--keep-freed-memory`
(the default) and once with `--no-keep-freed-memory`, alternating which goes first; reads each run's
log.csv (the step time of every step after the first `--skip`), its page faults and peak memory, and
checks that both sides trained to the same losses. Prints each pair's ratio kept / returned and the
median ratio with its spread.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    keep: bool
    step_s: float  # median seconds a step after the skipped ones
    wall_s: float
    faults: int  # minor page faults of the training process (its workers excluded)
    max_rss_mb: float
    losses: tuple[float, ...]


def run_once(train_args: list[str], keep: bool, steps: int, skip: int, out: Path) -> Run:
    flag = "--keep-freed-memory" if keep else "--no-keep-freed-memory"
    cmd = [
        sys.executable,
        "-m",
        "training.train",
        *train_args,
        "--steps",
        str(steps),
        flag,
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode:
        sys.exit(f"training failed ({' '.join(cmd)}):\n{stderr[-2000:]}")
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    step_s = statistics.median(float(r["step_s"]) for r in rows[skip:])
    losses = tuple(float(r["loss"]) for r in rows)
    return Run(keep, step_s, wall, usage.ru_minflt, usage.ru_maxrss / 1024, losses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pairs", type=int, default=2, help="pairs of runs, alternating which side goes first"
    )
    parser.add_argument("--steps", type=int, default=300, help="steps a run")
    parser.add_argument(
        "--skip", type=int, default=20, help="first steps left out of the step time (start-up)"
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then training.train's options")
    ns = parser.parse_args(argv)
    train_args = [a for a in ns.train_args if a != "--"]
    if ns.skip >= ns.steps:
        parser.error(f"--skip {ns.skip} must be below --steps {ns.steps}")
    ratios = []
    with tempfile.TemporaryDirectory(prefix="train_memory_") as tmp:
        for pair in range(ns.pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            runs = {}
            for i, keep in enumerate(order):
                run = run_once(train_args, keep, ns.steps, ns.skip, Path(tmp) / f"p{pair}_{i}")
                runs[keep] = run
                print(
                    f"pair {pair} {'kept    ' if keep else 'returned'}: {run.step_s:.3f} s a step, "
                    f"{run.wall_s:.0f} s in all, {run.faults / ns.steps:,.0f} page faults a step, "
                    f"peak {run.max_rss_mb:,.0f} MB",
                    flush=True,
                )
            same = runs[True].losses == runs[False].losses
            ratio = runs[True].step_s / runs[False].step_s
            ratios.append(ratio)
            print(
                f"pair {pair}: ratio kept / returned {ratio:.3f}; losses {'identical' if same else 'DIFFER'}"
            )
            if not same:
                print(
                    "  the two sides trained to different losses: the setting changed the numbers", flush=True
                )
                return 1
    spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
    print(
        f"median ratio kept / returned {statistics.median(ratios):.3f} (range {spread}, {len(ratios)} pairs)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
