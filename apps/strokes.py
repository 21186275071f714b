"""The stroke optimisation loop that CLIPasso and CLIPDraw share.

Every seed is one row of a batch of drawings, optimised together: one rasterizer call and one CLIP
forward per step for all seeds. Adam is per-coordinate and the seeds' losses are summed, so each seed
follows exactly the path it would follow alone. Each app brings what differs: its loss (picture or
text target), its parameters and optimizer, and what to clamp after a step.

    result = optimise_strokes(strokes, step_loss, optimizer, render_frames, schedule, desc="clipasso")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Schedule:
    """How long to optimise and when to stop early."""

    iterations: int
    eval_every: int
    patience: int  # evaluations without a relative improvement of `min_improvement` before stopping
    min_improvement: float


@dataclass
class Strokes:
    """A batch of drawings: points (seeds, N, 4, 2), widths (seeds, N), colours (seeds, N, 4)."""

    points: torch.Tensor
    widths: torch.Tensor
    colors: torch.Tensor

    def snapshot(self, seed: int) -> Strokes:
        return Strokes(*(t.detach()[seed].clone() for t in (self.points, self.widths, self.colors)))


@dataclass
class LoopResult:
    evaluations: list[list[tuple[int, float]]]  # per seed: (step, plain-view loss)
    best_loss: list[float]  # per seed
    best_step: list[int]  # per seed
    best: list[Strokes]  # per seed, unbatched
    frames: list[list[np.ndarray]]  # per seed: the canvas at each evaluation, uint8 (H, W, 3)
    steps: int

    @property
    def winner(self) -> int:
        """Index of the seed with the lowest loss."""
        return int(np.argmin(self.best_loss))


def to_frame(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) canvas in [0, 1] as a uint8 (H, W, 3) picture."""
    return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def optimise_strokes(
    strokes: Strokes,
    step_loss: Callable[[int], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    render_frames: Callable[[], torch.Tensor],
    schedule: Schedule,
    after_step: Callable[[], None] | None = None,
    desc: str = "strokes",
    first_seed: int = 0,
    progress: bool = True,
) -> LoopResult:
    """Run the loop: loss -> backward -> (every k steps: evaluate, keep the best, stop early) -> step.

    `step_loss(step)` returns the loss of every seed and augmented view, shape (seeds, views), view 0
    being the plain one: its value before the update is the evaluation loss. `render_frames()` draws
    the current strokes at full size for the progress frames.
    """
    n_seeds = strokes.points.shape[0]
    evaluations: list[list[tuple[int, float]]] = [[] for _ in range(n_seeds)]
    best_loss = [math.inf] * n_seeds
    best_step = [0] * n_seeds
    best = [strokes.snapshot(s) for s in range(n_seeds)]
    frames: list[list[np.ndarray]] = [[] for _ in range(n_seeds)]
    overall_best, stale, step = math.inf, 0, 0

    bar = tqdm(total=schedule.iterations, desc=desc, unit="step", disable=not progress, leave=False)
    for step in range(schedule.iterations):
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.mean(1).sum().backward()

        if step % schedule.eval_every == 0 or step == schedule.iterations - 1:
            plain = loss[:, 0].detach().cpu().tolist()
            with torch.no_grad():
                full = render_frames()
            for s, value in enumerate(plain):
                evaluations[s].append((step, value))
                frames[s].append(to_frame(full[s]))
                if value < best_loss[s]:
                    best_loss[s], best_step[s] = value, step
                    best[s] = strokes.snapshot(s)
            current = min(best_loss)
            if current < overall_best - schedule.min_improvement * (
                abs(overall_best) if math.isfinite(overall_best) else 0
            ):
                overall_best, stale = current, 0
            else:
                stale += 1
            bar.set_postfix(loss=f"{current:.4f}", seed=first_seed + int(np.argmin(best_loss)))
            if stale >= schedule.patience:
                bar.update(1)
                break
        optimizer.step()
        if after_step is not None:
            with torch.no_grad():
                after_step()
        bar.update(1)
    bar.close()
    return LoopResult(evaluations, best_loss, best_step, best, frames, step + 1)
