"""One CLIPasso run from files to files: picture in, SVG/PNG/GIF/JSON out. The CLI and `make demo` call this."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from apps.cli import ModelChoice
from apps.clipasso.optimize import SketchConfig, SketchResult, sketch_picture
from apps.clipasso.output import check_writable, sketch_files, write_files
from apps.clipasso.picture import load_picture
from apps.clipasso.render import get_rasterizer
from models import LoadedCLIP


def result_image(result: SketchResult, config: SketchConfig) -> np.ndarray:
    """The best sketch rendered at the canvas size, uint8 (H, W, 3)."""
    sketch = result.sketch
    rasterize = get_rasterizer(config.backend)
    with torch.no_grad():
        image = rasterize(
            sketch.points[None], sketch.widths[None], sketch.colors[None], config.size, config.raster
        )[0]
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def report_of(
    result: SketchResult, config: SketchConfig, loaded: LoadedCLIP, image: Path, seconds: float
) -> dict:
    best = next(s for s in result.seeds if s.seed == result.best_seed)
    return {
        "image": str(image),
        "model": loaded.model_name,
        "checkpoint": loaded.path,
        "geometric_layers": result.encoder,
        "loss_weights": {
            "geometric": result.loss.geometric_weight,
            "semantic": result.loss.semantic_weight,
        },
        "strokes": config.strokes,
        "stroke_width_canvas_px": result.stroke_width,
        "best_seed": result.best_seed,
        "best_step": best.best_step,
        "best_loss": best.best_loss,
        "steps": result.steps,
        "optimise_seconds": round(result.seconds, 3),
        "total_seconds": round(seconds, 3),
        "seeds": [
            {
                "seed": s.seed,
                "best_step": s.best_step,
                "best_loss": s.best_loss,
                "evaluations": [{"step": step, "loss": loss} for step, loss in s.evaluations],
            }
            for s in result.seeds
        ],
        "config": dataclasses.asdict(config),
    }


def sketch_file(
    image: Path | str,
    out_dir: Path | str,
    config: SketchConfig = SketchConfig(),
    model: ModelChoice = ModelChoice(),
    loaded: LoadedCLIP | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Sketch `image` into `out_dir`; returns the written files by name. Raises a one-line error on bad input.

    Pass `loaded` to reuse a model across pictures (the evaluation script does).
    """
    started = time.perf_counter()
    image, out_dir = Path(image), Path(out_dir)
    config.validate()
    get_rasterizer(config.backend)
    picture = load_picture(image, config.size, config.mask)
    existed = out_dir.exists()
    check_writable(out_dir)
    try:
        loaded = loaded or model.load()
        result = sketch_picture(picture, loaded, config, progress=progress)
        report = report_of(result, config, loaded, image, time.perf_counter() - started)
        files = sketch_files(
            image.stem, result.sketch, result_image(result, config), result.frames, report, config.gif_frames
        )
        return write_files(out_dir, files)
    except BaseException:
        if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # leave nothing behind for a run that wrote nothing
        raise
