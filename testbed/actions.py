"""Generated action videos: testbed shapes doing things whose meaning lies in time, as real H.264 mp4.

Thirteen actions. Ten come in pairs that are the same video played backwards: moves left/right,
moves up/down, grows/shrinks, rotates clockwise/counterclockwise, fades in/out. Each such pair is
ONE rendering written twice, forwards and reversed, so the two videos hold exactly the same set
of frames: an average of frame features (meanP, frame averaging) cannot tell them apart, only a
model that sees the order can. The other three have no reversed twin: appears (the shape pops in
at a random moment), bounces (two hops on the floor), swaps places (two shapes trade sides).

`write_action_set` writes `videos/*.mp4` and `labels.csv` (video,label,split); the test split is
rendered from other random draws than the training split.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from common.atomic import atomic_write_bytes
from common.settings import ConfigError

# The outlines the shape pictures use, so the demo CLIP recognises the shapes in the frames.
from testbed.shapes import BACKGROUND_TINTS, CLASSES, COLOR_RGB, shape_outline, split_class
from testbed.videos import write_mp4

# (forward, backward): the backward video is the forward one reversed in time.
REVERSED_PAIRS: tuple[tuple[str, str], ...] = (
    ("moves right", "moves left"),
    ("moves down", "moves up"),
    ("grows", "shrinks"),
    ("rotates clockwise", "rotates counterclockwise"),
    ("fades in", "fades out"),
)
SINGLE_ACTIONS: tuple[str, ...] = ("appears", "bounces", "swaps places")
ACTIONS: tuple[str, ...] = tuple(a for pair in REVERSED_PAIRS for a in pair) + SINGLE_ACTIONS
# Actions told apart only by the order of frames (each has a twin with the same frames reversed).
DIRECTION_DEPENDENT: frozenset[str] = frozenset(a for pair in REVERSED_PAIRS for a in pair)
# Never-trained names for the zero-shot check: each shares its verb, not its direction, with a trained action.
HELD_OUT_ACTIONS: tuple[str, ...] = ("moves up", "rotates counterclockwise", "fades out")
# Shapes whose rotation shows (a circle has none; hearts only lean, see curation.shapes).
ROTATING_SHAPES: frozenset[str] = frozenset({"square", "triangle", "star", "cross"})
SUPERSAMPLE = 3


@dataclass(frozen=True)
class ActionSetConfig:
    train_per_action: int = field(default=16, metadata={"help": "training videos per action"})
    test_per_action: int = field(default=8, metadata={"help": "test videos per action (other renderings)"})
    size: int = field(default=64, metadata={"help": "frame side in pixels"})
    fps: int = field(default=8, metadata={"help": "frames per second of the mp4 files"})
    seconds: float = field(default=2.0, metadata={"help": "length of each video"})
    seed: int = field(default=0, metadata={"help": "random seed of the renderings"})
    actions: tuple[str, ...] = field(default_factory=lambda: ACTIONS)

    def __post_init__(self) -> None:
        unknown = [a for a in self.actions if a not in ACTIONS]
        if unknown or not self.actions:
            raise ConfigError(f"actions {unknown or '()'}: use some of {list(ACTIONS)}")
        if self.train_per_action < 0 or self.test_per_action < 0:
            raise ConfigError("train_per_action and test_per_action must be >= 0")
        if self.size < 16 or self.fps < 1 or self.seconds * self.fps < 4:
            raise ConfigError(
                f"size={self.size}, fps={self.fps}, seconds={self.seconds}: need >= 16 px and >= 4 frames"
            )


@dataclass(frozen=True)
class Sprite:
    """One shape in one frame; positions and radius in supersampled pixels."""

    shape_class: str
    fill: tuple[int, int, int]
    x: float
    y: float
    radius: float
    rotation: float = 0.0
    alpha: float = 1.0


@dataclass(frozen=True)
class ActionSet:
    videos_dir: Path
    labels_path: Path
    labels: dict[str, str]  # video id -> action
    splits: dict[str, str]  # video id -> "train" | "test"


def _fill(shape_class: str, rng: np.random.Generator) -> tuple[int, int, int]:
    color, _ = split_class(shape_class)
    return tuple(int(v) for v in np.clip(np.array(COLOR_RGB[color]) + rng.uniform(-15, 15, 3), 0, 255))


def _pick_class(rng: np.random.Generator, rotating: bool = False, exclude: str | None = None) -> str:
    choices = [c for c in CLASSES if c != exclude and (not rotating or split_class(c)[1] in ROTATING_SHAPES)]
    return choices[rng.integers(len(choices))]


def render_frame(sprites: list[Sprite], background: tuple[int, int, int], size: int) -> np.ndarray:
    big = size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), background)
    for sprite in sprites:
        if sprite.alpha <= 0 or sprite.radius <= 0:
            continue
        layer = canvas.copy()
        draw = ImageDraw.Draw(layer)
        _, shape = split_class(sprite.shape_class)
        outline = shape_outline(shape, sprite.radius, sprite.rotation)
        r, x, y = sprite.radius, sprite.x, sprite.y
        if outline is None:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=sprite.fill)
        else:
            draw.polygon([(x + px, y + py) for px, py in outline], fill=sprite.fill)
        canvas = layer if sprite.alpha >= 1 else Image.blend(canvas, layer, sprite.alpha)
    return np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS))


# Each action is a function (rng, big canvas side) -> state(t) giving the sprites at time t in [0, 1].
StateFn = Callable[[float], list[Sprite]]


def _moves_right(rng: np.random.Generator, big: int) -> StateFn:
    cls = _pick_class(rng)
    fill, radius = _fill(cls, rng), big * rng.uniform(0.16, 0.22)
    across, margin = rng.uniform(0.4, 0.6) * big, radius * 1.1
    return lambda t: [Sprite(cls, fill, margin + (big - 2 * margin) * t, across, radius)]


def _moves_down(rng: np.random.Generator, big: int) -> StateFn:
    cls = _pick_class(rng)
    fill, radius = _fill(cls, rng), big * rng.uniform(0.16, 0.22)
    across, margin = rng.uniform(0.4, 0.6) * big, radius * 1.1
    return lambda t: [Sprite(cls, fill, across, margin + (big - 2 * margin) * t, radius)]


def _grows(rng: np.random.Generator, big: int) -> StateFn:
    cls = _pick_class(rng)
    fill = _fill(cls, rng)
    x, y = rng.uniform(0.45, 0.55, 2) * big
    small, large = big * 0.06, big * rng.uniform(0.34, 0.4)
    return lambda t: [Sprite(cls, fill, x, y, small + (large - small) * t)]


def _rotates_clockwise(rng: np.random.Generator, big: int) -> StateFn:
    cls = _pick_class(rng, rotating=True)
    fill = _fill(cls, rng)
    x, y = rng.uniform(0.45, 0.55, 2) * big
    radius, start = big * rng.uniform(0.3, 0.36), rng.uniform(0, 2 * math.pi)
    # Image y points down, so a growing angle turns the shape clockwise on screen. A quarter turn in
    # all: below the 72 degrees of a star's symmetry per sampled step, so the direction stays visible.
    return lambda t: [Sprite(cls, fill, x, y, radius, start + t * math.pi / 2)]


def _fades_in(rng: np.random.Generator, big: int) -> StateFn:
    cls = _pick_class(rng)
    fill = _fill(cls, rng)
    x, y = rng.uniform(0.4, 0.6, 2) * big
    radius = big * rng.uniform(0.24, 0.32)
    return lambda t: [Sprite(cls, fill, x, y, radius, alpha=t)]


def _appears(rng: np.random.Generator, big: int) -> StateFn:
    cls = _pick_class(rng)
    fill = _fill(cls, rng)
    x, y = rng.uniform(0.35, 0.65, 2) * big
    radius, moment = big * rng.uniform(0.22, 0.3), rng.uniform(0.3, 0.6)
    return lambda t: [Sprite(cls, fill, x, y, radius)] if t >= moment else []


def _bounces(rng: np.random.Generator, big: int) -> StateFn:
    cls = _pick_class(rng)
    fill, radius = _fill(cls, rng), big * rng.uniform(0.14, 0.18)
    x = rng.uniform(0.4, 0.6) * big
    floor, height = big - radius * 1.1, big * rng.uniform(0.45, 0.55)
    phase = rng.uniform(0, 0.15)
    # Two hops: starts on the floor, up, down, up, down (|sin| arcs, as under gravity at this frame rate).
    return lambda t: [Sprite(cls, fill, x, floor - height * abs(math.sin(2 * math.pi * (t + phase))), radius)]


def _swaps_places(rng: np.random.Generator, big: int) -> StateFn:
    first = _pick_class(rng)
    second = _pick_class(rng, exclude=first)
    fills = _fill(first, rng), _fill(second, rng)
    radius = big * rng.uniform(0.14, 0.17)
    left, right, mid = radius * 1.2, big - radius * 1.2, rng.uniform(0.45, 0.55) * big
    lift = big * 0.22

    def state(t: float) -> list[Sprite]:
        # The first goes right over the top, the second goes left underneath: they never overlap for long.
        x1 = left + (right - left) * t
        x2 = right - (right - left) * t
        bump = lift * math.sin(math.pi * t)
        return [
            Sprite(first, fills[0], x1, mid - bump, radius),
            Sprite(second, fills[1], x2, mid + bump, radius),
        ]

    return state


FORWARD_ACTIONS: dict[str, Callable[[np.random.Generator, int], StateFn]] = {
    "moves right": _moves_right,
    "moves down": _moves_down,
    "grows": _grows,
    "rotates clockwise": _rotates_clockwise,
    "fades in": _fades_in,
    "appears": _appears,
    "bounces": _bounces,
    "swaps places": _swaps_places,
}
BACKWARD_OF: dict[str, str] = {backward: forward for forward, backward in REVERSED_PAIRS}
FORWARD_OF: dict[str, str] = dict(REVERSED_PAIRS)  # forward action -> its backward twin


def render_action(action: str, rng: np.random.Generator, config: ActionSetConfig) -> list[np.ndarray]:
    """RGB frames of one video of `action` (a backward action is its forward twin reversed)."""
    forward = BACKWARD_OF.get(action, action)
    frames = _render_forward(forward, rng, config)
    return frames[::-1] if action in BACKWARD_OF else frames


def _render_forward(action: str, rng: np.random.Generator, config: ActionSetConfig) -> list[np.ndarray]:
    big = config.size * SUPERSAMPLE
    state = FORWARD_ACTIONS[action](rng, big)
    tint = np.array(BACKGROUND_TINTS[rng.integers(len(BACKGROUND_TINTS))], dtype=np.float32)
    background = tuple(int(v) for v in np.clip(tint + rng.uniform(-10, 10, size=3), 0, 255))
    n = max(4, int(round(config.seconds * config.fps)))
    return [render_frame(state(i / (n - 1)), background, config.size) for i in range(n)]


def _plan(config: ActionSetConfig, split: str, count: int) -> list[tuple[str, str, str | None]]:
    """(video id, action, id of its reversed twin or None) for `count` videos of every action."""
    plan: list[tuple[str, str, str | None]] = []
    chosen = set(config.actions)
    for forward, backward in REVERSED_PAIRS:
        for i in range(count):
            ids = f"{split}_{_slug(forward)}_{i:03d}", f"{split}_{_slug(backward)}_{i:03d}"
            if forward in chosen and backward in chosen:
                plan.append((ids[0], forward, ids[1]))  # one rendering, written both ways
            elif forward in chosen:
                plan.append((ids[0], forward, None))
            elif backward in chosen:
                plan.append((ids[1], backward, None))
    for action in SINGLE_ACTIONS:
        if action in chosen:
            plan += [(f"{split}_{_slug(action)}_{i:03d}", action, None) for i in range(count)]
    return plan


def _slug(action: str) -> str:
    return action.replace(" ", "_")


def write_action_set(
    out_dir: str | Path, config: ActionSetConfig = ActionSetConfig(), progress: bool = True
) -> ActionSet:
    """Write `videos/*.mp4` and `labels.csv` under `out_dir` (labels last: a reader never sees a missing video)."""
    out = Path(out_dir)
    videos_dir = out / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    labels: dict[str, str] = {}
    splits: dict[str, str] = {}
    plans = [("train", _plan(config, "train", config.train_per_action))]
    plans.append(("test", _plan(config, "test", config.test_per_action)))
    total = sum(1 + (twin is not None) for _, plan in plans for _, _, twin in plan)
    bar = tqdm(total=total, desc="action videos", unit="video", leave=False, disable=not progress)
    for split, plan in plans:
        # The test split draws from its own stream: no rendering is shared with training.
        rng = np.random.default_rng([config.seed, 0 if split == "train" else 1])
        for video_id, action, twin in plan:
            frames = render_action(action, rng, config)
            write_mp4(videos_dir / f"{video_id}.mp4", frames, config.fps)
            labels[video_id], splits[video_id] = action, split
            if twin is not None:
                write_mp4(videos_dir / f"{twin}.mp4", frames[::-1], config.fps)
                labels[twin], splits[twin] = FORWARD_OF[action], split
            bar.update(1 + (twin is not None))
    bar.close()
    labels_path = out / "labels.csv"
    write_labels_csv(labels_path, labels, splits)
    return ActionSet(videos_dir, labels_path, labels, splits)


def write_labels_csv(path: Path, labels: dict[str, str], splits: dict[str, str]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video", "label", "split"])
    for video_id in sorted(labels):
        writer.writerow([video_id, labels[video_id], splits.get(video_id, "")])
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def action_sheet(seed: int = 0, size: int = 64, frames: int = 6) -> Image.Image:
    """One row per action, `frames` frames of one video each, labelled: what the generated set looks like."""
    config = ActionSetConfig(size=size)
    label_width = 150
    sheet = Image.new("RGB", (label_width + frames * (size + 2), len(ACTIONS) * (size + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, action in enumerate(ACTIONS):
        video = render_action(action, np.random.default_rng([seed, row]), config)
        picks = np.linspace(0, len(video) - 1, frames).round().astype(int)
        y = row * (size + 2)
        draw.text((6, y + size // 2 - 6), action, fill="black")
        for column, index in enumerate(picks):
            sheet.paste(Image.fromarray(video[index]), (label_width + column * (size + 2), y))
    return sheet
