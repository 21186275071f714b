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

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from apps.clipasso.augment import AugmentConfig, apply_views, sample_views
from apps.clipasso.losses import ClipImageEncoder, LossConfig
from apps.clipasso.optimize import PAPER_CANVAS, SketchConfigError, optimisation_canvas, to_model_input
from apps.clipasso.render import RasterConfig, get_rasterizer
from apps.clipasso.svg import Sketch
from models import LoadedCLIP


@dataclass(frozen=True)
class DrawConfig:
    strokes: int = 32
    iterations: int = 300
    seeds: int = 1
    size: int = 224
    seed: int = 0
    backend: str = "torch"
    max_width: float = 50.0
    eval_every: int = 10
    patience: int = 8
    min_improvement: float = 1e-3
    points_lr: float = 1.0
    width_lr: float = 0.1
    color_lr: float = 0.01
    control_radius: float = 0.1
    gif_frames: int = 40
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
    n_seeds = config.seeds
    evaluations: list[list[tuple[int, float]]] = [[] for _ in range(n_seeds)]
    best = [math.inf] * n_seeds
    best_step = [0] * n_seeds
    best_state = [
        (points[s].detach().clone(), widths[s].detach().clone(), colors[s].detach().clone())
        for s in range(n_seeds)
    ]
    frames: list[list[np.ndarray]] = [[] for _ in range(n_seeds)]
    overall, stale, step = math.inf, 0, 0

    bar = tqdm(total=config.iterations, desc="clipdraw", unit="step", disable=not progress, leave=False)
    for step in range(config.iterations):
        grids = sample_views(config.augment, model_size, generator)
        canvas = rasterize(points * scale, widths * scale, colors, render_size, config.raster)
        embeddings, _ = encoder(apply_views(to_model_input(canvas, model_size), grids).flatten(0, 1))
        loss = 1.0 - (embeddings.reshape(n_seeds, views, -1) * text).sum(-1)  # (seeds, views)
        optimizer.zero_grad(set_to_none=True)
        loss.mean(1).sum().backward()
        if step % config.eval_every == 0 or step == config.iterations - 1:
            plain = loss[:, 0].detach().cpu().tolist()
            with torch.no_grad():
                full = rasterize(points, widths, colors.clamp(0, 1), config.size, config.raster)
            for s, value in enumerate(plain):
                evaluations[s].append((step, value))
                frames[s].append(
                    (full[s].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
                )
                if value < best[s]:
                    best[s], best_step[s] = value, step
                    best_state[s] = (
                        points[s].detach().clone(),
                        widths[s].detach().clone(),
                        colors[s].detach().clone(),
                    )
            if min(best) < overall - config.min_improvement * (abs(overall) if math.isfinite(overall) else 0):
                overall, stale = min(best), 0
            else:
                stale += 1
            bar.set_postfix(loss=f"{min(best):.4f}", seed=config.seed + int(np.argmin(best)))
            if stale >= config.patience:
                bar.update(1)
                break
        optimizer.step()
        with torch.no_grad():  # keep parameters drawable: widths in range, colours in [0, 1]
            widths.clamp_(1.0 * lr_scale, config.max_width)
            colors.clamp_(0.0, 1.0)
        bar.update(1)
    bar.close()

    winner = int(np.argmin(best))
    p, w, c = best_state[winner]
    return DrawResult(
        sketch=Sketch(
            points=p.cpu(), widths=w.cpu(), colors=c.clamp(0, 1).cpu(), width=config.size, height=config.size
        ),
        best_seed=config.seed + winner,
        evaluations=evaluations,
        best_loss=best[winner],
        best_step=best_step[winner],
        frames=frames[winner],
        steps=step + 1,
        seconds=time.perf_counter() - started,
    )
