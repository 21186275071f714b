"""Does curation pay? The same model, the same settings, on the unfiltered download and on the curated set.

Everything is made in the run, from one loopback test web (testbed.testweb, the demo's site by default;
`--world corpus`: the real emoji and icon web of `make demo-corpus`, see "Corpus mode" below):

- unfiltered (baseline): every pair the site's WIT TSV lists, handed to img2dataset as is (no URL check,
  no caption rule, no URL dedup, no image filter, no dedup); every row img2dataset downloads and
  decodes is kept, with the caption the WIT columns give (the first non-empty of curation's caption
  policy, else an empty caption). img2dataset runs with the same options as the curated build
  (resize to --image-size, and it honours `X-Robots-Tag: noai`: that is the site's consent, not a
  quality filter, so neither side trains on those pictures).
- curated: `curation build` on the same TSV (round 1: filters and dedup, no CLIP score), the demo's
  build settings (the [build] table of pipelines/params/demo.toml, demo_corpus.toml for the corpus).

Both are trained as the demo trains (the world's training preset with the [train] table of its params file:
for the corpus the model, fused AdamW, steps and the caption columns of demo_corpus.toml; the unfiltered
side carries those WIT text columns too) for the same --steps, once per seed (--seeds, three by
default; the two sides alternate which trains first), and evaluated on the same held-out pictures:
zero-shot top-1 over the 36 classes (single prompt and ensemble) and image-text retrieval R@1 both
ways. Printed: mean, standard deviation and min-max over the seeds per side, and the per-seed
differences. A rerun with the same --out reuses finished builds, trainings and evaluations.

    python bench/curation_gain.py --out runs/curation_gain                       # the demo's site, 500 steps
    python bench/curation_gain.py --pages 40 --steps 60 --out runs/curation_gain_small  # a quick check

Corpus mode (`--world corpus`, issue #13): the site is testbed.corpus_web.CorpusWorld over the cached
corpus (`python -m testbed.corpus fetch`; 1800 pages by default, as `make demo-corpus`), the curated side
uses demo_corpus.toml's [build] (min_words = 1), both sides train as `make demo-corpus` does, and
the evaluation is the demo's: the held-out twitter style (testbed.corpus_data.write_datasets, train=False),
zero-shot over 100 concepts (eval/concepts; single prompt and 80-prompt ensemble, top-1 and top-5),
retrieval against their names (eval/retrieval) and zero-shot over the 9 emoji groups (eval/categories).
`--small` serves the small corpus slice the tests use (openmoji, Tabler; openmoji line art held out).

    python bench/curation_gain.py --world corpus --out runs/curation_gain_corpus      # 1800 pages, the demo's 2000 steps
    python bench/curation_gain.py --world corpus --pages 40 --steps 20 --seeds 0 --out /tmp/gain_check
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

from common.errors import UserError  # noqa: E402
from common.settings import load_config, read_toml  # noqa: E402
from curation import shards  # noqa: E402
from curation.build import build_dataset, download_options  # noqa: E402
from curation.config import BuildConfig  # noqa: E402
from curation.wit import choose_caption, read_wit  # noqa: E402
from pipelines.demo import WORLDS  # noqa: E402  (per world: params file, training preset, pages)
from testbed.shapes import CLASSES, caption_for, render_shape_image, write_image_folder  # noqa: E402
from testbed.testweb import SiteOptions  # noqa: E402
from testbed.web import serve_testweb  # noqa: E402
from training.config import EvalConfig, preset  # noqa: E402
from training.data import caption_columns  # noqa: E402
from training.evaluate import evaluate, via_subclasses  # noqa: E402
from training.train import train  # noqa: E402

SIDES = ("unfiltered", "curated")
# --small: the corpus slice the tests use (testbed.corpus.SMALL: openmoji, Tabler, emojibase), with a
# split it can give (its only emoji styles are OpenMoji's: the line art is held out, 20 concepts evaluated).
SMALL_SPLIT = {
    "held_out_style": "openmoji-black",
    "train_styles": ("openmoji-color", "tabler-outline"),
    "held_out_fraction": 0.1,
    "eval_concepts": 20,
}
# Columns of the unfiltered rows (img2dataset's own, as curation's record schema names them).
UNFILTERED_COLUMNS = ("key", "url", "caption", "status", "width", "height", "sha256", "jpg")


def build_config(wit: Path, out: Path, image_size: int, world: str = "shapes") -> BuildConfig:
    """The demo's round-1 build settings: the [build] table of the world's params file
    (pipelines/params/demo.toml: allow 127.0.0.1/32, 64 px, 2 processes x 16 threads, timeout 5;
    demo_corpus.toml adds min_words = 1)."""
    params = WORLDS[world]["params"]
    overrides = {"source": [f"wit:{wit}"], "out": out, "image_size": image_size}
    return load_config(BuildConfig, params, overrides, section="build")


def corpus_site(small: bool) -> tuple[SiteOptions, object, object]:
    """The corpus web's options (CorpusWorld over the cached corpus), the corpus and its split."""
    from testbed.corpus import PACKAGES, SMALL, fetch, load_corpus
    from testbed.corpus_data import Split
    from testbed.corpus_web import CorpusWorld

    packages = list(SMALL if small else PACKAGES)
    fetch(packages, progress=False)  # offline once cached (~/.cache/clip-workbench/corpus)
    corpus = load_corpus(require=packages)
    split = Split(**SMALL_SPLIT) if small else Split()
    return SiteOptions(world=CorpusWorld(corpus, split)), corpus, split


