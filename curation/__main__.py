"""`python -m curation build ...`: build a curated image-text dataset (see curation/build.py).

    python -m curation build --source wit:site.tsv --out data/web --allow-networks 127.0.0.1/32
    python -m curation build --source crawl:http://127.0.0.1:8765/ --out data/web --allow-networks 127.0.0.1/32 \\
        --clip-checkpoint runs/demo/train --clip-top-fraction 0.7
    python -m curation build --config build.toml      # the same settings as TOML keys

Exit status: 0 done, 2 bad input or setting (one line on stderr, no traceback), 130 interrupted.
Rerunning with the same --out resumes.
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
            "(wit:PATH.tsv[.gz] or crawl:URL, repeatable). Rerun on the same --out to resume."
        ),
    )
    add_arguments(build, BuildConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    args = _parser().parse_args(argv)
    from curation.build import build_dataset
    from curation.clipscore import load_embedder

    def body() -> None:
        cfg = from_namespace(BuildConfig, args, toml_path=getattr(args, "config", None))
        summary = build_dataset(cfg, load_embedder(cfg))
        print(
            f"{summary.out}: kept {summary.kept}, rejected {summary.rejected} "
            f"({'already complete' if summary.skipped else 'built'}); report: {summary.report}"
        )

    return run_cli(body, interrupted="interrupted: rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
