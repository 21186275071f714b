"""The command line of apps.clipasso, derived from SketchConfig and LossConfig; `__main__` runs it."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from apps.cli import add_model_arguments
from apps.clipasso.losses import LossConfig
from apps.clipasso.optimize import SketchConfig
from common.settings import add_arguments, from_namespace

LOSS_FLAGS = ("geometric_weight", "semantic_weight")


def add_loss_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser.add_argument_group("loss weights"), LossConfig, include=LOSS_FLAGS)


def loss_from_args(args: argparse.Namespace) -> LossConfig:
    return from_namespace(LossConfig, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.clipasso",
        description="Sketch a picture with N cubic Bézier strokes optimised against a CLIP model (CLIPasso). "
        "Writes OUT/<stem>.svg, .png, _progress.gif and .json.",
    )
    parser.add_argument("image", type=Path, help="picture to sketch (PNG, JPEG, WebP, ...)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/clipasso"), help="output directory (default: %(default)s)"
    )
    add_arguments(parser.add_argument_group("sketch"), SketchConfig, exclude=("loss", "augment", "raster"))
    add_loss_arguments(parser)
    add_model_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> SketchConfig:
    return replace(from_namespace(SketchConfig, args), loss=loss_from_args(args))
