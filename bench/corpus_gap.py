"""Where do the corpus web's pairs lose to the clean corpus? The demo's round 1 with parts made clean.

From one finished corpus demo (`make demo` or `python -m pipelines.demo --world corpus --out OUT`),
this makes variants of its round-1 dataset (OUT/data/round1) from the site's truth file (OUT/web/truth.json)
and trains and evaluates each the same way (the demo's training: the corpus preset with the [train] table of
pipelines/params/demo_corpus.toml, and --steps, --threads, --model; the demo's held-out sets, OUT/heldout/eval):

- web: round 1 as curation kept it;
- pictures: each clean pair's picture replaced by the corpus's own PNG of its (concept, style)
  (the web serves JPEG at 48, 64 or 80 px, and img2dataset re-encodes at 64 px);
- captions: each clean pair's caption replaced by `testbed.corpus_data.caption(concept, "phrased")`
  (the clean corpus's caption for run C; the web's figcaptions add keywords and group phrases);
- both: pictures and captions;
- and each of those without the Tabler icon pairs (`-noicons`).

Junk that round 1 kept (mismatched captions, duplicates) stays as it is in every variant. Every variant is
shuffled the same way. The baseline is the clean corpus itself (`testbed.corpus_data --caption phrased`,
all training pictures, no icons, no junk), trained in the same run. Printed: one line per variant and
seed, zero-shot top-1 / top-5 (single prompt, ensemble) on the held-out twitter style, and the 9 groups.
A rerun with the same --out reuses finished trainings.

    python bench/corpus_gap.py --demo runs/demo --out runs/corpus_gap            # 9 runs, ~45 min
    python bench/corpus_gap.py --demo runs/demo --out runs/corpus_gap --variants web,both-noicons,clean
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.curation_gain import demo_training, evaluate_run, figures, finished  # noqa: E402
from common.errors import UserError  # noqa: E402
from curation import shards  # noqa: E402
from testbed.testweb import EXPECTED_REJECTS  # noqa: E402
from training.config import preset  # noqa: E402
from training.train import train  # noqa: E402

VARIANTS = (
    "clean",
    "web",
    "pictures",
    "captions",
    "both",
    "web-noicons",
    "pictures-noicons",
    "captions-noicons",
    "both-noicons",
)


def variant_rows(rows: list[dict], truth: dict, world, variant: str) -> list[dict]:
    """Round 1's rows for one variant (see the module docstring), in round 1's order."""
    from testbed.corpus_data import caption

    clean_pictures = variant.startswith(("pictures", "both"))
    clean_captions = variant.startswith(("captions", "both"))
    out = []
    for row in rows:
        t = truth.get(row["url"], {})
        style, name = str(t.get("style", "")), t.get("class")
        if variant.endswith("-noicons") and style.startswith("tabler"):
            continue
        row = dict(row)
        picture = next((p for p in world.styles.get(name, ()) if p.style == style), None)
        junk = t.get("junk") or []
        if picture is not None and not (junk and EXPECTED_REJECTS[junk[0]]):  # a pair to keep
            if clean_pictures:
                buffer = io.BytesIO()
                world.corpus.image(picture, 64).save(buffer, "PNG")
                row["jpg"] = buffer.getvalue()
            if clean_captions:
                row["caption"] = caption(world.corpus.concepts[picture.concept], "phrased", style)
        out.append(row)
    return out


def make_variant(demo: Path, out: Path, variant: str, world, truth: dict) -> Path:
    """The variant's dataset under out/data/VARIANT (reused when it exists)."""
    path = out / "data" / variant
    if variant == "clean":
        from testbed.corpus_data import Split, write_datasets

        path = out / "data" / "clean-corpus" / "train"
        if not shards.load_manifest(path).shards:  # run C's data: the emoji styles, no icons
            emoji = tuple(s for s in Split().train_styles if not s.startswith("tabler"))
            write_datasets(world.corpus, path.parent, Split(train_styles=emoji), "phrased", progress=False)
        return path
    if shards.load_manifest(path).shards:
        return path
    from testbed.corpus_data import write_shards

    files = sorted((demo / "data" / "round1" / "shards").glob("*.parquet"))
    rows = [r for f in files for r in pq.read_table(f, columns=["key", "url", "caption", "jpg"]).to_pylist()]
    write_shards(path, variant, variant_rows(rows, truth, world, variant))  # shuffled as the clean corpus is
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/corpus_gap.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--demo", type=Path, required=True, help="a finished corpus demo's output folder")
    parser.add_argument("--out", type=Path, required=True, help="where the variants and runs go")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default: 0)")
    parser.add_argument("--steps", type=int, default=500, help="training steps (default: 500)")
    parser.add_argument("--model", help="model (default: the demo's, pipelines/params/demo_corpus.toml)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training (default: 1)")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    needed = [args.demo / "web" / "truth.json", args.demo / "data" / "round1", args.demo / "heldout" / "eval"]
    try:
        if unknown:
            raise UserError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise UserError(
                f"--demo {args.demo}: missing {', '.join(missing)}; run `make demo` (or "
                "`python -m pipelines.demo --world corpus --out DIR`) first"
            )
        seeds = [int(s) for s in args.seeds.split(",")]
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from testbed.corpus import load_corpus
    from testbed.corpus_web import CorpusWorld

    world = CorpusWorld(load_corpus())
    truth = json.loads((args.demo / "web" / "truth.json").read_text())["images"]
    # the demo's training: the corpus preset with demo_corpus.toml's [train] (model, fused AdamW; steps
    # from --steps)
    demo_train = demo_training("corpus")
    if args.model:
        demo_train["model"] = args.model
    heldout = args.demo / "heldout" / "eval"
    sets = {
        "zeroshot": heldout / "concepts",
        "retrieval": heldout / "retrieval",
        "categories": heldout / "categories",
    }
    for seed in seeds:
        for variant in variants:
            data = make_variant(args.demo, args.out, variant, world, truth)
            run_dir = args.out / f"train_{variant}_seed{seed}"
            report_path = args.out / f"eval_{variant}_seed{seed}.json"
            started = time.perf_counter()
            if not finished(run_dir, args.steps):
                # the caption column alone: a variant replaces it, not the alt text or attribution
                settings = {**demo_train, "captions": ["caption"], "steps": args.steps, "seed": seed}
                settings["threads"] = args.threads
                train(preset("corpus", **settings, data=[data], out=run_dir))
            report = json.loads(report_path.read_text()) if report_path.exists() else None
            report = report or evaluate_run(run_dir, sets, report_path)
            f = figures(report, report.get("categories"))
            groups = "categories top-1 via concept names (7 prompts)"
            rows = shards.load_manifest(data).num_rows
            print(
                f"{variant:17s} seed {seed}: {rows:5d} rows, zero-shot top-1 "
                f"{f['zero-shot top-1 (single prompt)']:.0f} / {f['zero-shot top-1 (ensemble)']:.0f} %, top-5 "
                f"{f['zero-shot top-5 (single prompt)']:.0f} / {f['zero-shot top-5 (ensemble)']:.0f} %, groups "
                f"{f['categories top-1 (single prompt)']:.0f} / {f['categories top-1 (ensemble)']:.0f} % by name, "
                f"{f.get(groups, float('nan')):.0f} % through concept names "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
