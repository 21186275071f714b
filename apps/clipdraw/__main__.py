"""python -m apps.clipdraw "TEXT PROMPT": a drawing of coloured Bézier strokes that CLIP matches to the text."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from apps.cli import ModelChoice, add_model_arguments, model_choice, run_command
from apps.clipasso.optimize import SketchConfigError
from apps.clipasso.output import check_writable, sketch_files, write_files
from apps.clipasso.render import get_rasterizer
from apps.clipdraw.draw import DrawConfig, DrawResult, draw_prompt, prompt_stem
from common.settings import add_arguments, from_namespace
from models import LoadedCLIP


def draw_to_files(
    prompt: str,
    out_dir: Path | str,
    config: DrawConfig = DrawConfig(),
    model: ModelChoice = ModelChoice(),
    loaded: LoadedCLIP | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Draw `prompt` into OUT/<prompt_stem>.svg, .png, _progress.gif, .json; returns the written files."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    config.validate()
    if not prompt.strip():
        raise SketchConfigError('the text prompt is empty: pass a description such as "a red circle"')
    rasterize = get_rasterizer(config.backend)
    existed = out_dir.exists()
    check_writable(out_dir)
    try:
        loaded = loaded or model.load()
        result: DrawResult = draw_prompt(prompt, loaded, config, progress=progress)
        s = result.sketch
        with torch.no_grad():
            image = rasterize(s.points[None], s.widths[None], s.colors[None], config.size, config.raster)[0]
        image = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        report = {
            "prompt": prompt,
            "model": loaded.model_name,
            "checkpoint": loaded.path,
            "best_seed": result.best_seed,
            "best_step": result.best_step,
            "best_loss": result.best_loss,
            "steps": result.steps,
            "optimise_seconds": round(result.seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
            "seeds": [
                {"seed": config.seed + i, "evaluations": [{"step": a, "loss": b} for a, b in ev]}
                for i, ev in enumerate(result.evaluations)
            ],
            "config": dataclasses.asdict(config),
        }
        files = sketch_files(prompt_stem(prompt), s, image, result.frames, report, config.gif_frames)
        return write_files(out_dir, files)
    except BaseException:
        if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.clipdraw",
        description="Draw a text prompt with coloured cubic Bézier strokes optimised against a CLIP model "
        "(CLIPDraw). Writes OUT/<prompt>.svg, .png, _progress.gif and .json.",
    )
    parser.add_argument("prompt", help='what to draw, e.g. "a red circle"')
    parser.add_argument(
        "--out", type=Path, default=Path("runs/clipdraw"), help="output directory (default: %(default)s)"
    )
    add_arguments(parser.add_argument_group("drawing"), DrawConfig, exclude=("augment", "raster"))
    add_model_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(
        "clipdraw",
        args.threads,
        lambda: draw_to_files(args.prompt, args.out, from_namespace(DrawConfig, args), model_choice(args)),
    )


if __name__ == "__main__":
    sys.exit(main())
