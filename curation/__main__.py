"""`python -m curation build ...`: build a curated image-text dataset (see curation/build.py).

    python -m curation build --source wit:site.tsv --out data/web --allow-networks 127.0.0.1/32
    python -m curation build --source crawl:http://127.0.0.1:8765/ --out data/web --allow-networks 127.0.0.1/32 \\
        --clip-checkpoint runs/demo/train --clip-top-fraction 0.7
    python -m curation build --config build.toml      # the same settings as TOML keys
    python -m curation versions data/web              # the dataset's versions (docs/datasets.md)

Exit status: 0 done, 2 bad input or setting (one line on stderr, no traceback), 130 interrupted.
Rerunning with the same --out resumes an interrupted build; after a finished one it adds what is
new in the sources as the next dataset version.
"""

from __future__ import annotations

import argparse
import os
import sys

from common.errors import run_cli
from common.settings import add_arguments, from_namespace
from curation.config import BuildConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m curation", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    build = commands.add_parser(
        "build",
        help="WIT TSV / web crawl -> curated Parquet shards (download, filters, dedup, CLIP score)",
        description=(
            "Build DIR/shards, DIR/rejects, DIR/manifest.json and DIR/report.md from --source "
            "(wit:PATH.tsv[.gz] or crawl:URL, repeatable). Rerun on the same --out to resume; after a "
            "finished build, a rerun adds only new source rows and pages, as the next dataset version."
        ),
    )
    add_arguments(build, BuildConfig)
    listing = commands.add_parser(
        "versions",
        help="list a dataset's versions (pairs added, total, sources)",
        description="List the versions of a dataset directory (its Delta Lake log): train or evaluate on "
        "one with --data-version N.",
    )
    listing.add_argument("dataset", help="dataset directory written by `python -m curation build`")
    return parser


def list_versions(dataset: str) -> None:
    from pathlib import Path

    from curation import versions

    history = versions.history(dataset)
    if not history:
        raise versions.VersionError(
            f"{dataset}: no dataset versions ({versions.DELTA_LOG}/ missing); build it with `python -m curation build`"
        )
    total = 0
    print(f"{'version':>7}  {'added':>8}  {'total':>8}  {'rejected':>8}  {'unchanged':>9}  sources")
    for entry in history:
        total += entry.get("added", 0)
        print(
            f"{entry['version']:>7}  {entry.get('added', 0):>8}  {total:>8}  {entry.get('rejected', 0):>8}  "
            f"{entry.get('unchanged', 0):>9}  {', '.join(entry.get('sources', []))}"
        )
    print(f"read one with: python -m training.train --data {Path(dataset)} --data-version N ...")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    args = _parser().parse_args(argv)
    if args.command == "versions":
        return run_cli(lambda: list_versions(args.dataset))
    from curation.build import build_dataset
    from curation.clipscore import load_embedder

    def body() -> None:
        cfg = from_namespace(BuildConfig, args, toml_path=getattr(args, "config", None))
        summary = build_dataset(cfg, load_embedder(cfg))
        if summary.skipped:
            state = f"nothing new in the sources ({summary.unchanged} rows read before); version {summary.version}"
        else:
            state = f"version {summary.version}: {summary.added} new pairs"
        print(
            f"{summary.out}: kept {summary.kept}, rejected {summary.rejected} ({state}); report: {summary.report}"
        )

    return run_cli(body, interrupted="interrupted: rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
