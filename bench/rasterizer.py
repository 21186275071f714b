"""Benchmark: the tiled Bézier rasterizer against the dense all-strokes-all-pixels reference, and one sketch.

    python -m bench.rasterizer                 # 16/32/64 strokes at 224 px, forward+backward, CPU (+ CUDA)
    python -m bench.rasterizer --sketch        # plus the whole-sketch time for 16 strokes
    python -m bench.rasterizer --markdown /tmp/rasterizer.md   (its table goes into docs/benchmarks.md, "Rasterizer")

Baseline: `render_dense` from the same module, which evaluates every stroke at every pixel with the
same maths, in its chunked form: pixels (`--dense-chunk`, 1024 by default) with
activation checkpointing per chunk, so that no strokes x pixels x segments tensor larger than a few MB is
ever held: what a careful dense implementation does, so the ratio measures culling, not memory traffic.
Both run in the same process on the same strokes, forward + backward, timed the same way (one untimed
warm-up call, then the median of `--repeats` calls each, alternating tiled and dense); both give the
same picture (max |difference| printed).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from apps.clipasso.render import RasterConfig, black_strokes, render, render_dense

DENSE_CHUNK = 1024  # pixels per chunk of the dense baseline


def render_dense_chunked(points, widths, colors, size, config=RasterConfig(), chunk: int = DENSE_CHUNK):
    """The dense baseline: every stroke at every pixel, `chunk` pixels at a time (render_dense's chunked form)."""
    return render_dense(points, widths, colors, size, config, chunk=chunk)


def sketch_like_strokes(n: int, size: int, seed: int, device: str) -> torch.Tensor:
    """Strokes the size of a converged CLIPasso sketch's: 5-25 % of the canvas, anywhere on it."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.rand(1, n, 1, 2, generator=gen) * size
    steps = (torch.rand(1, n, 3, 2, generator=gen) - 0.5) * 0.15 * size
    return torch.cat([start, start + steps.cumsum(2)], 2).to(device)


def time_forward_backward(fns: dict, points: torch.Tensor, size: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of one forward + backward per call, for each function: one untimed warm-up call each, then
    `repeats` timed calls each, alternating between the functions (so a load change hits all of them)."""
    widths, colors = black_strokes(points, 1.5)
    params = points.clone().requires_grad_(True)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats + 1):
        for name, fn in fns.items() if i % 2 == 0 else reversed(fns.items()):
            if points.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(params, widths, colors, size).mean().backward()
            if points.is_cuda:
                torch.cuda.synchronize()
            if i:  # the first call warms up allocators and kernels
                times[name].append(time.perf_counter() - start)
    return times


def bench_rasterizer(
    devices: list[str], counts: list[int], size: int, repeats: int, chunk: int
) -> list[dict]:
    config = RasterConfig()
    fns = {
        "tiled": lambda p, w, c, s: render(p, w, c, s, config),
        "dense": lambda p, w, c, s: render_dense_chunked(p, w, c, s, config, chunk),
    }
    rows = []
    for device in devices:
        for n in counts:
            points = sketch_like_strokes(n, size, seed=n, device=device)
            with torch.no_grad():
                widths, colors = black_strokes(points, 1.5)
                diff = (
                    (
                        render(points, widths, colors, size)
                        - render_dense_chunked(points, widths, colors, size)
                    )
                    .abs()
                    .max()
                )
            times = time_forward_backward(fns, points, size, repeats)
            tiled, dense = statistics.median(times["tiled"]), statistics.median(times["dense"])
            ratios = sorted(d / t for d, t in zip(times["dense"], times["tiled"]))
            rows.append(
                {
                    "device": device,
                    "strokes": n,
                    "tiled_s": tiled,
                    "dense_s": dense,
                    "ratio": dense / tiled,
                    "ratio_min": ratios[0],
                    "ratio_max": ratios[-1],
                    "tiled_range": (min(times["tiled"]), max(times["tiled"])),
                    "dense_range": (min(times["dense"]), max(times["dense"])),
                    "max_abs_diff": float(diff),
                }
            )
            print(
                f"{device} {n:3d} strokes: tiled {tiled * 1e3:8.1f} ms  dense (chunked) {dense * 1e3:9.1f} ms  "
                f"speed-up x{dense / tiled:5.1f} (per repeat x{ratios[0]:.1f}-x{ratios[-1]:.1f})  "
                f"(max |tiled - dense| {float(diff):.1e})",
                flush=True,
            )
    return rows


