"""Does curation pay? The same model, the same settings, on the unfiltered download and on the curated set.

Everything is made in the run, from one loopback test web (testbed.testweb, the demo's site by default):

- unfiltered (baseline): every pair the site's WIT TSV lists, handed to img2dataset as is (no URL check,
  no caption rule, no URL dedup, no image filter, no dedup); every row img2dataset downloads and
  decodes is kept, with the caption the WIT columns give (the first non-empty of curation's caption
  policy, else an empty caption). img2dataset runs with the same options as the curated build
  (resize to --image-size, and it honours `X-Robots-Tag: noai`: that is the site's consent, not a
  quality filter, so neither side trains on those pictures).
- curated: `curation build` on the same TSV (round 1: filters and dedup, no CLIP score), the demo's
  build settings.

Both are trained with training/presets/demo.toml for the same --steps, once per seed (--seeds, three by
default; the two sides alternate which trains first), and evaluated on the same held-out pictures:
zero-shot top-1 over the 36 classes (single prompt and ensemble) and image-text retrieval R@1 both
ways. Printed: mean, standard deviation and min-max over the seeds per side, and the per-seed
differences. A rerun with the same --out reuses finished builds, trainings and evaluations.

    python bench/curation_gain.py --out runs/curation_gain                       # the demo's site, 500 steps
    python bench/curation_gain.py --pages 40 --steps 60 --out runs/curation_gain_small  # a quick check
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation import shards  # noqa: E402
from curation.build import build_dataset, download_options  # noqa: E402
from curation.config import BuildConfig  # noqa: E402
from curation.wit import choose_caption, read_wit  # noqa: E402
from testbed.shapes import CLASSES, caption_for, render_shape_image, write_image_folder  # noqa: E402
from testbed.web import serve_testweb  # noqa: E402
from training.config import EvalConfig, preset  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.train import train  # noqa: E402

SIDES = ("unfiltered", "curated")
# Columns of the unfiltered rows (img2dataset's own, as curation's record schema names them).
UNFILTERED_COLUMNS = ("key", "url", "caption", "status", "width", "height", "sha256", "jpg")


def build_config(wit: Path, out: Path, image_size: int) -> BuildConfig:
    """The demo's round-1 build settings (pipelines/params/demo.toml [build])."""
    return BuildConfig(
        source=[f"wit:{wit}"],
        out=out,
        allow_networks=["127.0.0.1/32"],
        chunk_size=2000,
        image_size=image_size,
        processes=2,
        threads=16,
        timeout=5,
    )


