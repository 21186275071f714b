"""Training throughput: our Parquet loop against open_clip's own trainer, same model, images and batch.

    python bench/train_throughput.py --model clip-small --batch-size 64 --steps 30 --image-size 256

Writes N = steps x batch generated shape pictures (JPEG, `--image-size` px, as img2dataset would
store them) once as our Parquet shards and once as files + a TSV for `python -m open_clip_train.main
--dataset-type csv`, trains one epoch through each in a fresh process with the same worker and
thread counts, and reads each trainer's own per-step timings (our log.csv; open_clip's
"Data (t) / Batch (t)" log lines, logged every step). The first `--skip` steps are start-up and
are left out. Prints samples/s and data-wait fraction of each and the ratio ours / open_clip.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# open_clip_train's per-step log line (log_every_n_steps=1 resets its meters every step).
LOG_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+.*?Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+)")


@dataclass(frozen=True)
class Timing:
    name: str
    steps: int
    samples_per_s: float
    data_wait_fraction: float
    wall_s: float


def write_data(root: Path, n: int, image_size: int, seed: int) -> tuple[Path, Path]:
    """The same n pictures as shards (ours) and as JPEG files + TSV (open_clip_train's csv input)."""
    from testbed.datasets import make_shape_dataset, shape_rows

    shards = make_shape_dataset(root / "shards", n=n, seed=seed, size=image_size, shards=4)
    folder = root / "files"
    folder.mkdir(parents=True, exist_ok=True)
    tsv = root / "train.tsv"
    with open(tsv, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["filepath", "title"])
        for row in shape_rows(n, seed, image_size):
            path = folder / f"{row['key']}.jpg"
            path.write_bytes(row["jpg"])
            writer.writerow([str(path), row["caption"]])
    return shards, tsv


def _env(threads: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    return env


def _summary(
    name: str, data_s: list[float], step_s: list[float], batch: int, skip: int, wall: float
) -> Timing:
    data_s, step_s = data_s[skip:], step_s[skip:]
    if not step_s:
        raise RuntimeError(f"{name}: no steps left after skipping {skip}; raise --steps")
    return Timing(name, len(step_s), batch * len(step_s) / sum(step_s), sum(data_s) / sum(step_s), wall)


def run_ours(shards: Path, out: Path, args) -> Timing:
    cmd = [
        sys.executable,
        "-m",
        "training.train",
        "--data",
        str(shards),
        "--out",
        str(out),
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--lr",
        "5e-4",
        "--warmup",
        "5",
        "--checkpoint-every",
        str(10**6),
        "--no-progress",
    ]
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=_env(args.threads), check=True, capture_output=True)
    wall = time.perf_counter() - started
    with open(out / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return _summary(
        "ours (Parquet shards)",
        [float(r["data_wait_s"]) for r in rows],
        [float(r["step_s"]) for r in rows],
        args.batch_size,
        args.skip,
        wall,
    )


def run_open_clip(tsv: Path, logs: Path, args) -> Timing:
    # open_clip_train knows only its own configs: register ours, then call its real entry point.
    launcher = (
        "import sys; from models.loader import register_configs; register_configs(); "
        "from open_clip_train.main import main; main(sys.argv[1:])"
    )
    cmd = [
        sys.executable,
        "-c",
        launcher,
        "--train-data",
        str(tsv),
        "--dataset-type",
        "csv",
        "--csv-img-key",
        "filepath",
        "--csv-caption-key",
        "title",
        "--model",
        args.model,
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
        "--epochs",
        "1",
        "--lr",
        "5e-4",
        "--warmup",
        "5",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--logs",
        str(logs),
        "--name",
        "bench",
        "--report-to",
        "",
        "--save-frequency",
        "0",
        "--zeroshot-frequency",
        "0",
        "--val-frequency",
        "0",
        "--log-every-n-steps",
        "1",
        "--seed",
        "0",
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=_env(args.threads), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{done.stderr[-3000:]}")
    text = (logs / "bench" / "out.log").read_text()
    data_s, step_s, last = [], [], -1
    for match in LOG_LINE.finditer(text):
        seen = int(match.group(1))
        if seen == last:  # the end-of-epoch line repeats the last step
            continue
        last = seen
        data_s.append(float(match.group(2)))
        step_s.append(float(match.group(3)))
    # Its first line is logged after step 1; each later line covers exactly one step.
    return _summary("open_clip_train (CSV + JPEG files)", data_s, step_s, args.batch_size, args.skip, wall)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="clip-small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--image-size", type=int, default=256, help="stored picture size (img2dataset's resize)"
    )
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers for both")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (OMP_NUM_THREADS)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each trainer")
    parser.add_argument("--skip", type=int, default=3, help="start-up steps left out of the averages")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_train_throughput"))
    parser.add_argument("--markdown", type=Path, help="also write the result table here")
    args = parser.parse_args(argv)

    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    n = args.steps * args.batch_size
    print(f"writing {n} pictures at {args.image_size} px ...", flush=True)
    shards, tsv = write_data(args.work, n, args.image_size, seed=0)
    # Alternate the two trainers so that a change in machine load hits both; report every pair.
    pairs = []
    for r in range(args.repeats):
        print(f"[{r + 1}/{args.repeats}] training through open_clip_train ...", flush=True)
        theirs = run_open_clip(tsv, args.work / f"logs{r}", args)
        print(f"[{r + 1}/{args.repeats}] training through training.train ...", flush=True)
        ours = run_ours(shards, args.work / f"ours{r}", args)
        pairs.append((theirs, ours))
    load = os.getloadavg()[0]
    lines = [
        f"Model `{args.model}`, batch {args.batch_size}, {args.steps} steps (first {args.skip} left out), "
        f"{n} pictures stored at {args.image_size} px, {args.workers} loader worker(s), {args.threads} torch "
        f"thread(s) each; {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end.",
        "",
        "| run | trainer | steps timed | samples/s | data-wait fraction | wall (s, incl. start-up) |",
        "|---|---|---|---|---|---|",
    ]
    for r, (theirs, ours) in enumerate(pairs):
        for t in (theirs, ours):
            lines.append(
                f"| {r + 1} | {t.name} | {t.steps} | {t.samples_per_s:.1f} | {100 * t.data_wait_fraction:.1f} % "
                f"| {t.wall_s:.0f} |"
            )
    ratios = [ours.samples_per_s / theirs.samples_per_s for theirs, ours in pairs]
    lines += [
        "",
        f"ratio ours / open_clip_train per run: {', '.join(f'{x:.2f}x' for x in ratios)}; "
        f"**median {statistics.median(ratios):.2f}x** (goal >= 1.2x)",
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
