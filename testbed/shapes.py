"""The generated "coloured shape" world: 6 colours x 6 shapes = 36 classes.

It is the ground truth every stage can be checked against: the loopback web
serves these pictures with captions, curation must keep the clean pairs, a
small CLIP trained on them must tell "red circle" from "red star" and from
"blue circle". Everything is deterministic from a numpy Generator, so a seed
reproduces the same pictures on every machine.

    >>> rng = np.random.default_rng(0)
    >>> render_shape_image("red circle", rng, size=64).size
    (64, 64)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

# Hues far apart so that colour is unambiguous at 64 px even after JPEG and jitter.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 155, 50),
    "blue": (35, 70, 215),
    "yellow": (240, 205, 25),
    "purple": (135, 45, 175),
    "orange": (245, 125, 20),
}
COLORS: list[str] = list(COLOR_RGB)
SHAPES: list[str] = ["circle", "square", "triangle", "star", "cross", "heart"]
CLASSES: list[str] = [f"{color} {shape}" for color in COLORS for shape in SHAPES]

# Several ways a person titles such a picture; "{c}" colour, "{s}" shape.
CAPTION_TEMPLATES: list[str] = [
    "a {c} {s}",
    "a {c} {s} on a plain background",
    "photo of a small {c} {s}",
    "{c} {s} drawing",
    "a picture of a {c} {s}",
    "clip art of a {c} {s}",
    "a simple {c} {s} shape",
    "an image showing one {c} {s}",
    "the {c} {s}",
    "a big {c} {s} on a light background",
    "{c} {s}, hand drawn",
    "illustration of a {c} {s}",
]

# Background tints: greys, paper, pale blue, pale green; all light so every colour contrasts.
BACKGROUND_TINTS: list[tuple[int, int, int]] = [
    (235, 235, 235),
    (215, 215, 215),
    (190, 190, 190),
    (240, 232, 215),
    (220, 230, 240),
    (225, 238, 225),
]
_SUPERSAMPLE = 3  # draw large and downsample: anti-aliased edges like a real picture
STYLES: tuple[str, ...] = ("filled", "outline")


def split_class(cls: str) -> tuple[str, str]:
    """`"red circle"` -> `("red", "circle")`; raises ValueError naming the known classes otherwise."""
    parts = cls.strip().lower().split()
    if len(parts) != 2 or parts[0] not in COLOR_RGB or parts[1] not in SHAPES:
        raise ValueError(
            f"unknown shape class {cls!r}: expected '<colour> <shape>' with colour in {COLORS} and shape in {SHAPES}"
        )
    return parts[0], parts[1]


def folder_name(cls: str) -> str:
    """ImageFolder directory name of a class: `"red circle"` -> `"red_circle"`."""
    color, shape = split_class(cls)
    return f"{color}_{shape}"


def class_from_folder(name: str) -> str:
    """Inverse of `folder_name`: `"red_circle"` -> `"red circle"`."""
    cls = name.replace("_", " ")
    split_class(cls)
    return cls


def _regular_polygon(
    n: int, radius: float, rotation: float, inner: float | None = None
) -> list[tuple[float, float]]:
    """Unit-centred polygon; with `inner` a star alternating outer/inner radius."""
    points = []
    count = 2 * n if inner is not None else n
    for k in range(count):
        r = radius if inner is None or k % 2 == 0 else radius * inner
        angle = rotation - math.pi / 2 + 2 * math.pi * k / count
        points.append((r * math.cos(angle), r * math.sin(angle)))
    return points


def shape_outline(shape: str, radius: float, rotation: float) -> list[tuple[float, float]] | None:
    """Outline around (0, 0); None for the circle, which is drawn as an ellipse."""
    if shape == "circle":
        return None
    if shape == "square":
        return _regular_polygon(4, radius, rotation + math.pi / 4)
    if shape == "triangle":
        return _regular_polygon(3, radius * 1.1, rotation)
    if shape == "star":
        return _regular_polygon(5, radius * 1.1, rotation, inner=0.42)
    if shape == "cross":
        a, b = radius, radius * 0.34  # arm length and half width
        base = [
            (-b, -a),
            (b, -a),
            (b, -b),
            (a, -b),
            (a, b),
            (b, b),
            (b, a),
            (-b, a),
            (-b, b),
            (-a, b),
            (-a, -b),
            (-b, -b),
        ]
    elif shape == "heart":
        base = []
        for k in range(80):
            t = 2 * math.pi * k / 80
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            base.append((x * radius / 16.5, -(y + 2.5) * radius / 16.5))
    else:
        raise ValueError(f"unknown shape {shape!r}: expected one of {SHAPES}")
    # Hearts and crosses lean a little only: an upside-down heart stops looking like one.
    angle = rotation * 0.25 if shape == "heart" else rotation
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return [(x * cos_a - y * sin_a, x * sin_a + y * cos_a) for x, y in base]


def _draw_pen_outline(
    draw: ImageDraw.ImageDraw,
    canvas: Image.Image,
    outline: list[tuple[float, float]] | None,
    centre: tuple[float, float],
    radius: float,
    pen: tuple[int, int, int],
    rng: np.random.Generator,
) -> None:
    """The shape's outline as a hand-drawn pen line on near-white paper (replaces the background)."""
    big = canvas.size[0]
    paper = tuple(int(v) for v in rng.uniform(238, 255, size=3))
    draw.rectangle((0, 0, big, big), fill=paper)
    if outline is None:  # the circle, as a 64-gon starting at angle 0
        outline = _regular_polygon(64, radius, math.pi / 2)
    # Densify the closed outline, then add a smooth wobble along it so no two drawings match.
    corners = np.asarray(outline + outline[:1], dtype=np.float64)
    lengths = np.hypot(*np.diff(corners, axis=0).T)
    t = np.concatenate([[0.0], np.cumsum(lengths)])
    samples = np.linspace(0.0, t[-1], 160)
    path = np.stack([np.interp(samples, t, corners[:, 0]), np.interp(samples, t, corners[:, 1])], 1)
    # A few low harmonics along the path (2, 4 and 6 waves per lap), of amplitude 1, 1/2 and 1/3.
    angle = 2 * np.pi * samples / t[-1]
    phase = rng.uniform(0, 2 * math.pi, size=(2, 3))
    wobble = sum(
        np.stack([np.sin(2 * k * angle + phase[0, k - 1]), np.cos(2 * k * angle + phase[1, k - 1])], 1) / k
        for k in range(1, 4)
    )
    path = path + wobble * radius * rng.uniform(0.0, 0.04) + np.asarray(centre)
    width = max(1, int(big * rng.uniform(0.025, 0.05)))
    draw.line([tuple(p) for p in path], fill=pen, width=width, joint="curve")


