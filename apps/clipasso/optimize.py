"""The optimisation loop: Adam on control points, shared augmentations, evaluate every k steps, keep the best.

All seeds are optimised together as one batch of sketches: one model load, one rasterizer call and one
CLIP forward per step for every seed. Adam is per-coordinate and the seeds' losses are summed, so each
seed follows exactly the path it would follow alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from apps.clipasso.augment import AugmentConfig, apply_views, sample_views
from apps.clipasso.losses import ClipImageEncoder, LossConfig, sketch_losses, total_loss
from apps.clipasso.picture import MaskMode, Picture
from apps.clipasso.render import RasterConfig, black_strokes, get_rasterizer
from apps.clipasso.render import render as render_strokes
from apps.clipasso.saliency import initial_strokes, saliency_map, sample_start_points
from apps.clipasso.svg import Sketch
from common.errors import UserError
from models import LoadedCLIP

# CLIPasso's learning rate is 1.0 in pixels of a 224 px canvas.
PAPER_CANVAS = 224


class SketchConfigError(UserError, ValueError):
    """A sketch option is out of range; the message names the option and the allowed range."""


@dataclass(frozen=True)
class SketchConfig:
    """Options of one CLIPasso run (the paper's values by default, fewer steps thanks to early stopping)."""

    strokes: int = 16
    iterations: int = 500
    seeds: int = 3
    width: float = 1.5  # stroke width as the model sees it, in model-input pixels (see docs/clipasso.md)
    size: int = 224
    mask: MaskMode = "auto"
    backend: Literal["torch", "diffvg"] = "torch"
    seed: int = 0
    lr: float = 1.0  # per 224 px of canvas, scaled with --size
    eval_every: int = 10
    patience: int = 5  # evaluations without a relative improvement of `min_improvement` before stopping
    min_improvement: float = 1e-3
    temperature: float = 0.3
    control_radius: float = 0.05
    gif_frames: int = 40
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    raster: RasterConfig = field(default_factory=RasterConfig)

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


def _frame(image: torch.Tensor) -> np.ndarray:
    return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


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
    rasterize = get_rasterizer(config.backend)
    started = time.perf_counter()
    encoder = ClipImageEncoder(loaded, config.loss)
    device = encoder.mean.device
    model_size = encoder.image_size
    target = to_model_input(picture.rgb[None].to(device), model_size)

    points = (initial if initial is not None else initial_points(picture, encoder, config)).to(device)
    points = points.clone().requires_grad_(True)
    widths, colors = black_strokes(points.detach(), canvas_width(config, model_size))
    optimizer = torch.optim.Adam([points], lr=config.lr * config.size / PAPER_CANVAS)
    generator = torch.Generator().manual_seed(config.seed)
    views = config.augment.views + 1
    render_size = optimisation_canvas(config.size, model_size)
    scale = render_size / config.size

    n_seeds = points.shape[0]
    evaluations: list[list[tuple[int, float]]] = [[] for _ in range(n_seeds)]
    best_loss = [math.inf] * n_seeds
    best_step = [0] * n_seeds
    best_points = points.detach().clone()
    frames: list[list[np.ndarray]] = [[] for _ in range(n_seeds)]
    overall_best, stale, step = math.inf, 0, 0

    bar = tqdm(total=config.iterations, desc="clipasso", unit="step", disable=not progress, leave=False)
    for step in range(config.iterations):
        grids = sample_views(config.augment, model_size, generator)
        with torch.no_grad():
            target_features = encoder(apply_views(target, grids).flatten(0, 1))
        canvas = rasterize(points * scale, widths * scale, colors, render_size, config.raster)
        sketch_features = encoder(apply_views(to_model_input(canvas, model_size), grids).flatten(0, 1))
        geometric, semantic = sketch_losses(sketch_features, target_features, views, encoder.config)
        loss = total_loss(geometric, semantic, encoder.config)  # (seeds, views)
        optimizer.zero_grad(set_to_none=True)
        loss.mean(1).sum().backward()

        last = step == config.iterations - 1
        if step % config.eval_every == 0 or last:
            # The plain view (index 0) of the points before this update is the evaluation loss.
            plain = loss[:, 0].detach().cpu().tolist()
            with torch.no_grad():
                full = rasterize(points.detach(), widths, colors, config.size, config.raster)
            for s, value in enumerate(plain):
                evaluations[s].append((step, value))
                frames[s].append(_frame(full[s]))
                if value < best_loss[s]:
                    best_loss[s], best_step[s] = value, step
                    best_points[s] = points.detach()[s]
            current = min(best_loss)
            if current < overall_best - config.min_improvement * abs(
                overall_best if math.isfinite(overall_best) else 0
            ):
                overall_best, stale = current, 0
            else:
                stale += 1
            winner = int(np.argmin(best_loss))
            bar.set_postfix(loss=f"{current:.4f}", seed=config.seed + winner)
            if stale >= config.patience:
                bar.update(1)
                break
        optimizer.step()
        bar.update(1)
    bar.close()

    winner = int(np.argmin(best_loss))
    seeds = [
        SeedResult(config.seed + s, evaluations[s], best_step[s], best_loss[s], best_points[s].cpu())
        for s in range(n_seeds)
    ]
    sketch = Sketch(
        points=best_points[winner].cpu(),
        widths=widths[winner].cpu(),
        colors=colors[winner].cpu(),
        width=config.size,
        height=config.size,
    )
    return SketchResult(
        sketch=sketch,
        best_seed=config.seed + winner,
        seeds=seeds,
        frames=frames[winner],
        steps=step + 1,
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
