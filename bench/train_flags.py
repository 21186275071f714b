"""The same training command with two sets of flags, in fresh processes, alternating which goes first.

    python bench/train_flags.py --pairs 2 --steps 300 --a=--keep-freed-memory --b=--no-keep-freed-memory \\
        --same-losses -- --config training/presets/corpus.toml --data runs/demo/data/round1 ...
    python bench/train_flags.py --pairs 3 --steps 150 --a="--low-res-steps 150" --b="" -- ...

Runs `python -m training.train TRAIN_ARGS --steps N A_FLAGS --out ...` and the same with B_FLAGS; reads
each run's log.csv (the step time of every step after the first `--skip`), its page faults and peak
memory (the training process's own, from wait4), and prints each pair's ratio a / b and the median ratio
with its spread. `--same-losses`: the two sides must train to the same loss at every step (a setting that
should change no number, such as --keep-freed-memory); the bench fails otherwise.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
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
    step_s: float  # median seconds a step after the skipped ones
    wall_s: float
    faults: int  # minor page faults of the training process (its workers excluded)
    max_rss_mb: float
    losses: tuple[float, ...]


def run_once(train_args: list[str], flags: list[str], steps: int, skip: int, out: Path) -> Run:
    cmd = [sys.executable, "-m", "training.train", *train_args, "--steps", str(steps), *flags]
    cmd += ["--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode:
        sys.exit(f"training failed ({shlex.join(cmd)}):\n{stderr[-2000:]}")
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    step_s = statistics.median(float(r["step_s"]) for r in rows[skip:])
    losses = tuple(float(r["loss"]) for r in rows)
    return Run(step_s, wall, usage.ru_minflt, usage.ru_maxrss / 1024, losses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", default="", help="flags of side a, as one string (--a='--low-res-steps 150')")
    parser.add_argument("--b", default="", help="flags of side b, as one string ('' : none)")
    parser.add_argument(
        "--pairs", type=int, default=2, help="pairs of runs, alternating which side goes first"
    )
    parser.add_argument("--steps", type=int, default=300, help="steps a run")
    parser.add_argument(
        "--skip", type=int, default=20, help="first steps left out of the step time (start-up)"
    )
    parser.add_argument(
        "--same-losses", action="store_true", help="fail unless both sides train to the same losses"
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then training.train's options")
    ns = parser.parse_args(argv)
    train_args = [a for a in ns.train_args if a != "--"]
    if ns.skip >= ns.steps:
        parser.error(f"--skip {ns.skip} must be below --steps {ns.steps}")
    sides = {"a": shlex.split(ns.a), "b": shlex.split(ns.b)}
    if sides["a"] == sides["b"]:
        parser.error("--a and --b are the same flags: nothing to compare")
    ratios = []
    with tempfile.TemporaryDirectory(prefix="train_flags_") as tmp:
        for pair in range(ns.pairs):
            order = ("b", "a") if pair % 2 == 0 else ("a", "b")
            runs = {}
            for i, side in enumerate(order):
                run = run_once(train_args, sides[side], ns.steps, ns.skip, Path(tmp) / f"p{pair}_{i}")
                runs[side] = run
                print(
                    f"pair {pair} {side} ({shlex.join(sides[side]) or 'no flags'}): {run.step_s:.3f} s a step, "
                    f"{run.wall_s:.0f} s in all, {run.faults / ns.steps:,.0f} page faults a step, "
                    f"peak {run.max_rss_mb:,.0f} MB",
                    flush=True,
                )
            same = runs["a"].losses == runs["b"].losses
            ratio = runs["a"].step_s / runs["b"].step_s
            ratios.append(ratio)
            print(f"pair {pair}: ratio a / b {ratio:.3f}; losses {'identical' if same else 'differ'}")
            if ns.same_losses and not same:
                print("  the two sides trained to different losses: the setting changed the numbers")
                return 1
    spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
    print(f"median ratio a / b {statistics.median(ratios):.3f} (range {spread}, {len(ratios)} pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