def demo_training(world: str) -> dict:
    """The [train] table of the world's params file: what the demo sets over its training preset."""
    return read_toml(WORLDS[world]["params"]).get("train", {})


def unfiltered_dataset(
    wit: Path, out: Path, cfg: BuildConfig, texts: tuple[str, ...] = ()
) -> tuple[int, int]:
    """(pairs listed, pairs downloaded): every WIT row through img2dataset, nothing filtered; `texts`:
    WIT text columns carried as they are (those the training reads besides the caption)."""
    from curation.download import run_img2dataset

    if shards.has_shard(out, "unfiltered"):
        done = json.loads((out / "counts.json").read_text())
        return done["listed"], done["downloaded"]
    rows = []
    for row in read_wit(wit):
        if row.fields is None:  # a line that is not a WIT row names no picture at all
            continue
        caption, _ = choose_caption(row.fields, cfg.caption_policy)
        extra = {name: (row.fields.get(name) or None) for name in texts}
        rows.append({"url": row.fields["image_url"].strip(), "caption": caption or "", **extra})
    out.mkdir(parents=True, exist_ok=True)
    candidates = out / "candidates.parquet"
    pq.write_table(pa.Table.from_pylist(rows), candidates)
    table = run_img2dataset(candidates, out / "downloads", download_options(cfg))
    table = table.filter(pc.and_(pc.equal(table["status"], "success"), pc.is_valid(table["jpg"])))
    table = table.select([*UNFILTERED_COLUMNS, *texts])
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


def figures(report: dict, categories: dict | None = None) -> dict:
    """The table's rows from training.evaluate reports; the corpus adds top-5 and the 9-group zero-shot."""
    zs, rt = report["zeroshot"], report["retrieval"]
    out = {
        "zero-shot top-1 (single prompt)": 100 * zs["single"]["top1"],
        "zero-shot top-1 (ensemble)": 100 * zs["ensemble"]["top1"],
        "zero-shot top-1 (class name alone)": 100 * zs["name"]["top1"],
    }
    if categories is not None:
        out["zero-shot top-5 (single prompt)"] = 100 * zs["single"]["top5"]
        out["zero-shot top-5 (ensemble)"] = 100 * zs["ensemble"]["top5"]
        cz = categories["zeroshot"]
        out["categories top-1 (single prompt)"] = 100 * cz["single"]["top1"]
        out["categories top-1 (ensemble)"] = 100 * cz["ensemble"]["top1"]
        # with eval/categories/subclasses.json, training.evaluate also scores a group through the names
        # of the concepts it holds (summed probability, docs/corpus.md)
        for name, label in (("single", "single prompt"), ("7-prompt ensemble", "7 prompts")):
            if via_subclasses(name) in cz:
                out[f"categories top-1 via concept names ({label})"] = 100 * cz[via_subclasses(name)]["top1"]
    out["image->text R@1"] = 100 * rt["image_to_text"]["R@1"]
    out["text->image R@1"] = 100 * rt["text_to_image"]["R@1"]
    return out


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f} ({min(values):.1f}-{max(values):.1f})"


