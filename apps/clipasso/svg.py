"""SVG 1.1 out and in: one `<path d="M x y C x y x y x y">` per stroke, round caps, as the rasterizer draws.

The coordinate system is the rasterizer's (pixel units, origin top-left), so cairosvg or a browser renders
the file to the picture the optimiser saw. Reading accepts what we write and the common variants people
hand-edit: several `C` segments in one path (split into strokes), absolute `L` lines, `#rgb`/`rgb()` colours.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch

from apps.clipasso.picture import MAX_PIXELS
from common.errors import UserError

_SVG_NS = "http://www.w3.org/2000/svg"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NAMED = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "red": (255, 0, 0),
    "green": (0, 128, 0),
    "blue": (0, 0, 255),
}


class SvgError(UserError, ValueError):
    """An SVG that does not hold strokes we can read."""


@dataclass
class Sketch:
    """Strokes of one drawing: points (N, 4, 2) in pixels, widths (N,), colors RGBA (N, 4) in [0, 1]."""

    points: torch.Tensor
    widths: torch.Tensor
    colors: torch.Tensor
    width: int
    height: int


def _fmt(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


def sketch_to_svg(sketch: Sketch) -> str:
    """The SVG document for a sketch, on a white background."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="{_SVG_NS}" version="1.1" width="{sketch.width}" height="{sketch.height}" '
        f'viewBox="0 0 {sketch.width} {sketch.height}">',
        '<rect x="0" y="0" width="100%" height="100%" fill="white"/>',
    ]
    points = sketch.points.detach().cpu().double().tolist()
    widths = sketch.widths.detach().cpu().double().tolist()
    colors = sketch.colors.detach().cpu().double().clamp(0, 1).tolist()
    for (p0, p1, p2, p3), width, (r, g, b, a) in zip(points, widths, colors):
        d = f"M {_fmt(p0[0])} {_fmt(p0[1])} C " + " ".join(f"{_fmt(x)} {_fmt(y)}" for x, y in (p1, p2, p3))
        rgb = f"rgb({round(r * 255)},{round(g * 255)},{round(b * 255)})"
        lines.append(
            f'<path d="{d}" fill="none" stroke="{rgb}" stroke-opacity="{_fmt(a)}" '
            f'stroke-width="{_fmt(width)}" stroke-linecap="round" stroke-linejoin="round"/>'
        )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def _parse_color(text: str | None, source: str) -> tuple[float, float, float]:
    text = (text or "black").strip().lower()
    if text in _NAMED:
        return tuple(c / 255 for c in _NAMED[text])  # type: ignore[return-value]
    if m := re.fullmatch(r"#([0-9a-f]{3}|[0-9a-f]{6})", text):
        h = m.group(1)
        h = "".join(c * 2 for c in h) if len(h) == 3 else h
        return tuple(int(h[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]
    if m := re.fullmatch(r"rgb\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)", text):
        return tuple(int(v) / 255 for v in m.groups())  # type: ignore[return-value]
    raise SvgError(f"{source}: stroke colour {text!r} is not black/white/#rgb/#rrggbb/rgb(r,g,b)")


def _path_curves(d: str, source: str) -> list[list[tuple[float, float]]]:
    """Split an absolute path's data into cubic curves (lines become straight cubics)."""
    tokens = re.findall(rf"[MmCcLlZz]|{_NUMBER}", d)
    curves: list[list[tuple[float, float]]] = []
    command, current, numbers = None, None, []

    def flush() -> None:
        nonlocal current
        if command == "M":
            if len(numbers) < 2 or len(numbers) % 2:
                raise SvgError(f"{source}: path {d!r} has an incomplete M command")
            current = (numbers[0], numbers[1])
            for i in range(2, len(numbers), 2):  # extra pairs after M are implicit line-tos
                nxt = (numbers[i], numbers[i + 1])
                curves.append([current, current, nxt, nxt])
                current = nxt
        elif command in ("C", "L"):
            step = 6 if command == "C" else 2
            if current is None or not numbers or len(numbers) % step:
                raise SvgError(f"{source}: path {d!r} has an incomplete {command} command")
            for i in range(0, len(numbers), step):
                if command == "C":
                    p1, p2, p3 = (
                        (numbers[i], numbers[i + 1]),
                        (numbers[i + 2], numbers[i + 3]),
                        (numbers[i + 4], numbers[i + 5]),
                    )
                else:
                    p3 = (numbers[i], numbers[i + 1])
                    p1, p2 = current, p3
                curves.append([current, p1, p2, p3])
                current = p3

    for token in tokens:
        if token.isalpha():
            if token.islower() and token not in "z":
                raise SvgError(
                    f"{source}: relative path command {token!r} is not supported; use absolute M/C/L"
                )
            flush()
            command, numbers = token.upper(), []
        else:
            numbers.append(float(token))
    flush()
    return curves


def svg_to_sketch(text: str, source: str = "<svg>") -> Sketch:
    """Read the strokes of an SVG written by `sketch_to_svg` (or a hand-written one using M/C/L paths)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise SvgError(f"{source} is not well-formed XML ({exc})") from None
    if root.tag not in ("svg", f"{{{_SVG_NS}}}svg"):
        raise SvgError(f"{source}: root element is <{root.tag}>, expected <svg>")
    view_box = [float(v) for v in re.findall(_NUMBER, root.get("viewBox", ""))]
    width = (
        int(round(view_box[2]))
        if len(view_box) == 4
        else int(float(re.findall(_NUMBER, root.get("width", "0"))[0]))
    )
    height = (
        int(round(view_box[3]))
        if len(view_box) == 4
        else int(float(re.findall(_NUMBER, root.get("height", "0"))[0]))
    )
    if width <= 0 or height <= 0:
        raise SvgError(f"{source}: no usable width/height or viewBox")
    if width * height > MAX_PIXELS:  # the sketch is rasterised at this size
        raise SvgError(f"{source}: {width} x {height} is over {MAX_PIXELS:,} pixels; give a smaller viewBox")
    points, widths, colors = [], [], []
    for path in root.iter():
        if path.tag not in ("path", f"{{{_SVG_NS}}}path"):
            continue
        rgb = _parse_color(path.get("stroke"), source)
        alpha = float(path.get("stroke-opacity", 1.0)) * float(path.get("opacity", 1.0))
        stroke_width = float(path.get("stroke-width", 1.0))
        for curve in _path_curves(path.get("d", ""), source):
            points.append(curve)
            widths.append(stroke_width)
            colors.append([*rgb, alpha])
    if not points:
        raise SvgError(f"{source} has no <path> strokes")
    return Sketch(
        points=torch.tensor(points, dtype=torch.float32),
        widths=torch.tensor(widths, dtype=torch.float32),
        colors=torch.tensor(colors, dtype=torch.float32),
        width=width,
        height=height,
    )


def read_svg(path: str | Path) -> Sketch:
    """Read an SVG file into strokes; `SvgError` names the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SvgError(f"cannot read SVG {path}: {exc}") from None
    return svg_to_sketch(text, source=str(path))


def svg_to_png_array(svg_text: str) -> torch.Tensor:
    """Render SVG text with cairosvg -> (3, H, W) float in [0, 1] over white (used by tests and docs)."""
    import io

    import cairosvg
    import numpy as np
    from PIL import Image

    png = cairosvg.svg2png(bytestring=svg_text.encode("utf-8"))
    rgba = Image.open(io.BytesIO(png)).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 255