def render_shape_image(
    cls: str,
    rng: np.random.Generator,
    size: int = 128,
    style: str = "filled",
    fill_rgb: tuple[int, int, int] | None = None,
) -> Image.Image:
    """Draw one picture of class `cls` ("red circle"): random light background, position, size, rotation.

    Colour and background are jittered and light noise is added, so no two pictures are identical
    and a model has to learn colour and shape rather than exact pixels. `style="outline"` draws the
    shape as a wobbly pen line in its colour on near-white paper, like a hand-drawn sketch (the web has
    line drawings too; a CLIP that never saw one cannot recognise a sketch). `fill_rgb` replaces the
    class colour's RGB (before jitter), for hues between the named colours.
    """
    color, shape = split_class(cls)
    if size < 8:
        raise ValueError(f"image size {size} is too small to draw a shape: use size >= 8")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}: expected one of {STYLES}")
    big = size * _SUPERSAMPLE

    tint = np.array(BACKGROUND_TINTS[rng.integers(len(BACKGROUND_TINTS))], dtype=np.float32)
    tint += rng.uniform(-12, 12, size=3)
    # A soft vertical or horizontal gradient, like light falling on paper.
    ramp = np.linspace(-1.0, 1.0, big, dtype=np.float32) * rng.uniform(0, 14)
    ramp2d = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
    background = np.clip(tint[None, None, :] + ramp2d[..., None], 0, 255)
    background = np.broadcast_to(background, (big, big, 3)).astype(np.uint8)
    canvas = Image.fromarray(np.ascontiguousarray(background), "RGB")

    radius = big * rng.uniform(0.2, 0.36)
    margin = radius * 1.15
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(margin, big - margin)
    rotation = rng.uniform(-math.pi, math.pi)
    base_rgb = COLOR_RGB[color] if fill_rgb is None else fill_rgb
    fill = np.clip(np.array(base_rgb, dtype=np.float32) + rng.uniform(-18, 18, size=3), 0, 255)
    fill_rgb = tuple(int(v) for v in fill)
    outline_rgb = tuple(int(v * 0.7) for v in fill_rgb)
    line_width = max(1, int(big * 0.012)) if rng.random() < 0.5 else 0

    draw = ImageDraw.Draw(canvas)
    outline = shape_outline(shape, radius, rotation)
    if style == "outline":
        _draw_pen_outline(draw, canvas, outline, (cx, cy), radius, fill_rgb, rng)
    elif outline is None:
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, fill=fill_rgb, outline=outline_rgb if line_width else None, width=line_width)
    else:
        points = [(cx + x, cy + y) for x, y in outline]
        draw.polygon(points, fill=fill_rgb, outline=outline_rgb if line_width else None, width=line_width)

    image = canvas.resize((size, size), Image.Resampling.LANCZOS)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 0.8)))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, rng.uniform(1.0, 5.0), size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def caption_for(cls: str, rng: np.random.Generator) -> str:
    """A caption a person might write for a picture of `cls`, in one of several phrasings."""
    color, shape = split_class(cls)
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    caption = template.format(c=color, s=shape)
    return caption[0].upper() + caption[1:] if rng.random() < 0.5 else caption


