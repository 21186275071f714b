"""Synthetic video-caption set: coloured shapes moving one after the other, as real H.264 mp4 files.

Each video shows two events in turn, e.g. a red square moving left, then a blue circle moving up.
The shapes, colours and backgrounds are those of `testbed.shapes`, so a CLIP trained on that world
recognises the frames. Every video gets captions of two kinds:

- "order": names the events in the order they happen ("a red square moves left, then a blue
  circle moves up"). Swapping the events, or reversing a motion, gives a video with exactly the
  same set of frames in another order: a mean of frame features (meanP) cannot tell them apart,
  a temporal head (seqTransf) can;
- "free": names the shapes only ("a blue circle and a red square"), no order or motion.

Held-out videos come in pairs that differ only in the order of their two events, and their shape
pairs never occur in training, so the test measures order, not memorised combinations.

`SynthConfig(world="corpus")` makes the same set with real emoji pictures from the cached corpus
instead of shapes ("a frog moves left, then a rocket moves up"; free: "a frog and a rocket"): the
training videos show the corpus split's training styles, the held-out videos its held-out style
(twitter), see `testbed.corpus_videos`. It also writes `videos.json`: what each video shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import av
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from common.atomic import atomic_write_json
from common.settings import ConfigError
from curation.video_captions import Caption, write_captions

# `shape_outline` draws exactly the outlines the shape pictures use; reused so the demo CLIP knows them.
from testbed.shapes import BACKGROUND_TINTS, CLASSES, COLOR_RGB, shape_outline, split_class

if TYPE_CHECKING:
    from testbed.corpus_videos import CorpusSprites

MOTIONS: dict[str, tuple[float, float]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
ORDER_TEMPLATES = [
    "{a} moves {da}, then {b} moves {db}",
    "first {a} moves {da}, then {b} moves {db}",
    "{a} moving {da} followed by {b} moving {db}",
]
FREE_TEMPLATES = ["{x} and {y}", "a video with {x} and {y}"]


@dataclass(frozen=True)
class Event:
    shape_class: str  # "red square"; in the corpus world an emoji's name ("frog")
    motion: str  # a key of MOTIONS


@dataclass(frozen=True)
class SynthConfig:
    # rounded up to an even number: training videos come in order-swapped pairs
    n_train: int = field(default=240, metadata={"help": "training videos (order-swapped pairs)"})
    n_test_pairs: int = field(default=20, metadata={"help": "held-out videos come in order-swapped pairs"})
    size: int = field(default=64, metadata={"help": "frame side in pixels"})
    fps: int = field(default=8, metadata={"help": "frames per second of the mp4 files"})
    event_seconds: float = field(default=1.5, metadata={"help": "length of each of the two events"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    classes: tuple[str, ...] = field(default_factory=lambda: tuple(CLASSES))
    motions: tuple[str, ...] = tuple(MOTIONS)  # a subset makes a smaller world (fast tests)
    world: Literal["shapes", "corpus"] = field(
        default="shapes",
        metadata={
            "help": "shapes: coloured shapes; corpus: real emoji from the cached corpus (testbed.corpus)"
        },
    )
    concepts: int = field(
        default=24, metadata={"help": "corpus world: how many emoji concepts (testbed.corpus_videos)"}
    )
    sprite: float = field(
        default=0.7, metadata={"help": "corpus world: the picture's side as a fraction of the frame's"}
    )


@dataclass(frozen=True)
class SyntheticSet:
    videos_dir: Path
    captions_path: Path
    train_ids: list[str]
    test_ids: list[str]
    # corpus world: video id -> its events in order, {"concept", "name", "style", "motion"} each
    events: dict[str, list[dict]] = field(default_factory=dict)


def with_article(shape_class: str) -> str:
    """ "orange circle" -> "an orange circle"."""
    return ("an " if shape_class[0] in "aeiou" else "a ") + shape_class


def order_caption(events: tuple[Event, Event], template: str) -> str:
    a, b = events
    return template.format(
        a=with_article(a.shape_class), da=a.motion, b=with_article(b.shape_class), db=b.motion
    )


def render_segments(
    events: tuple[Event, ...], config: SynthConfig, rng: np.random.Generator
) -> list[list[np.ndarray]]:
    """RGB frames of each event on one background: the event's shape crosses the frame along its motion."""
    size = config.size
    per_event = max(2, int(round(config.event_seconds * config.fps)))
    supersample = 3
    big = size * supersample
    tint = np.array(BACKGROUND_TINTS[rng.integers(len(BACKGROUND_TINTS))], dtype=np.float32)
    background = np.clip(tint + rng.uniform(-10, 10, size=3), 0, 255).astype(np.uint8)
    segments = []
    for event in events:
        frames = []
        color, shape = split_class(event.shape_class)
        fill = tuple(int(v) for v in np.clip(np.array(COLOR_RGB[color]) + rng.uniform(-15, 15, 3), 0, 255))
        radius = big * rng.uniform(0.22, 0.3)
        rotation = rng.uniform(-math.pi, math.pi) if shape not in ("heart",) else rng.uniform(-0.4, 0.4)
        outline = shape_outline(shape, radius, rotation)
        dx, dy = MOTIONS[event.motion]
        margin = radius * 1.1
        # Travel from one side to the other; the cross axis stays near the centre with some jitter.
        across = rng.uniform(big * 0.4, big * 0.6)
        for step in range(per_event):
            t = step / (per_event - 1)
            along = margin + (big - 2 * margin) * (t if (dx + dy) > 0 else 1 - t)
            cx, cy = (along, across) if dx else (across, along)
            canvas = Image.new("RGB", (big, big), tuple(int(v) for v in background))
            draw = ImageDraw.Draw(canvas)
            if outline is None:
                draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
            else:
                draw.polygon([(cx + x, cy + y) for x, y in outline], fill=fill)
            frames.append(np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS)))
        segments.append(frames)
    return segments


