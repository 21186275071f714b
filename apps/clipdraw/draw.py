"""CLIPDraw's loop: random coloured strokes whose augmented renders are pulled towards a text embedding.

Everything but the target is CLIPasso's: the rasterizer, the shared augmentation code, the image encoder
and the output writer. CLIPDraw's own settings (Frans et al. 2021): points lr 1.0, width lr 0.1, colour
lr 0.01, widths clamped to [1, 50] px, perspective on every view and crops of 0.7-0.9 of the canvas.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from apps.clipasso.augment import AugmentConfig, apply_views, sample_views
from apps.clipasso.losses import ClipImageEncoder, LossConfig
from apps.clipasso.optimize import PAPER_CANVAS, SketchConfigError, optimisation_canvas, to_model_input
from apps.clipasso.render import RasterConfig, get_rasterizer
from apps.clipasso.svg import Sketch
from apps.strokes import Schedule, Strokes, optimise_strokes
from models import LoadedCLIP


@dataclass(frozen=True)
class DrawConfig:
    strokes: int = field(default=32, metadata={"help": "number of strokes"})
    iterations: int = field(default=300, metadata={"help": "maximum steps"})
    seeds: int = field(default=1, metadata={"help": "random starts, best kept"})
    size: int = field(default=224, metadata={"help": "canvas size in pixels"})
    seed: int = field(default=0, metadata={"help": "first random seed"})
    backend: Literal["torch", "diffvg"] = field(default="torch", metadata={"help": "rasterizer"})
    max_width: float = field(default=50.0, metadata={"help": "widest stroke in pixels (CLIPDraw's clamp)"})
    eval_every: int = field(default=10, metadata={"help": "steps between evaluations"})
    patience: int = field(default=8, metadata={"help": "evaluations without improvement before stopping"})
    min_improvement: float = field(
        default=1e-3, metadata={"help": "relative loss improvement that resets patience"}
    )
    points_lr: float = field(default=1.0, metadata={"help": "Adam learning rate of the control points"})
    width_lr: float = field(default=0.1, metadata={"help": "Adam learning rate of the widths"})
    color_lr: float = field(default=0.01, metadata={"help": "Adam learning rate of the colours"})
    control_radius: float = field(default=0.1, metadata={"help": "spread of a new stroke's control points"})
    gif_frames: int = field(default=40, metadata={"help": "frames in the progress GIF"})
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(views=4, perspective_p=1.0, crop_scale=(0.7, 0.9))
    )
    raster: RasterConfig = field(default_factory=RasterConfig)

    def validate(self) -> None:
        for name, value, low, high in [
            ("--strokes", self.strokes, 1, 1024),
            ("--iterations", self.iterations, 1, 100_000),
            ("--seeds", self.seeds, 1, 64),
            ("--size", self.size, 32, 2048),
            ("--eval-every", self.eval_every, 1, 100_000),
        ]:
            if not (math.isfinite(value) and low <= value <= high):
                raise SketchConfigError(f"{name} {value}: must be between {low} and {high}")


@dataclass
class DrawResult:
    sketch: Sketch
    best_seed: int
    evaluations: list[list[tuple[int, float]]]  # per seed: (step, plain-view loss)
    best_loss: float
    best_step: int
    frames: list[np.ndarray]
    steps: int
    seconds: float


def prompt_stem(prompt: str) -> str:
    """A file name from a prompt: "A red circle!" -> "a_red_circle"."""
    stem = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:60]
    return stem or "drawing"


def encode_prompt(loaded: LoadedCLIP, prompt: str) -> torch.Tensor:
    device = next(loaded.model.parameters()).device
    with torch.no_grad():
        tokens = loaded.tokenizer([prompt]).to(device)
        return F.normalize(loaded.model.encode_text(tokens), dim=-1)


def random_strokes(config: DrawConfig, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """CLIPDraw's start: strokes anywhere, short, random colours and widths."""
    start = rng.random((config.strokes, 1, 2))
    steps = (rng.random((config.strokes, 3, 2)) - 0.5) * config.control_radius
    points = np.concatenate([start, start + np.cumsum(steps, axis=1)], axis=1) * config.size
    widths = 1.0 + rng.random(config.strokes) * 3.0 * config.size / PAPER_CANVAS
    colors = rng.random((config.strokes, 4))
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return as_tensor(points), as_tensor(widths), as_tensor(colors)


def draw_prompt(prompt: str, loaded: LoadedCLIP, config: DrawConfig, progress: bool = True) -> DrawResult:
    """Optimise `config.seeds` drawings for `prompt` together; return the one closest to the text."""
    config.validate()
    if not prompt.strip():
        raise SketchConfigError('the text prompt is empty: pass a description such as "a red circle"')
    rasterize = get_rasterizer(config.backend)
    started = time.perf_counter()
    encoder = ClipImageEncoder(loaded, LossConfig(geometric_weight=0.0))
    device = encoder.mean.device
    text = encode_prompt(loaded, prompt)
    model_size = encoder.image_size
    render_size = optimisation_canvas(config.size, model_size)
    scale = render_size / config.size

    starts = [random_strokes(config, np.random.default_rng(config.seed + s)) for s in range(config.seeds)]
    points = torch.stack([s[0] for s in starts]).to(device).requires_grad_(True)
    widths = torch.stack([s[1] for s in starts]).to(device).requires_grad_(True)
    colors = torch.stack([s[2] for s in starts]).to(device).requires_grad_(True)
    lr_scale = config.size / PAPER_CANVAS
    optimizer = torch.optim.Adam(
        [
            {"params": [points], "lr": config.points_lr * lr_scale},
            {"params": [widths], "lr": config.width_lr * lr_scale},
            {"params": [colors], "lr": config.color_lr},
        ]
    )
    generator = torch.Generator().manual_seed(config.seed)
    views = config.augment.views + 1

    def step_loss(step: int) -> torch.Tensor:
        grids = sample_views(config.augment, model_size, generator)
        canvas = rasterize(points * scale, widths * scale, colors, render_size, config.raster)
        embeddings, _ = encoder(apply_views(to_model_input(canvas, model_size), grids).flatten(0, 1))
        return 1.0 - (embeddings.reshape(config.seeds, views, -1) * text).sum(-1)  # (seeds, views)

    def render_frames() -> torch.Tensor:
        return rasterize(points, widths, colors.clamp(0, 1), config.size, config.raster)

    def keep_drawable() -> None:  # widths in range, colours in [0, 1]
        widths.clamp_(1.0 * lr_scale, config.max_width)
        colors.clamp_(0.0, 1.0)

    schedule = Schedule(config.iterations, config.eval_every, config.patience, config.min_improvement)
    loop = optimise_strokes(
        Strokes(points, widths, colors), step_loss, optimizer, render_frames, schedule,
        after_step=keep_drawable, desc="clipdraw", first_seed=config.seed, progress=progress,
    )  # fmt: skip
    winner = loop.winner
    best = loop.best[winner]
    return DrawResult(
        sketch=Sketch(
            points=best.points.cpu(),
            widths=best.widths.cpu(),
            colors=best.colors.clamp(0, 1).cpu(),
            width=config.size,
            height=config.size,
        ),
        best_seed=config.seed + winner,
        evaluations=loop.evaluations,
        best_loss=loop.best_loss[winner],
        best_step=loop.best_step[winner],
        frames=loop.frames[winner],
        steps=loop.steps,
        seconds=time.perf_counter() - started,
    )