def write_image_folder(out_dir: str | Path, n_per_class: int, seed: int, size: int = 128) -> Path:
    """Write `n_per_class` PNGs per class in torchvision ImageFolder layout (`red_circle/00000.png`).

    Each class draws from its own generator seeded by (seed, class index), so the pictures of one
    class do not change when `n_per_class` of another run differs.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class}: need at least 1 image per class")
    if size < 8:
        raise ValueError(f"size={size}: use at least 8 px")
    out = Path(out_dir)
    for index, cls in enumerate(tqdm(CLASSES, desc="shape classes", unit="class", disable=None, leave=False)):
        rng = np.random.default_rng([seed, index])
        class_dir = out / folder_name(cls)
        class_dir.mkdir(parents=True, exist_ok=True)
        for k in range(n_per_class):
            render_shape_image(cls, rng, size).save(class_dir / f"{k:05d}.png")
    return out


def contact_sheet(seed: int = 0, size: int = 64, per_class: int = 2) -> Image.Image:
    """One picture of the whole world: a row per colour, `per_class` columns per shape (for READMEs and eyes)."""
    sheet = Image.new("RGB", (len(SHAPES) * per_class * size, len(COLORS) * size), "white")
    for index, cls in enumerate(CLASSES):
        rng = np.random.default_rng([seed, index])
        row, column = divmod(index, len(SHAPES))
        for k in range(per_class):
            sheet.paste(render_shape_image(cls, rng, size), ((column * per_class + k) * size, row * size))
    return sheet


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m testbed.shapes",
        description="Write the coloured-shape world (36 classes) as an ImageFolder, and/or a contact sheet.",
    )
    parser.add_argument("--out", type=Path, help="ImageFolder directory to write (red_circle/00000.png, ...)")
    parser.add_argument("--n-per-class", type=int, default=20, help="pictures per class (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--size", type=int, default=128, help="side in px (default: 128)")
    parser.add_argument("--sheet", type=Path, help="also write a contact sheet PNG of every class here")
    args = parser.parse_args(argv)
    if args.out is None and args.sheet is None:
        parser.error("nothing to do: pass --out DIR and/or --sheet FILE.png")
    try:
        if args.out is not None:
            write_image_folder(args.out, args.n_per_class, args.seed, args.size)
            print(f"wrote {args.n_per_class * len(CLASSES)} pictures to {args.out}")
        if args.sheet is not None:
            args.sheet.parent.mkdir(parents=True, exist_ok=True)
            contact_sheet(args.seed).save(args.sheet)
            print(f"wrote {args.sheet}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
