"""`python -m curation build ...`: build a curated image-text dataset (see curation/build.py).

    python -m curation build --source wit:site.tsv --out data/web --allow-private
    python -m curation build --source crawl:http://127.0.0.1:8765/ --out data/web --allow-private \\
        --clip-checkpoint runs/demo/train --clip-top-fraction 0.7
    python -m curation build --config build.toml      # the same settings as TOML keys

Exit status: 0 done, 1 bad input or setting (one line on stderr, no traceback), 130 interrupted.
Rerunning with the same --out resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from curation.config import BuildConfig
from curation.settings import ConfigError, add_arguments, from_namespace


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


def load_embedder(cfg: BuildConfig) -> Any:
    """The CLIP model for the score stage, loaded through the model layer (entry points may import training)."""
    if not cfg.wants_clip:
        return None
    from curation.clipscore import ClipEmbedder
    from training.model import CheckpointError, PretrainedUnavailableError, load_clip, load_pretrained

    try:
        if cfg.clip_checkpoint is not None:
            loaded = load_clip(cfg.clip_checkpoint, cfg.device)
        else:
            loaded = load_pretrained(cfg.clip_model, cfg.clip_pretrained, cfg.device)
    except (CheckpointError, PretrainedUnavailableError, ValueError, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from exc
    return ClipEmbedder(loaded.model, loaded.preprocess, loaded.tokenizer, cfg.device)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    args = _parser().parse_args(argv)
    from curation.build import BuildError, build_dataset
    from curation.shards import ShardError

    try:
        cfg = from_namespace(BuildConfig, args, toml_path=getattr(args, "config", None))
        embedder = load_embedder(cfg)
        summary = build_dataset(cfg, embedder)
    except (ConfigError, BuildError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    print(
        f"{summary.out}: kept {summary.kept}, rejected {summary.rejected} "
        f"({'already complete' if summary.skipped else 'built'}); report: {summary.report}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
