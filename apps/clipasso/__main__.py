"""python -m apps.clipasso IMAGE: turn a picture into an SVG of cubic Bézier strokes (CLIPasso)."""

from __future__ import annotations

import sys

from apps.cli import model_choice, run_command
from apps.clipasso.cli import build_parser, config_from_args
from apps.clipasso.run import sketch_file


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = model_choice(args)
    return run_command(
        "clipasso", args.threads, lambda: sketch_file(args.image, args.out, config_from_args(args), model)
    )


if __name__ == "__main__":
    sys.exit(main())
