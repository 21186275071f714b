"""A hard generated task for prompt learning: 12 fine-grained colour names on the testbed's shapes.

The demo CLIP learned six colour words (red, orange, yellow, green, blue, purple) on filled shapes
and some pen outlines. This task adds the six colours between them on the colour wheel, named the
way a painter names them ("red orange", "yellow green", "blue purple", ...), draws each picture as
a random one of the six shapes, filled or as a pen outline, and asks for the colour only. Zero-shot
with a hand prompt must read "yellow green" as a phrase the text tower never saw; the image tower
sees a hue between two it knows. That leaves room between zero-shot and what the image features
allow, which is where learned prompts should help.

    python -m apps.coop task --out data/coop_hues --per-class 48 --seed 0

Each class's pictures come from their own generator seeded by (seed, class index), so folders of
different sizes share their first pictures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from testbed.shapes import COLOR_RGB, SHAPES, STYLES, render_shape_image

# The six named colours and the six between them (the midpoint of the two neighbours' RGB).
_WHEEL = ("red", "orange", "yellow", "green", "blue", "purple")


def _mix(a: str, b: str) -> tuple[int, int, int]:
    return tuple(int(round((x + y) / 2)) for x, y in zip(COLOR_RGB[a], COLOR_RGB[b]))


HUES: dict[str, tuple[int, int, int]] = {}
for _i, _name in enumerate(_WHEEL):
    _next = _WHEEL[(_i + 1) % len(_WHEEL)]
    HUES[_name] = COLOR_RGB[_name]
    # Painters' tertiary names put red/yellow/blue first: "red orange", "yellow green", "red purple".
    _first, _second = (_next, _name) if _next in ("red", "yellow", "blue") else (_name, _next)
    HUES[f"{_first} {_second}"] = _mix(_name, _next)
HUE_CLASSES: list[str] = list(HUES)


def render_hue_image(hue: str, rng: np.random.Generator, size: int = 64, outline_fraction: float = 0.5):
    """One picture of colour class `hue`: a random shape, filled or (with `outline_fraction`) a pen outline."""
    if hue not in HUES:
        raise ValueError(f"unknown colour class {hue!r}: expected one of {HUE_CLASSES}")
    shape = SHAPES[rng.integers(len(SHAPES))]
    style = STYLES[1] if rng.random() < outline_fraction else STYLES[0]
    # The class name only picks the shape here; the colour comes from fill_rgb.
    return render_shape_image(f"red {shape}", rng, size=size, style=style, fill_rgb=HUES[hue])


def write_hue_folder(
    out_dir: str | Path,
    per_class: int,
    seed: int = 0,
    size: int = 64,
    outline_fraction: float = 0.5,
    progress: bool = True,
) -> Path:
    """Write `per_class` PNGs of each of the 12 colour classes as an ImageFolder (`yellow_green/00000.png`)."""
    if per_class < 1:
        raise ValueError(f"per_class={per_class}: need at least 1 picture per class")
    if size < 8:
        raise ValueError(f"size={size}: use at least 8 px")
    out = Path(out_dir)
    for index, hue in enumerate(tqdm(HUE_CLASSES, desc="colour classes", disable=not progress, leave=False)):
        rng = np.random.default_rng([seed, index])
        folder = out / hue.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            render_hue_image(hue, rng, size, outline_fraction).save(folder / f"{k:05d}.png")
    return out


def hue_sheet(seed: int = 0, size: int = 64, per_class: int = 6):
    """One picture of the task: a row per colour class (in HUE_CLASSES order), `per_class` pictures each."""
    from PIL import Image, ImageDraw

    label = 110
    sheet = Image.new("RGB", (label + per_class * size, len(HUE_CLASSES) * size), "white")
    draw = ImageDraw.Draw(sheet)
    for row, hue in enumerate(HUE_CLASSES):
        rng = np.random.default_rng([seed, HUE_CLASSES.index(hue)])
        draw.text((6, row * size + size // 2 - 6), hue, fill=(0, 0, 0))
        for k in range(per_class):
            sheet.paste(render_hue_image(hue, rng, size), (label + k * size, row * size))
    return sheet
