"""The command line of apps.clipasso (parser and its mapping to SketchConfig); `__main__` runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from apps.cli import add_model_arguments
from apps.clipasso.losses import LossConfig
from apps.clipasso.optimize import SketchConfig


def add_sketch_arguments(parser: argparse.ArgumentParser, defaults: SketchConfig) -> None:
    parser.add_argument(
        "--strokes", type=int, default=defaults.strokes, help="number of strokes (default: %(default)s)"
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=defaults.iterations,
        help="maximum optimisation steps (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=defaults.seeds,
        help="random starts; the lowest loss wins (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="first random seed (default: %(default)s)"
    )
    parser.add_argument(
        "--width",
        type=float,
        default=defaults.width,
        help="stroke width as the model sees it, in model-input pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=defaults.size,
        help="canvas size of the SVG/PNG in pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=defaults.eval_every,
        help="steps between evaluations (default: %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=defaults.lr,
        help="Adam learning rate per 224 px of canvas (default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "diffvg"),
        default=defaults.backend,
        help="rasterizer (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/clipasso"), help="output directory (default: %(default)s)"
    )


def add_loss_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--geometric-weight",
        type=float,
        default=LossConfig.geometric_weight,
        help="weight of the L2 between intermediate CLIP activations (default: %(default)s, the paper's)",
    )
    parser.add_argument(
        "--semantic-weight",
        type=float,
        help="weight of 1 - cosine of the CLIP embeddings (default: the paper's 0.1 for models of 224 px "
        "and more, 1.0 for smaller inputs such as the demo model; see docs/clipasso.md)",
    )


def loss_from_args(args: argparse.Namespace) -> LossConfig:
    return LossConfig(geometric_weight=args.geometric_weight, semantic_weight=args.semantic_weight)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.clipasso",
        description="Sketch a picture with N cubic Bézier strokes optimised against a CLIP model (CLIPasso). "
        "Writes OUT/<stem>.svg, .png, _progress.gif and .json.",
    )
    parser.add_argument("image", type=Path, help="picture to sketch (PNG, JPEG, WebP, ...)")
    add_sketch_arguments(parser, SketchConfig())
    add_loss_arguments(parser)
    parser.add_argument(
        "--mask",
        choices=("auto", "alpha", "none"),
        default="auto",
        help="foreground mask: alpha = the PNG's transparency, auto = alpha when present (default: auto)",
    )
    add_model_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> SketchConfig:
    return SketchConfig(
        strokes=args.strokes,
        iterations=args.iterations,
        seeds=args.seeds,
        seed=args.seed,
        width=args.width,
        size=args.size,
        eval_every=args.eval_every,
        lr=args.lr,
        backend=args.backend,
        mask=args.mask,
        loss=loss_from_args(args),
    )
