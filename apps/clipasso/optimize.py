"""CLIPasso's optimisation: Adam on control points against a picture, through the shared stroke loop.

The loop itself (seeds as one batch, evaluate every k steps, keep the best, stop early) is
apps/strokes.py, shared with CLIPDraw; this module brings CLIPasso's loss, start strokes and options.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from apps.clipasso.augment import AugmentConfig, apply_views, sample_views
from apps.clipasso.losses import ClipImageEncoder, LossConfig, sketch_losses, total_loss
from apps.clipasso.picture import MaskMode, Picture
from apps.clipasso.render import RasterConfig, black_strokes, get_rasterizer
from apps.clipasso.render import render as render_strokes
from apps.clipasso.saliency import initial_strokes, saliency_map, sample_start_points
from apps.clipasso.svg import Sketch
from apps.strokes import Schedule, Strokes, optimise_strokes
from common.errors import UserError
from models import LoadedCLIP

# CLIPasso's learning rate is 1.0 in pixels of a 224 px canvas.
PAPER_CANVAS = 224


class SketchConfigError(UserError, ValueError):
    """A sketch option is out of range; the message names the option and the allowed range."""


@dataclass(frozen=True)
class SketchConfig:
    """Options of one CLIPasso run (the paper's values by default, fewer steps thanks to early stopping)."""

    strokes: int = field(default=16, metadata={"help": "number of strokes"})
    iterations: int = field(default=500, metadata={"help": "maximum optimisation steps"})
    seeds: int = field(default=3, metadata={"help": "random starts; the lowest loss wins"})
    # stroke width as the model sees it, in model-input pixels (see docs/clipasso.md)
    width: float = field(
        default=1.5, metadata={"help": "stroke width as the model sees it, in model-input pixels"}
    )
    size: int = field(default=224, metadata={"help": "canvas size of the SVG/PNG in pixels"})
    mask: MaskMode = field(
        default="auto",
        metadata={"help": "foreground mask: alpha = the PNG's transparency, auto = alpha when present"},
    )
    backend: Literal["torch", "diffvg"] = field(default="torch", metadata={"help": "rasterizer"})
    seed: int = field(default=0, metadata={"help": "first random seed"})
    lr: float = field(default=1.0, metadata={"help": "Adam learning rate per 224 px of canvas"})
    eval_every: int = field(default=10, metadata={"help": "steps between evaluations"})
    patience: int = field(
        default=5,
        metadata={"help": "evaluations without a relative improvement of --min-improvement before stopping"},
    )
    min_improvement: float = field(
        default=1e-3, metadata={"help": "relative loss improvement that resets patience"}
    )
    temperature: float = field(
        default=0.3, metadata={"help": "softmax temperature of the saliency-guided start points"}
    )
    control_radius: float = field(
        default=0.05, metadata={"help": "spread of a new stroke's control points (canvas fraction)"}
    )
    gif_frames: int = field(default=40, metadata={"help": "frames in the progress GIF"})
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    raster: RasterConfig = field(default_factory=RasterConfig)

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.iterations, self.eval_every, self.patience, self.min_improvement)

    def validate(self) -> None:
        checks = [
            ("--strokes", self.strokes, 1, 1024),
            ("--iterations", self.iterations, 1, 100_000),
            ("--seeds", self.seeds, 1, 64),
            ("--width", self.width, 0.05, 64.0),
            ("--size", self.size, 32, 2048),
            ("--eval-every", self.eval_every, 1, 100_000),
            ("--lr", self.lr, 1e-6, 100.0),
            ("--geometric-weight", self.loss.geometric_weight, 0, 1000),
        ]
        if self.loss.semantic_weight is not None:  # None: chosen by the model's input size
            checks.append(("--semantic-weight", self.loss.semantic_weight, 0, 1000))
        for name, value, low, high in checks:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise SketchConfigError(f"{name} {value}: must be between {low} and {high}")
        if self.loss.geometric_weight == 0 and self.loss.semantic_weight == 0:
            raise SketchConfigError(
                "--geometric-weight and --semantic-weight are both 0: nothing to optimise"
            )
        if self.mask not in ("auto", "alpha", "none"):
            raise SketchConfigError(f"--mask {self.mask!r}: choose auto, alpha or none")


def canvas_width(config: SketchConfig, model_size: int) -> float:
    """Stroke width on the canvas so the model sees `config.width` pixels after the resize."""
    return config.width * max(1.0, config.size / model_size)


@dataclass
class SeedResult:
    seed: int
    evaluations: list[tuple[int, float]]  # (step, plain-view loss)
    best_step: int
    best_loss: float
    best_points: torch.Tensor  # (N, 4, 2)


@dataclass
class SketchResult:
    sketch: Sketch  # the best seed's strokes
    best_seed: int
    seeds: list[SeedResult]
    frames: list[np.ndarray]  # the best seed's canvas at each evaluation, uint8 (H, W, 3)
    steps: int
    seconds: float
    encoder: str
    stroke_width: float
    loss: LossConfig  # the weights and layers used, resolved for the model (no None)


