"""What the benches that compare two sides share: a side run in a fresh process, and the ratios printed.

from bench.sides import ratios_line, run_child
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_child(command: list[str], marker: str, side: str) -> list[str] | None:
    """Run one side of a bench in a fresh process (from the repository root): the values after `marker`
    on the last line it starts, or None when it failed (its exit code and stderr's tail printed)."""
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(marker + " ")]
    if done.returncode or not lines:
        print(
            f"error: the {side} run failed (exit {done.returncode}):\n{done.stderr[-2000:]}", file=sys.stderr
        )
        return None
    return lines[-1].split()[1:]


def ratios_line(ratios: list[float]) -> str:
    """'0.81, 0.78, 0.85; median 0.81 (min-max 0.78-0.85)': each pair's ratio, their median and range."""
    return (
        f"{', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f} "
        f"(min-max {min(ratios):.2f}-{max(ratios):.2f})"
    )