def write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    """Encode RGB frames as H.264 mp4 with PyAV."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _random_event(
    rng: np.random.Generator, classes: tuple[str, ...], config: SynthConfig, exclude: str | None = None
) -> Event:
    choices = [c for c in classes if c != exclude]
    return Event(choices[rng.integers(len(choices))], config.motions[rng.integers(len(config.motions))])


def _captions_for(video_id: str, events: tuple[Event, Event], rng: np.random.Generator) -> list[Caption]:
    captions = [Caption(video_id, order_caption(events, t), "order") for t in ORDER_TEMPLATES]
    x, y = (with_article(events[0].shape_class), with_article(events[1].shape_class))
    if rng.random() < 0.5:  # free captions name the shapes in either order: they carry no order
        x, y = y, x
    captions += [Caption(video_id, t.format(x=x, y=y), "free") for t in FREE_TEMPLATES]
    return captions


def generate_synthetic_set(
    out_dir: str | Path, config: SynthConfig = SynthConfig(), sprites: CorpusSprites | None = None
) -> SyntheticSet:
    """Write `videos/*.mp4` and `captions.json` (MSR-VTT style, with splits) under `out_dir`.

    `config.world == "corpus"`: the sprites are emoji pictures, `sprites` (default: `load_sprites` on the
    cached corpus with the default split; a test hands in a small slice).
    """
    unknown = [m for m in config.motions if m not in MOTIONS]
    if unknown or not config.motions:
        raise ConfigError(f"motions {unknown or '()'}: use some of {list(MOTIONS)}")
    if config.world == "corpus":
        from testbed.corpus_videos import load_sprites  # the corpus only when asked for

        if not 0.2 <= config.sprite <= 0.9:
            raise ConfigError(f"sprite {config.sprite}: a picture of 0.2 to 0.9 of the frame (it must move)")
        sprites = sprites or load_sprites(config.concepts)
        classes = sprites.names
    elif config.world == "shapes":
        classes = tuple(config.classes)
        if len(classes) < 2:
            raise ConfigError("the synthetic set needs at least 2 shape classes")
    else:
        raise ConfigError(f"world {config.world!r}: use 'shapes' or 'corpus'")
    out = Path(out_dir)
    videos_dir = out / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)

    # Held-out shape pairs first, so training never shows the same two shapes together.
    test_plan: list[tuple[str, tuple[Event, Event]]] = []
    held_out: set[frozenset[str]] = set()
    for pair in range(config.n_test_pairs):
        first = _random_event(rng, classes, config)
        second = _random_event(rng, classes, config, exclude=first.shape_class)
        held_out.add(frozenset((first.shape_class, second.shape_class)))
        test_plan.append((f"test{pair:04d}a", (first, second)))
        test_plan.append((f"test{pair:04d}b", (second, first)))
    # In a small world (few classes) held-out shape pairs cannot all be kept out of training.
    n_pairs = len(classes) * (len(classes) - 1) // 2
    exclusive = len(held_out) <= n_pairs // 2
    # Training videos come in order-swapped pairs too: each pair is a group, and the trainer puts a
    # group in one batch, so the contrastive loss sees hard negatives that differ only in order.
    train_plan: list[tuple[str, tuple[Event, Event]]] = []
    while len(train_plan) < config.n_train:
        first = _random_event(rng, classes, config)
        second = _random_event(rng, classes, config, exclude=first.shape_class)
        if frozenset((first.shape_class, second.shape_class)) in held_out and exclusive:
            continue
        pair = len(train_plan) // 2
        train_plan.append((f"train{pair:05d}a", (first, second)))
        train_plan.append((f"train{pair:05d}b", (second, first)))

    captions: list[Caption] = []
    splits: dict[str, str] = {}
    groups: dict[str, str] = {}
    shown: dict[str, list[dict]] = {}
    bar = tqdm(total=len(train_plan) + len(test_plan), desc="synthetic videos", unit="video", leave=False)
    for split, plan in (("train", train_plan), ("test", test_plan)):
        for (id_a, events), (id_b, swapped) in zip(plan[0::2], plan[1::2]):
            # One rendering, two orders: the pair differs in nothing but the order of its events.
            if sprites is None:
                first, second = render_segments(events, config, rng)
            else:
                (first, second), style = _render_corpus(events, split, sprites, config, rng)
                shown[id_a] = _shown(events, style, sprites)
                shown[id_b] = _shown((events[1], events[0]), style, sprites)
            write_mp4(videos_dir / f"{id_a}.mp4", first + second, config.fps)
            write_mp4(videos_dir / f"{id_b}.mp4", second + first, config.fps)
            captions += _captions_for(id_a, events, rng) + _captions_for(id_b, swapped, rng)
            splits[id_a] = splits[id_b] = split
            groups[id_a] = groups[id_b] = id_a[:-1]
            bar.update(2)
    bar.close()
    captions_path = write_captions(out / "captions.json", captions, splits, groups)
    if sprites is not None:
        atomic_write_json(out / "videos.json", shown)
    return SyntheticSet(
        videos_dir, captions_path, [v for v, _ in train_plan], [v for v, _ in test_plan], shown
    )


def _render_corpus(
    events: tuple[Event, Event], split: str, sprites: CorpusSprites, config: SynthConfig, rng
) -> tuple[list[list[np.ndarray]], str]:
    """The two events' frames in one style: a training style for training videos, the held-out one for tests."""
    from testbed.corpus_videos import render_sprite_segments

    style = sprites.style_for(split, rng)
    per_event = max(2, int(round(config.event_seconds * config.fps)))
    segments = render_sprite_segments(
        sprites,
        [e.shape_class for e in events],
        [MOTIONS[e.motion] for e in events],
        style,
        config.size,
        config.sprite,
        per_event,
        rng,
    )
    return segments, style


def _shown(events: tuple[Event, ...], style: str, sprites: CorpusSprites) -> list[dict]:
    return [
        {
            "concept": sprites.concept_ids[e.shape_class],
            "name": e.shape_class,
            "style": style,
            "motion": e.motion,
        }
        for e in events
    ]