def optimisation_canvas(size: int, model_size: int) -> int:
    """Render where the model looks: a canvas larger than the model's input is drawn directly at the input
    size with coordinates and widths scaled (same picture as drawing big and shrinking it, 10x cheaper)."""
    return min(size, model_size)


def to_model_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased resize of canvases to the model's input size (thin strokes become grey, not gaps)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def initial_points(
    picture: Picture, encoder: ClipImageEncoder, config: SketchConfig, saliency: np.ndarray | None = None
) -> torch.Tensor:
    """Start strokes for every seed: (seeds, strokes, 4, 2)."""
    if saliency is None:
        saliency = saliency_map(encoder, picture.rgb, picture.mask)
    batch = []
    for s in range(config.seeds):
        rng = np.random.default_rng(config.seed + s)
        starts = sample_start_points(saliency, config.strokes, config.temperature, rng, picture.mask)
        batch.append(initial_strokes(starts, config.size, config.control_radius, rng))
    return torch.stack(batch)


def sketch_picture(
    picture: Picture,
    loaded: LoadedCLIP,
    config: SketchConfig,
    progress: bool = True,
    initial: torch.Tensor | None = None,
) -> SketchResult:
    """Optimise `config.seeds` sketches of `picture` with CLIPasso's losses; return the best one."""
    config.validate()
    started = time.perf_counter()
    encoder = ClipImageEncoder(loaded, config.loss)
    try:
        return _sketch(picture, encoder, config, progress, initial, started)
    finally:  # the encoder hooks the model: unhooked, a later forward of the model feeds no stale list
        encoder.close()


def _sketch(
    picture: Picture,
    encoder: ClipImageEncoder,
    config: SketchConfig,
    progress: bool,
    initial: torch.Tensor | None,
    started: float,
) -> SketchResult:
    rasterize = get_rasterizer(config.backend)
    device = encoder.mean.device
    model_size = encoder.image_size
    target = to_model_input(picture.rgb[None].to(device), model_size)

    points = (initial if initial is not None else initial_points(picture, encoder, config)).to(device)
    points = points.clone().requires_grad_(True)
    widths, colors = black_strokes(points.detach(), canvas_width(config, model_size))
    strokes = Strokes(points, widths, colors)
    optimizer = torch.optim.Adam([points], lr=config.lr * config.size / PAPER_CANVAS)
    generator = torch.Generator().manual_seed(config.seed)
    views = config.augment.views + 1
    render_size = optimisation_canvas(config.size, model_size)
    scale = render_size / config.size

    def step_loss(step: int) -> torch.Tensor:
        grids = sample_views(config.augment, model_size, generator)
        with torch.no_grad():
            target_features = encoder(apply_views(target, grids).flatten(0, 1))
        canvas = rasterize(points * scale, widths * scale, colors, render_size, config.raster)
        sketch_features = encoder(apply_views(to_model_input(canvas, model_size), grids).flatten(0, 1))
        geometric, semantic = sketch_losses(sketch_features, target_features, views, encoder.config)
        return total_loss(geometric, semantic, encoder.config)  # (seeds, views)

    def render_frames() -> torch.Tensor:
        return rasterize(points.detach(), widths, colors, config.size, config.raster)

    loop = optimise_strokes(
        strokes, step_loss, optimizer, render_frames, config.schedule, desc="clipasso", first_seed=config.seed,
        progress=progress,
    )  # fmt: skip
    winner = loop.winner
    seeds = [
        SeedResult(
            config.seed + s,
            loop.evaluations[s],
            loop.best_step[s],
            loop.best_loss[s],
            loop.best[s].points.cpu(),
        )
        for s in range(points.shape[0])
    ]
    sketch = Sketch(
        points=loop.best[winner].points.cpu(),
        widths=widths[winner].cpu(),
        colors=colors[winner].cpu(),
        width=config.size,
        height=config.size,
    )
    return SketchResult(
        sketch=sketch,
        best_seed=config.seed + winner,
        seeds=seeds,
        frames=loop.frames[winner],
        steps=loop.steps,
        seconds=time.perf_counter() - started,
        encoder=encoder.description,
        stroke_width=canvas_width(config, model_size),
        loss=encoder.config,
    )


def fit_pixels(
    target: torch.Tensor,
    initial: torch.Tensor,
    widths: torch.Tensor,
    colors: torch.Tensor,
    steps: int = 200,
    lr: float = 0.5,
    raster: RasterConfig = RasterConfig(),
) -> torch.Tensor:
    """Fit stroke control points (B, N, 4, 2) to a target image (B, 3, H, W) by pixel L2 with Adam.

    The check that the rasterizer's gradients can move strokes where they belong, without CLIP.
    """
    points = initial.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([points], lr=lr)
    size = tuple(target.shape[-2:])
    for _ in range(steps):
        loss = (render_strokes(points, widths, colors, size, raster) - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return points.detach()
