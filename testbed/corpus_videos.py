"""Sprites for the synthetic videos in corpus mode: real emoji pictures moving over a plain background.

`testbed.videos.generate_synthetic_set(..., SynthConfig(world="corpus"))` uses `CorpusSprites` where the
shapes world draws coloured polygons: each event is one emoji picture from the cached corpus crossing
the frame left/right/up/down, and the captions name it by its real name ("a frog moves left, then a
rocket moves up").

Which pictures (the split of `testbed.corpus_data.Split`, default: the one the corpus web serves):
- training videos show the split's TRAINING emoji styles (google, apple, facebook, openmoji-color,
  openmoji-black), one style per video drawn at random;
- held-out videos show the HELD-OUT style (twitter): pictures the corpus CLIP never saw, so the test
  measures pictures of known concepts in an unseen style, on top of unseen concept pairs and order;
- concepts: the first `concepts` of `VIDEO_CONCEPTS` that the corpus has in the held-out style and in
  every training emoji style and that the split does not hold out (held-out concepts are never trained
  on in any style, so a video CLIP could not know their names).

Why `VIDEO_CONCEPTS` and not a draw among the 1,852 concepts present in every emoji style: the corpus
CLIP of the demo is weak (15-23 % zero-shot over 100 drawn concepts), and most drawn concepts are
people, flags, symbols and faces that differ in small details (a 64 px frame, a 48 px CLIP input, the
picture 0.7 of it). The list holds concrete things with distinct silhouettes and colours, named with
everyday words a web caption would use (animals, food, vehicles, objects), so the test measures video
retrieval, not fine-grained recognition. It was fixed before any video was measured, not picked by the
model's scores.

Sprite size (`SynthConfig.sprite`, default 0.7 of the frame, +-0.04): the demo's corpus CLIP names a
picture at half the frame little better than chance (24 concepts, google style: top-1 8 %, top-5 33 %),
at 0.7 21 % / 58 %, filling the frame 33 % / 67 % (bench/corpus_video_sprites.py, docs/clip4clip.md);
0.7 keeps most of that and the picture still crosses 26 % of the frame.

The background is plain white: the corpus pictures are composited on white (`Corpus.image`), which is
what the corpus CLIP was trained on, so a sprite has no visible box around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import UserError
from testbed.corpus import DATASOURCE_STYLES, Corpus, Picture, load_corpus
from testbed.corpus_data import EMOJI_STYLES, Split

# Fixed before measuring (see the module docstring); all 40 are in every emoji style of the full corpus
# and none is held out by the default split (tests/test_corpus_videos.py checks both on the cache).
VIDEO_CONCEPTS: tuple[str, ...] = (
    "frog",
    "rocket",
    "red apple",
    "bicycle",
    "octopus",
    "pizza",
    "sailboat",
    "banana",
    "elephant",
    "guitar",
    "turtle",
    "soccer ball",
    "helicopter",
    "strawberry",
    "penguin",
    "umbrella",
    "snail",
    "watermelon",
    "bus",
    "light bulb",
    "butterfly",
    "carrot",
    "anchor",
    "cactus",
    "whale",
    "hamburger",
    "airplane",
    "mushroom",
    "crab",
    "key",
    "pineapple",
    "ghost",
    "automobile",
    "tomato",
    "basketball",
    "pig face",
    "sun",
    "fish",
    "cat face",
    "dog face",
)
WHITE = (255, 255, 255)


class VideoWorldError(UserError, ValueError):
    """The corpus cannot give the video world asked for (too many concepts, missing styles)."""


def style_packages(styles: Sequence[str]) -> list[str]:
    """The npm packages (`testbed.corpus.PACKAGES`) that hold these styles, with the concept names."""
    names = {"emojibase-data"}
    for style in styles:
        if style in DATASOURCE_STYLES:
            names.add(f"emoji-datasource-{style}")
        elif style.startswith("openmoji"):
            names.add("openmoji")
        elif style.startswith("tabler"):
            names.add("@tabler/icons")
    return sorted(names)


def video_split(split: Split) -> Split:
    """The split restricted to emoji styles (icons are not in the video world)."""
    return Split(
        split.held_out_style,
        tuple(s for s in split.train_styles if s in EMOJI_STYLES),
        split.held_out_fraction,
        split.eval_concepts,
        split.seed,
    )


class CorpusSprites:
    """The concepts of the video world and their pictures, per style, as RGB arrays at sprite size."""

    def __init__(self, corpus: Corpus, split: Split, concepts: int, names: Sequence[str] = VIDEO_CONCEPTS):
        self.corpus, self.split = corpus, video_split(split)
        self.train_styles = [s for s in self.split.train_styles if s in corpus.styles]
        if not self.train_styles or self.split.held_out_style not in corpus.styles:
            raise VideoWorldError(
                f"the corpus at {corpus.cache} has styles {corpus.styles}: the videos need the held-out "
                f"style {self.split.held_out_style!r} and one of the training emoji styles "
                f"{list(self.split.train_styles)}; run `python -m testbed.corpus fetch`"
            )
        styles = [self.split.held_out_style, *self.train_styles]
        by_style = {s: corpus.by_style(s) for s in styles}
        by_name = {c.name: cid for cid, c in sorted(corpus.concepts.items()) if c.kind == "emoji"}
        usable = [
            name
            for name in names
            if name in by_name
            and not self.split.is_held_out(by_name[name])
            and all(by_name[name] in pictures for pictures in by_style.values())
        ]
        if concepts < 2 or concepts > len(usable):
            raise VideoWorldError(
                f"--concepts {concepts}: the corpus at {corpus.cache} has {len(usable)} of the "
                f"{len(names)} video concepts in every style of {styles} (and not held out); "
                f"ask for 2 to {len(usable)}"
            )
        self.names: tuple[str, ...] = tuple(usable[:concepts])
        self.concept_ids = {name: by_name[name] for name in self.names}
        self._pictures = {(name, s): by_style[s][by_name[name]] for name in self.names for s in styles}
        self._cache: dict[tuple[str, str, int], np.ndarray] = {}

    def picture(self, name: str, style: str) -> Picture:
        return self._pictures[(name, style)]

    def sprite(self, name: str, style: str, side: int) -> np.ndarray:
        """The concept's picture in `style`, on white, `side` pixels square (RGB uint8)."""
        key = (name, style, side)
        if key not in self._cache:
            image = self.corpus.image(self.picture(name, style), side)
            if image is None:  # an SVG that failed to render (recorded by the corpus): plain grey
                image = Image.new("RGB", (side, side), (128, 128, 128))
            self._cache[key] = np.asarray(image.convert("RGB"))
        return self._cache[key]

    def style_for(self, split: str, rng: np.random.Generator) -> str:
        """Held-out videos: the held-out style; training videos: one training style at random."""
        if split == "test":
            return self.split.held_out_style
        return self.train_styles[rng.integers(len(self.train_styles))]


