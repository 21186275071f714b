"""Does curation pay? The same model, the same steps, on the unfiltered download and on the curated set.

Baseline: "unfiltered" = every row of a `curation build` that img2dataset downloaded and decoded
(kept rows + rejected rows that have image bytes: duplicates, file-name and foreign captions,
tiny or stretched pictures...). Measured: the curated shards of the same build. Both are trained
with the demo preset for the same number of steps and evaluated on held-out generated pictures:
zero-shot top-1 (single prompt and ensemble) and image-text retrieval R@1 both ways.

    python bench/curation_gain.py --build runs/demo/data/round1 --heldout runs/demo/heldout \
        --curated-run runs/demo/train --out runs/curation_gain

`--curated-run` reuses a run already trained on `--build` with the same preset (the demo's).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import shards
from testbed.shapes import CLASSES, caption_for, render_shape_image
from training.config import EvalConfig, preset
from training.evaluate import evaluate
from training.train import train


def unfiltered_dataset(build: Path, out: Path) -> int:
    """Kept + rejected rows that carry a decodable download, as one dataset."""
    if shards.has_shard(out, "unfiltered"):
        return shards.load_manifest(out).num_rows
    kept = shards.read_table(build)
    rejected = shards.read_table(build, kind=shards.REJECTS)
    rejected = rejected.filter(pc.and_(pc.is_valid(rejected["jpg"]), pc.is_valid(rejected["caption"])))
    columns = [c for c in kept.column_names if c in rejected.column_names]
    table = pa.concat_tables(
        [kept.select(columns), rejected.select(columns).cast(kept.select(columns).schema)]
    )
    shards.write_shard(out, "unfiltered", table)
    return table.num_rows


def retrieval_set(out: Path, n: int = 360, seed: int = 4321, size: int = 64) -> Path:
    """Held-out generated pairs (a seed the web never used) for image-text retrieval."""
    if shards.has_shard(out, "heldout"):
        return out
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cls = CLASSES[i % len(CLASSES)]
        buffer = io.BytesIO()
        render_shape_image(cls, rng, size).save(buffer, format="JPEG", quality=90)
        rows.append({"key": f"{i:06d}", "caption": caption_for(cls, rng), "jpg": buffer.getvalue()})
    shards.write_shard(out, "heldout", pa.Table.from_pylist(rows))
    return out


def figures(report: dict) -> dict:
    zs, rt = report["zeroshot"], report["retrieval"]
    return {
        "zero-shot top-1 (single prompt)": 100 * zs["single"]["top1"],
        "zero-shot top-1 (ensemble)": 100 * zs["ensemble"]["top1"],
        "image->text R@1": 100 * rt["image_to_text"]["R@1"],
        "text->image R@1": 100 * rt["text_to_image"]["R@1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build", type=Path, default=Path("runs/demo/data/round1"))
    parser.add_argument(
        "--heldout", type=Path, default=Path("runs/demo/heldout"), help="ImageFolder of shapes"
    )
    parser.add_argument("--curated-run", type=Path, default=None, help="reuse this run for the curated side")
    parser.add_argument("--out", type=Path, default=Path("runs/curation_gain"))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    args = parser.parse_args()

    unfiltered = args.out / "unfiltered"
    rows = {
        "curated": shards.load_manifest(args.build).num_rows,
        "unfiltered": unfiltered_dataset(args.build, unfiltered),
    }
    heldout = retrieval_set(args.out / "retrieval")
    runs = {"curated": args.curated_run, "unfiltered": None}
    data = {"curated": args.build, "unfiltered": unfiltered}
    results, minutes = {}, {}
    for name in ("unfiltered", "curated"):
        start = time.perf_counter()
        run = runs[name]
        if run is None:
            run = args.out / f"train_{name}"
            train(preset("demo", data=[data[name]], out=run, steps=args.steps, threads=args.threads))
        minutes[name] = (time.perf_counter() - start) / 60
        report = evaluate(
            EvalConfig(
                checkpoint=run, zeroshot=args.heldout, retrieval=heldout, out=args.out / f"eval_{name}.json"
            )
        )
        results[name] = figures(report)

    print(f"\n{args.steps} steps of the demo preset on each; held-out: {args.heldout} + {heldout}\n")
    print("| metric | unfiltered (baseline) | curated | curated - unfiltered |")
    print("|---|---|---|---|")
    print(f"| training pairs | {rows['unfiltered']} | {rows['curated']} | |")
    for metric in results["curated"]:
        u, c = results["unfiltered"][metric], results["curated"][metric]
        print(f"| {metric} | {u:.1f} | {c:.1f} | {c - u:+.1f} |")
    (args.out / "summary.json").write_text(json.dumps({"rows": rows, "results": results}, indent=2))


if __name__ == "__main__":
    main()