def finished(run_dir: Path, steps: int) -> bool:
    """The run's latest checkpoint is its last step: training it again would start from scratch."""
    latest = run_dir / "latest"
    return latest.is_file() and latest.read_text().strip().endswith(f"step_{steps:06d}.pt")


def heldout_sets(args: argparse.Namespace, corpus: object, split: object) -> dict[str, Path]:
    """The evaluation sets, written once under OUT: zero-shot folder(s) and retrieval shards."""
    if args.world == "corpus":
        from testbed.corpus_data import write_datasets

        heldout = args.out / "heldout"
        if not (heldout / "split.json").exists():  # as pipelines.tasks.write_corpus_heldout
            write_datasets(corpus, heldout, split, size=64, progress=False, train=False)
        return {
            "zeroshot": heldout / "eval" / "concepts",
            "retrieval": heldout / "eval" / "retrieval",
            "categories": heldout / "eval" / "categories",
        }
    # the demo's zero-shot pictures (seed 12345, 128 px) and generated retrieval pairs
    heldout = args.out / "heldout"
    if not heldout.exists():
        write_image_folder(heldout, args.heldout_per_class, 12345, 128)
    return {"zeroshot": heldout, "retrieval": retrieval_set(args.out / "retrieval")}


def evaluate_run(run: Path, sets: dict[str, Path], report_path: Path) -> dict:
    """training.evaluate on the held-out sets (the corpus: concepts + retrieval, then the 9 groups)."""
    report = evaluate(
        EvalConfig(
            checkpoint=run,
            zeroshot=sets["zeroshot"],
            retrieval=sets["retrieval"],
            batch_size=128,
            out=report_path.with_suffix(".partial.json") if "categories" in sets else report_path,
        )
    )
    if "categories" not in sets:
        return report
    categories = evaluate(
        EvalConfig(
            checkpoint=run,
            zeroshot=sets["categories"],
            batch_size=128,
            out=report_path.with_suffix(".categories.json"),
        )
    )
    report = {**report, "categories": categories}
    report_path.write_text(json.dumps(report, indent=2))  # written last: a rerun reuses it only when complete
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/curation_gain.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--world",
        choices=sorted(WORLDS),
        default="shapes",
        help="the test web: generated shapes (default, the demo's) or the real emoji and icon corpus",
    )
    parser.add_argument(
        "--pages",
        type=int,
        default=None,
        help="pages of the test web (default: the demo's, 600 shapes or 1800 corpus)",
    )
    parser.add_argument(
        "--site-seed", type=int, default=0, help="seed of the test web (default: 0, the demo's)"
    )
    parser.add_argument("--image-size", type=int, default=64, help="download size (default: 64, the demo's)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps of each run (default: the demo's: 500 shapes, 2000 corpus)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="training batch (default: the preset's, 128)"
    )
    parser.add_argument(
        "--heldout-per-class", type=int, default=10, help="shapes: zero-shot pictures per class (10)"
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="corpus: the small slice the tests use (openmoji + Tabler; openmoji line art held out)",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: runs/curation_gain[_corpus]")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    args = parser.parse_args(argv)
    try:
        return run(args, "python bench/curation_gain.py " + " ".join(sys.argv[1:] if argv is None else argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, command: str) -> int:
    world = WORLDS[args.world]
    if args.small and args.world != "corpus":
        raise UserError("--small is a corpus slice: use it with --world corpus")
    pages = args.pages or world["pages"]
    training = demo_training(args.world)
    args.steps = args.steps or training.get("steps", 500)
    texts = tuple(c for c in caption_columns(training.get("captions", ())) if c != "caption")
    args.out = args.out or Path("runs/curation_gain" + ("_corpus" if args.world == "corpus" else ""))
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    timing_path = args.out / "times.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}

    options, corpus, split = (
        corpus_site(args.small) if args.world == "corpus" else (SiteOptions(), None, None)
    )
    t = time.perf_counter()
    with serve_testweb(pages=pages, seed=args.site_seed, options=options) as web:
        wit = web.write_wit(args.out / "site.tsv")
        cfg = build_config(wit, args.out / "curated", args.image_size, args.world)
        print(f"site: {pages} pages served ({time.perf_counter() - t:.0f} s); curated build...", flush=True)
        t = time.perf_counter()
        # a finished build is reused as it is: the rerun's web is on another port, so its URLs are new
        # and curation would download and finalize the site again
        if not shards.load_manifest(cfg.out).shards:
            build_dataset(cfg)
        timing.setdefault("curated build s", round(time.perf_counter() - t, 1))
        print(f"curated build: {time.perf_counter() - t:.0f} s; unfiltered download...", flush=True)
        t = time.perf_counter()
        listed, downloaded = unfiltered_dataset(wit, args.out / "unfiltered", cfg, texts)
        timing.setdefault("unfiltered download s", round(time.perf_counter() - t, 1))
    data = {"curated": cfg.out, "unfiltered": args.out / "unfiltered"}
    pairs = {name: shards.load_manifest(path).num_rows for name, path in data.items()}
    print(f"pairs: {pairs['unfiltered']} unfiltered, {pairs['curated']} curated", flush=True)
    sets = heldout_sets(args, corpus, split)

    results: dict[str, dict[int, dict]] = {name: {} for name in SIDES}
    for i, seed in enumerate(args.seeds):
        for name in SIDES if i % 2 == 0 else tuple(reversed(SIDES)):  # alternate which side goes first
            run_dir = args.out / f"train_{name}_seed{seed}"
            report_path = args.out / f"eval_{name}_seed{seed}.json"
            if not report_path.exists() and finished(run_dir, args.steps):
                report = evaluate_run(run_dir, sets, report_path)  # trained before, not evaluated yet
            elif not report_path.exists():
                t, load = time.perf_counter(), os.getloadavg()[0]
                settings = {**training, "steps": args.steps, "seed": seed, "threads": args.threads}
                if args.batch_size:
                    settings["batch_size"] = args.batch_size
                result = train(preset(world["preset"], **settings, data=[data[name]], out=run_dir))
                minutes = (time.perf_counter() - t) / 60
                timing[f"train {name} seed {seed}"] = {
                    "minutes": round(minutes, 2),
                    "load average at start": round(load, 1),
                    "load average at end": round(os.getloadavg()[0], 1),
                    "steps": result.steps,
                }
                timing_path.write_text(json.dumps(timing, indent=2))
                print(f"{name} seed {seed}: trained in {minutes:.1f} min (load {load:.1f})", flush=True)
                report = evaluate_run(run_dir, sets, report_path)
            else:
                report = json.loads(report_path.read_text())
            results[name][seed] = figures(report, report.get("categories"))
            print(
                f"{name} seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in results[name][seed].items()),
                flush=True,
            )
    timing_path.write_text(json.dumps(timing, indent=2))

    print(f"\ncommand: {command.strip()}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; "
        f"{(time.perf_counter() - started) / 60:.1f} min"
    )
    if args.world == "corpus":
        counts = json.loads((args.out / "heldout" / "split.json").read_text())["counts"]
        held = (
            f"held-out style {split.held_out_style}: {counts['concepts']} concepts (zero-shot), "
            f"{counts['categories']} pictures in their emoji groups (categories), {counts['retrieval']} pairs (retrieval)"
        )
    else:
        held = f"{args.heldout_per_class * len(CLASSES)} pictures (zero-shot) + 360 pairs (retrieval)"
    print(
        f"site: {args.world}, {pages} pages (seed {args.site_seed}), {listed} pairs listed in the WIT TSV, "
        f"{downloaded} downloaded by img2dataset (unfiltered), {pairs['curated']} kept by curation; "
        f"{world['preset']} preset, {args.steps} steps, seeds {' '.join(map(str, args.seeds))}; held-out: {held}\n"
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
        json.dumps(
            {
                "command": command,
                "world": args.world,
                "pages": pages,
                "pairs": pairs,
                "listed": listed,
                "results": results,
                "times": timing,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
