"""Benchmark: the tiled Bézier rasterizer against the dense all-strokes-all-pixels reference, and one sketch.

    python -m bench.rasterizer                 # 16/32/64 strokes at 224 px, forward+backward, CPU (+ CUDA)
    python -m bench.rasterizer --sketch        # plus the whole-sketch time for 16 strokes
    python -m bench.rasterizer --markdown docs/bench_rasterizer.md

The reference is `render_dense` from the same module: the same maths without culling, the way a naive
rasterizer evaluates every stroke at every pixel. Both run in the same process on the same strokes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from apps.clipasso.render import RasterConfig, black_strokes, render, render_dense


def sketch_like_strokes(n: int, size: int, seed: int, device: str) -> torch.Tensor:
    """Strokes the size of a converged CLIPasso sketch's: 5-25 % of the canvas, anywhere on it."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.rand(1, n, 1, 2, generator=gen) * size
    steps = (torch.rand(1, n, 3, 2, generator=gen) - 0.5) * 0.15 * size
    return torch.cat([start, start + steps.cumsum(2)], 2).to(device)


def time_forward_backward(fn, points: torch.Tensor, size: int, repeats: int, config: RasterConfig) -> float:
    """Median seconds of one forward + backward."""
    widths, colors = black_strokes(points, 1.5)
    params = points.clone().requires_grad_(True)
    times = []
    for i in range(repeats + 1):  # the first call warms up allocators and kernels
        if points.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(params, widths, colors, size, config).mean().backward()
        if points.is_cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_rasterizer(
    devices: list[str], counts: list[int], size: int, repeats: int, dense_repeats: int
) -> list[dict]:
    config = RasterConfig()
    rows = []
    for device in devices:
        for n in counts:
            points = sketch_like_strokes(n, size, seed=n, device=device)
            with torch.no_grad():
                widths, colors = black_strokes(points, 1.5)
                diff = (
                    (render(points, widths, colors, size) - render_dense(points, widths, colors, size))
                    .abs()
                    .max()
                )
            tiled = time_forward_backward(render, points, size, repeats, config)
            dense = time_forward_backward(render_dense, points, size, dense_repeats, config)
            rows.append(
                {
                    "device": device,
                    "strokes": n,
                    "tiled_s": tiled,
                    "dense_s": dense,
                    "ratio": dense / tiled,
                    "max_abs_diff": float(diff),
                }
            )
            print(
                f"{device} {n:3d} strokes: tiled {tiled * 1e3:8.1f} ms  dense {dense * 1e3:9.1f} ms  "
                f"speed-up x{dense / tiled:5.1f}  (max |tiled - dense| {float(diff):.1e})",
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


def markdown(rows: list[dict], sketch: dict | None, threads: int, command: str) -> str:
    lines = [
        "## Rasterizer (apps.clipasso.render)",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads (asked {threads}), "
        f"torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
        + f", load average {os.getloadavg()[0]:.1f} at the end",
        "",
        "Forward + backward of one 224 px canvas, strokes of width 1.5 (median of repeats). Baseline: `render_dense`,",
        "the same coverage maths evaluated for every stroke at every pixel, in the same run on the same strokes.",
        "",
        "| device | strokes | tiled (ms) | dense reference (ms) | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['strokes']} | {r['tiled_s'] * 1e3:.1f} | {r['dense_s'] * 1e3:.1f} | "
            f"x{r['ratio']:.1f} |"
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
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the tiled rasterizer")
    parser.add_argument("--dense-repeats", type=int, default=1, help="timed repeats of the slow reference")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default: 1, see docs/bench_rasterizer.md)",
    )
    parser.add_argument("--sketch", action="store_true", help="also time a whole 16-stroke sketch")
    parser.add_argument(
        "--checkpoint", help="model for --sketch (default: the demo's, else clip-small random)"
    )
    parser.add_argument("--markdown", type=Path, help="write the results as a markdown section here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = bench_rasterizer(devices, args.strokes, args.size, args.repeats, args.dense_repeats)
    sketch = bench_sketch(args.checkpoint, "cpu") if args.sketch else None
    if args.markdown:
        command = (
            "python -m bench.rasterizer" + (" --sketch" if args.sketch else "") + f" --threads {args.threads}"
        )
        args.markdown.write_text(markdown(rows, sketch, args.threads, command))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