def unfiltered_dataset(wit: Path, out: Path, cfg: BuildConfig) -> tuple[int, int]:
    """(pairs listed, pairs downloaded): every WIT row through img2dataset, nothing filtered."""
    from curation.download import run_img2dataset

    if shards.has_shard(out, "unfiltered"):
        done = json.loads((out / "counts.json").read_text())
        return done["listed"], done["downloaded"]
    rows = []
    for row in read_wit(wit):
        if row.fields is None:  # a line that is not a WIT row names no picture at all
            continue
        caption, _ = choose_caption(row.fields, cfg.caption_policy)
        rows.append({"url": row.fields["image_url"].strip(), "caption": caption or ""})
    out.mkdir(parents=True, exist_ok=True)
    candidates = out / "candidates.parquet"
    pq.write_table(pa.Table.from_pylist(rows), candidates)
    table = run_img2dataset(candidates, out / "downloads", download_options(cfg))
    table = table.filter(pc.and_(pc.equal(table["status"], "success"), pc.is_valid(table["jpg"])))
    table = table.select(list(UNFILTERED_COLUMNS))
    table = table.set_column(2, "caption", pc.fill_null(table["caption"], ""))
    shards.write_shard(out, "unfiltered", table)
    (out / "counts.json").write_text(json.dumps({"listed": len(rows), "downloaded": table.num_rows}))
    return len(rows), table.num_rows


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


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f} ({min(values):.1f}-{max(values):.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/curation_gain.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pages", type=int, default=600, help="pages of the test web (default: 600, the demo's)"
    )
    parser.add_argument(
        "--site-seed", type=int, default=0, help="seed of the test web (default: 0, the demo's)"
    )
    parser.add_argument("--image-size", type=int, default=64, help="download size (default: 64, the demo's)")
    parser.add_argument("--steps", type=int, default=500, help="training steps of each run (default: 500)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)"
    )
    parser.add_argument("--heldout-per-class", type=int, default=10, help="zero-shot pictures per class (10)")
    parser.add_argument("--out", type=Path, default=Path("runs/curation_gain"))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    args = parser.parse_args(argv)
    command = "python bench/curation_gain.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    with serve_testweb(pages=args.pages, seed=args.site_seed) as web:
        wit = web.write_wit(args.out / "site.tsv")
        cfg = build_config(wit, args.out / "curated", args.image_size)
        build_dataset(cfg)
        listed, downloaded = unfiltered_dataset(wit, args.out / "unfiltered", cfg)
    data = {"curated": cfg.out, "unfiltered": args.out / "unfiltered"}
    pairs = {name: shards.load_manifest(path).num_rows for name, path in data.items()}
    # Held-out: the demo's zero-shot pictures (seed 12345, 128 px) and generated retrieval pairs.
    heldout = args.out / "heldout"
    if not heldout.exists():
        write_image_folder(heldout, args.heldout_per_class, 12345, 128)
    retrieval = retrieval_set(args.out / "retrieval")

    results: dict[str, dict[int, dict]] = {name: {} for name in SIDES}
    for i, seed in enumerate(args.seeds):
        for name in SIDES if i % 2 == 0 else tuple(reversed(SIDES)):  # alternate which side goes first
            run = args.out / f"train_{name}_seed{seed}"
            report_path = args.out / f"eval_{name}_seed{seed}.json"
            if not report_path.exists():
                t = time.perf_counter()
                train(
                    preset(
                        "demo", data=[data[name]], out=run, steps=args.steps, seed=seed, threads=args.threads
                    )
                )
                print(f"{name} seed {seed}: trained in {(time.perf_counter() - t) / 60:.1f} min", flush=True)
                report = evaluate(
                    EvalConfig(checkpoint=run, zeroshot=heldout, retrieval=retrieval, out=report_path)
                )
            else:
                report = json.loads(report_path.read_text())
            results[name][seed] = figures(report)

    print(f"\ncommand: {command.strip()}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; "
        f"{(time.perf_counter() - started) / 60:.1f} min"
    )
    print(
        f"site: {args.pages} pages (seed {args.site_seed}), {listed} pairs listed in the WIT TSV, "
        f"{downloaded} downloaded by img2dataset (unfiltered), {pairs['curated']} kept by curation; "
        f"demo preset, {args.steps} steps, seeds {' '.join(map(str, args.seeds))}; held-out: "
        f"{args.heldout_per_class * len(CLASSES)} pictures (zero-shot) + 360 pairs (retrieval)\n"
    )
    print(
        "| metric | unfiltered (baseline): mean ± sd (min-max) | curated: mean ± sd (min-max) | curated - unfiltered per seed |"
    )
    print("|---|---|---|---|")
    print(f"| training pairs | {pairs['unfiltered']} | {pairs['curated']} | |")
    for metric in next(iter(results["curated"].values())):
        u = [results["unfiltered"][s][metric] for s in args.seeds]
        c = [results["curated"][s][metric] for s in args.seeds]
        diffs = ", ".join(f"{b - a:+.1f}" for a, b in zip(u, c))
        print(
            f"| {metric} | {spread(u)} | {spread(c)} | {diffs} (mean {statistics.mean(c) - statistics.mean(u):+.1f}) |"
        )
    (args.out / "summary.json").write_text(
        json.dumps({"command": command, "pairs": pairs, "listed": listed, "results": results}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
