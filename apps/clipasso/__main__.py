"""python -m apps.clipasso IMAGE: turn a picture into an SVG of cubic Bézier strokes (CLIPasso)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from apps.clip import ClipLoadError
from apps.clipasso.losses import LossConfig
from apps.clipasso.optimize import SketchConfig, SketchConfigError
from apps.clipasso.output import OutputError
from apps.clipasso.picture import PictureError
from apps.clipasso.render import BackendUnavailable
from apps.clipasso.run import ModelChoice, sketch_file
from apps.clipasso.svg import SvgError

# Every error a user can cause; they print one line and exit 2, everything else is a bug with a traceback.
USER_ERRORS = (PictureError, ClipLoadError, SketchConfigError, OutputError, BackendUnavailable, SvgError)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (default: the checkpoint `make demo` trained, runs/demo/train)")
    group.add_argument("--checkpoint", type=Path, help="checkpoint file or training run directory")
    group.add_argument("--model", help="open_clip model name, e.g. ViT-B-32 (with --pretrained)")
    group.add_argument("--pretrained", help="open_clip pretrained tag or weights file, e.g. openai")
    group.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    group.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default: 1; the models are small, and on a busy machine a second "
        "thread made each step 10x slower)",
    )


def set_threads(threads: int) -> None:
    """Apply --threads; raises SketchConfigError for values that make no sense."""
    if not 1 <= threads <= 256:
        raise SketchConfigError(f"--threads {threads}: must be between 1 and 256")
    torch.set_num_threads(threads)


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


def model_choice(args: argparse.Namespace) -> ModelChoice:
    """The model the `add_model_arguments` options name."""
    return ModelChoice(
        checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained, device=args.device
    )


def run_command(name: str, threads: int, produce: Callable[[], dict[str, Path]]) -> int:
    """Apply --threads, call `produce` and print the files it wrote (exit 0). A user error is one line
    on stderr (exit 2); Ctrl-C says nothing was written (exit 130, the writers are atomic)."""
    try:
        set_threads(threads)
        files = produce()
    except USER_ERRORS as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; nothing written", file=sys.stderr)
        return 130
    for path in files.values():
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = model_choice(args)
    return run_command(
        "clipasso", args.threads, lambda: sketch_file(args.image, args.out, config_from_args(args), model)
    )


if __name__ == "__main__":
    sys.exit(main())