def bench_sketch(checkpoint: str | None, device: str) -> dict:
    """Whole-sketch time, 16 strokes, default settings (3 seeds, early stopping), on skimage's chelsea."""
    import tempfile

    import numpy as np
    import skimage.data
    from PIL import Image

    from apps.clipasso.optimize import SketchConfig, sketch_picture
    from apps.clipasso.picture import load_picture
    from models import DEFAULT_CHECKPOINT, load_clip

    if checkpoint or DEFAULT_CHECKPOINT.exists():
        loaded, which = load_clip(checkpoint, device, default=DEFAULT_CHECKPOINT), "trained"
    else:
        loaded, which = load_clip(model="clip-small", device=device), "random weights (no demo model yet)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chelsea.png"
        Image.fromarray(np.asarray(skimage.data.chelsea())).save(path)
        picture = load_picture(path, 224)
        start = time.perf_counter()
        result = sketch_picture(picture, loaded, SketchConfig(strokes=16), progress=True)
        seconds = time.perf_counter() - start
    print(
        f"sketch: {loaded.model_name} ({which}), 16 strokes, 3 seeds: {result.steps} steps in {seconds:.1f} s"
    )
    return {"model": f"{loaded.model_name} ({which})", "steps": result.steps, "seconds": seconds}


def markdown(rows: list[dict], sketch: dict | None, threads: int, command: str, repeats: int) -> str:
    lines = [
        "## Rasterizer (apps.clipasso.render)",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads "
        f"(asked {threads}), torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
        + f", load average {os.getloadavg()[0]:.1f} at the end",
        "",
        f"Forward + backward of one {rows[0]['size'] if rows and 'size' in rows[0] else 224} px canvas, strokes "
        f"of width 1.5, median of {repeats} alternating calls each after one warm-up. Baseline: the dense",
        "all-strokes-all-pixels rasterizer in chunks of pixels with checkpointing (bench/rasterizer.py), same run,",
        "same strokes.",
        "",
        "| device | strokes | tiled (ms, min-max) | dense chunked (ms, min-max) | speed-up (per-repeat min-max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['strokes']} | {r['tiled_s'] * 1e3:.1f} "
            f"({r['tiled_range'][0] * 1e3:.1f}-{r['tiled_range'][1] * 1e3:.1f}) | {r['dense_s'] * 1e3:.1f} "
            f"({r['dense_range'][0] * 1e3:.1f}-{r['dense_range'][1] * 1e3:.1f}) | "
            f"x{r['ratio']:.1f} (x{r['ratio_min']:.1f}-x{r['ratio_max']:.1f}) |"
        )
    if sketch:
        lines += [
            "",
            f"Whole sketch, 16 strokes, 3 seeds, default settings with early stopping, {sketch['model']}: "
            f"{sketch['steps']} steps in {sketch['seconds']:.1f} s (goal: under 60 s on 2 CPU cores).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rasterizer", description=__doc__.splitlines()[0])
    parser.add_argument("--strokes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed calls of each rasterizer, alternating (default: 5)"
    )
    parser.add_argument(
        "--dense-chunk",
        type=int,
        default=DENSE_CHUNK,
        help=f"pixels per chunk of the dense baseline ({DENSE_CHUNK})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default: 1, see docs/benchmarks.md, Rasterizer)",
    )
    parser.add_argument("--sketch", action="store_true", help="also time a whole 16-stroke sketch")
    parser.add_argument(
        "--checkpoint", help="model for --sketch (default: the demo's, else clip-small random)"
    )
    parser.add_argument("--markdown", type=Path, help="write the results as a markdown section here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    command = "python -m bench.rasterizer " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: {command.strip()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = bench_rasterizer(devices, args.strokes, args.size, args.repeats, args.dense_chunk)
    sketch = bench_sketch(args.checkpoint, "cpu") if args.sketch else None
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.markdown:
        args.markdown.write_text(markdown(rows, sketch, args.threads, command.strip(), args.repeats))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
