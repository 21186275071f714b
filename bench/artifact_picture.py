"""What the build flow's picture artifact costs: the previous encoding (optimised PNG) vs today's (JPEG).

    python -m bench.artifact_picture [PICTURE] [--repeats 5]

`pipelines.artifacts.publish_picture` inlines a thumbnail (longer side 640 px) of each picture a flow
makes (the build's contact sheet, a training run's loss curve) into a Prefect image artifact; the
build-dataset flow pays it once per run. Baseline: the encoding it used before, an optimised PNG
(`Image.save(format="PNG", optimize=True)`). Ours: `pipelines.artifacts.image_data_uri` (JPEG,
quality 85). Same picture, same thumbnail, alternating which goes first, `--repeats` times each;
prints the median, min-max, the per-repeat ratio and the size of the data URI the database keeps.
Without PICTURE: a contact sheet made here from generated shape pictures (testbed.shapes), the kind a
build writes.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.artifacts import MAX_INLINE_SIDE, image_data_uri  # noqa: E402


def png_optimized_data_uri(path: Path, max_side: int = MAX_INLINE_SIDE) -> str:
    """The previous encoding (pipelines/artifacts.py before 2026-12-01 18:55): optimised PNG."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def generated_contact_sheet(path: Path, columns: int = 12, rows: int = 12, cell: int = 64) -> Path:
    """A contact sheet of generated shape pictures, like the one a build writes."""
    import numpy as np
    from PIL import Image

    from testbed.shapes import CLASSES, render_shape_image

    rng = np.random.default_rng(0)
    sheet = Image.new("RGB", (columns * cell, rows * cell), "white")
    for i in range(columns * rows):
        picture = render_shape_image(CLASSES[i % len(CLASSES)], rng, cell)
        sheet.paste(picture, ((i % columns) * cell, (i // columns) * cell))
    sheet.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.artifact_picture", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "picture", nargs="?", type=Path, help="picture to encode (default: a generated contact sheet)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed calls of each encoding, alternating (default: 5)"
    )
    args = parser.parse_args(argv)
    if args.picture is not None and not args.picture.is_file():
        print(
            f"error: {args.picture}: no such picture; give a PNG or JPEG file, or no argument",
            file=sys.stderr,
        )
        return 2
    command = "python -m bench.artifact_picture " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        picture = args.picture or generated_contact_sheet(Path(tmp) / "contact_sheet.png")
        fns = {"optimised PNG (before)": png_optimized_data_uri, "JPEG q85 (image_data_uri)": image_data_uri}
        times: dict[str, list[float]] = {name: [] for name in fns}
        sizes = {}
        for i in range(args.repeats + 1):
            for name, fn in fns.items() if i % 2 == 0 else reversed(fns.items()):
                start = time.perf_counter()
                sizes[name] = len(fn(picture))
                if i:  # the first call of each warms PIL's codecs up
                    times[name].append(time.perf_counter() - start)
    print(f"command: {command.strip()}")
    print(
        f"picture: {'generated contact sheet' if args.picture is None else picture}; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; {args.repeats} calls each after one warm-up, alternating\n"
    )
    print("| encoding | ms, median | min-max | data URI (kB) |")
    print("|---|---:|---:|---:|")
    for name, t in times.items():
        print(
            f"| {name} | {statistics.median(t) * 1e3:.0f} | {min(t) * 1e3:.0f}-{max(t) * 1e3:.0f} | {sizes[name] / 1e3:.0f} |"
        )
    before, ours = times.values()
    ratios = [b / o for b, o in zip(before, ours)]
    print(
        f"\nspeed-up per repeat: {', '.join(f'{r:.1f}' for r in ratios)}; median x{statistics.median(ratios):.1f} "
        f"(x{min(ratios):.1f}-x{max(ratios):.1f}); saved per flow run: "
        f"{(statistics.median(before) - statistics.median(ours)):.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