def load_sprites(concepts: int, split: Split | None = None, cache: Path | None = None) -> CorpusSprites:
    """The video world from the cached corpus; a missing package is one line naming the fetch."""
    split = video_split(split or Split())
    require = style_packages((split.held_out_style, *split.train_styles))
    corpus = load_corpus(cache, require=require)
    return CorpusSprites(corpus, split, concepts)


def render_sprite_segments(
    sprites: CorpusSprites,
    names: Sequence[str],
    motions: Sequence[tuple[float, float]],
    style: str,
    size: int,
    sprite: float,
    per_event: int,
    rng: np.random.Generator,
) -> list[list[np.ndarray]]:
    """RGB frames of each event on white: the event's picture (`sprite` of the frame's side, +-0.04)
    crosses the frame along its motion."""
    segments = []
    for name, (dx, dy) in zip(names, motions):
        side = int(round(size * min(0.95, rng.uniform(sprite - 0.04, sprite + 0.04))))
        picture = sprites.sprite(name, style, side)
        travel = size - side  # from one edge to the other, whole picture in view
        across = int(round((size - side) / 2 + rng.uniform(-0.1, 0.1) * size))
        across = min(max(across, 0), size - side)
        frames = []
        for step in range(per_event):
            t = step / (per_event - 1)
            along = int(round(travel * (t if (dx + dy) > 0 else 1 - t)))
            left, top = (along, across) if dx else (across, along)
            frame = np.full((size, size, 3), WHITE, dtype=np.uint8)
            frame[top : top + side, left : left + side] = picture
            frames.append(frame)
        segments.append(frames)
    return segments
