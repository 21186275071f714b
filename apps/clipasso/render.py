"""Differentiable rasterizer for cubic Bézier strokes, in pure PyTorch.

A stroke is 4 control points (pixel units, origin at the canvas' top-left corner, pixel (row i, column j)
has its centre at (j + 0.5, i + 0.5), as in SVG), a width and an RGBA colour. Each curve is sampled into
straight segments; a pixel's coverage is the overlap of the pixel box with a band of the stroke's width
around the nearest point of the polyline (exact for horizontal and vertical edges; it gives round caps and
round joins, as SVG's `stroke-linecap="round"`). Strokes are composited in order over a white background.

Speed: the canvas is cut into square tiles and each stroke is only evaluated on the tiles that the boxes
of its flattened segments touch, instead of every stroke at every pixel. A leading batch dimension renders several sketches (seeds) in one call.
`render_dense` is the all-strokes-all-pixels reference the tests and bench/rasterizer.py compare against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from common.errors import UserError

# Keeps sqrt and the segment projection differentiable when a pixel centre lies exactly on the curve.
_EPS = 1e-8


@dataclass(frozen=True)
class RasterConfig:
    """How finely curves are flattened and how the canvas is tiled."""

    segments_per_curve: int = 12
    tile_size: int = 8


DEFAULT_RASTER = RasterConfig()


def bezier_polyline(points: torch.Tensor, segments: int) -> torch.Tensor:
    """Sample cubic Béziers (..., 4, 2) at `segments + 1` evenly spaced parameters -> (..., segments + 1, 2)."""
    t = torch.linspace(0.0, 1.0, segments + 1, device=points.device, dtype=points.dtype)
    s = 1.0 - t
    basis = torch.stack([s**3, 3 * s**2 * t, 3 * s * t**2, t**3], dim=-1)  # (segments + 1, 4)
    return torch.einsum("sk,...kd->...sd", basis, points)


def _polyline_distance(pixels: torch.Tensor, polyline: torch.Tensor) -> torch.Tensor:
    """Distance from pixel centres (P, M, 2) to polylines (P, K + 1, 2) -> (P, M)."""
    seg_a, seg_b = polyline[:, :-1], polyline[:, 1:]
    ab = seg_b - seg_a  # (P, K, 2)
    ap = pixels[:, :, None, :] - seg_a[:, None, :, :]  # (P, M, K, 2)
    t = ((ap * ab[:, None]).sum(-1) / (ab.square().sum(-1)[:, None] + _EPS)).clamp(0.0, 1.0)
    offset = ap - t[..., None] * ab[:, None]
    return torch.sqrt(offset.square().sum(-1).amin(-1) + _EPS)


def _coverage(distance: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Fraction of a 1-px box at `distance` from the centre line covered by a band of `width`."""
    half = width / 2
    return (
        torch.minimum(distance + half, torch.full_like(distance, 0.5))
        - torch.clamp(distance - half, min=-0.5)
    ).clamp(min=0.0)


def _composite(alpha: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Over-composite layers in order onto white: alpha (C, S, M), rgb (C, S, 3) -> (C, 3, M)."""
    one_minus = 1.0 - alpha
    # transmittance[i] = prod_{j >= i} (1 - alpha_j): how much of layer i-1 and the background shows through.
    through = one_minus.flip(1).cumprod(1).flip(1)
    after = torch.cat([through[:, 1:], torch.ones_like(through[:, :1])], dim=1)
    weight = alpha * after  # (C, S, M)
    return through[:, :1] + torch.einsum("csm,csk->ckm", weight, rgb)


def _check(points: torch.Tensor, widths: torch.Tensor, colors: torch.Tensor) -> None:
    if points.ndim != 4 or points.shape[-2:] != (4, 2):
        raise ValueError(f"points must be (batch, strokes, 4, 2), got {tuple(points.shape)}")
    if widths.shape != points.shape[:2] or colors.shape != (*points.shape[:2], 4):
        raise ValueError(
            f"widths must be {tuple(points.shape[:2])} and colors {(*points.shape[:2], 4)}, "
            f"got {tuple(widths.shape)} and {tuple(colors.shape)}"
        )


def render(
    points: torch.Tensor,
    widths: torch.Tensor,
    colors: torch.Tensor,
    size: int | tuple[int, int],
    config: RasterConfig = DEFAULT_RASTER,
) -> torch.Tensor:
    """Render strokes over white: points (B, N, 4, 2), widths (B, N), colors RGBA (B, N, 4) -> (B, 3, H, W).

    Differentiable with respect to points, widths and colors; runs on the device of `points`.
    """
    _check(points, widths, colors)
    height, width = (size, size) if isinstance(size, int) else size
    batch, n_strokes = points.shape[:2]
    tile = config.tile_size
    rows, cols = math.ceil(height / tile), math.ceil(width / tile)
    n_tiles = rows * cols
    device, dtype = points.device, points.dtype

    # Which (sketch, tile, stroke) triples can have ink: tiles touched by the box of one of the stroke's
    # segments, widened by half the width and the 1-px antialiasing reach.
    polyline = bezier_polyline(points, config.segments_per_curve)  # (B, N, K + 1, 2)
    with torch.no_grad():
        reach = (widths / 2 + 1.0)[..., None, None]
        ends = polyline.detach()
        low = torch.minimum(ends[:, :, :-1], ends[:, :, 1:]) - reach  # (B, N, K, 2) as (x, y)
        high = torch.maximum(ends[:, :, :-1], ends[:, :, 1:]) + reach
        tile_x = torch.arange(cols, device=device, dtype=dtype) * tile
        tile_y = torch.arange(rows, device=device, dtype=dtype) * tile
        in_x = (tile_x < high[..., 0:1]) & (tile_x + tile > low[..., 0:1])  # (B, N, K, cols)
        in_y = (tile_y < high[..., 1:2]) & (tile_y + tile > low[..., 1:2])  # (B, N, K, rows)
        touched = (in_y[..., :, None] & in_x[..., None, :]).any(2).reshape(batch, n_strokes, n_tiles)
        sketch_idx, tile_idx, stroke_idx = touched.transpose(1, 2).nonzero(as_tuple=True)  # sorted by cell
        cell = sketch_idx * n_tiles + tile_idx
        cells, cell_of_pair, counts = torch.unique_consecutive(cell, return_inverse=True, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        layer_of_pair = torch.arange(cell.numel(), device=device) - starts[cell_of_pair]
        depth = int(counts.max()) if counts.numel() else 0

        offsets = torch.arange(tile, device=device, dtype=dtype) + 0.5
        local = torch.stack(torch.meshgrid(offsets, offsets, indexing="xy"), dim=-1).reshape(
            -1, 2
        )  # (M, 2) x,y
        origin = torch.stack([(tile_idx % cols) * tile, (tile_idx // cols) * tile], dim=-1).to(dtype)
        pixels = origin[:, None, :] + local[None]  # (P, M, 2)

    canvas = torch.ones(batch * n_tiles, 3, tile * tile, device=device, dtype=dtype)
    if depth:
        pair_widths = widths[sketch_idx, stroke_idx][:, None]
        pair_colors = colors[sketch_idx, stroke_idx]
        alpha = (
            _coverage(_polyline_distance(pixels, polyline[sketch_idx, stroke_idx]), pair_widths)
            * pair_colors[:, 3:4]
        )
        layers = (cell_of_pair, layer_of_pair)
        alpha_stack = alpha.new_zeros(cells.numel(), depth, tile * tile).index_put(layers, alpha)
        rgb_stack = alpha.new_zeros(cells.numel(), depth, 3).index_put(layers, pair_colors[:, :3])
        canvas = canvas.index_copy(0, cells, _composite(alpha_stack, rgb_stack))
    image = canvas.reshape(batch, rows, cols, 3, tile, tile).permute(0, 3, 1, 4, 2, 5)
    return image.reshape(batch, 3, rows * tile, cols * tile)[:, :, :height, :width]


def render_dense(
    points: torch.Tensor,
    widths: torch.Tensor,
    colors: torch.Tensor,
    size: int | tuple[int, int],
    config: RasterConfig = DEFAULT_RASTER,
    chunk: int | None = None,
) -> torch.Tensor:
    """Reference rasterizer: every stroke at every pixel. Same maths as `render`, no culling.

    With `chunk`, pixels are taken `chunk` at a time and each chunk is recomputed on backward
    (activation checkpointing), so no strokes x pixels x segments tensor is held whole: the fair dense
    baseline of bench/rasterizer.py. Same picture either way.
    """
    _check(points, widths, colors)
    height, width = (size, size) if isinstance(size, int) else size
    batch, n_strokes = points.shape[:2]
    ys = torch.arange(height, device=points.device, dtype=points.dtype) + 0.5
    xs = torch.arange(width, device=points.device, dtype=points.dtype) + 0.5
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
    polyline = bezier_polyline(points, config.segments_per_curve).reshape(batch * n_strokes, -1, 2)
    flat_widths, flat_alpha = widths.reshape(-1, 1), colors[..., 3].reshape(-1, 1)
    if chunk is None:
        alpha = _dense_alpha(grid, polyline, flat_widths, flat_alpha)
    else:
        from torch.utils.checkpoint import checkpoint

        parts = [
            checkpoint(
                _dense_alpha, grid[i : i + chunk], polyline, flat_widths, flat_alpha, use_reentrant=False
            )
            for i in range(0, grid.shape[0], chunk)
        ]
        alpha = torch.cat(parts, 1)
    out = _composite(alpha.reshape(batch, n_strokes, -1), colors[..., :3])
    return out.reshape(batch, 3, height, width)


def _dense_alpha(
    pixels: torch.Tensor, polyline: torch.Tensor, widths: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """Coverage x opacity of every stroke (S, K + 1, 2) at pixels (M, 2) -> (S, M)."""
    distance = _polyline_distance(pixels[None].expand(polyline.shape[0], -1, -1), polyline)
    return _coverage(distance, widths) * alpha


def black_strokes(points: torch.Tensor, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Widths and colours for CLIPasso-style strokes: all black, opaque, one width."""
    shape = points.shape[:2]
    widths = torch.full(shape, float(width), device=points.device, dtype=points.dtype)
    colors = torch.zeros(*shape, 4, device=points.device, dtype=points.dtype)
    colors[..., 3] = 1.0
    return widths, colors


class BackendUnavailable(UserError, RuntimeError):
    """The asked-for rasterizer backend cannot be used here."""


def render_diffvg(
    points: torch.Tensor,
    widths: torch.Tensor,
    colors: torch.Tensor,
    size: int | tuple[int, int],
    config: RasterConfig = DEFAULT_RASTER,
) -> torch.Tensor:
    """The same strokes rendered by diffvg (2x2 supersampling, as CLIPasso); needs `import pydiffvg`."""
    import pydiffvg

    _check(points, widths, colors)
    height, width = (size, size) if isinstance(size, int) else size
    images = []
    for b in range(points.shape[0]):
        shapes, groups = [], []
        for i in range(points.shape[1]):
            shapes.append(
                pydiffvg.Path(
                    num_control_points=torch.tensor([2]),
                    points=points[b, i],
                    stroke_width=widths[b, i],
                    is_closed=False,
                )
            )
            groups.append(
                pydiffvg.ShapeGroup(shape_ids=torch.tensor([i]), fill_color=None, stroke_color=colors[b, i])
            )
        scene = pydiffvg.RenderFunction.serialize_scene(width, height, shapes, groups)
        rgba = pydiffvg.RenderFunction.apply(width, height, 2, 2, 0, None, *scene)
        rgb = rgba[..., 3:4] * rgba[..., :3] + (1 - rgba[..., 3:4])  # over white, as CLIPasso composites
        images.append(rgb.permute(2, 0, 1))
    return torch.stack(images).to(points.device)


def get_rasterizer(backend: str):
    """`render` for "torch"; `render_diffvg` for "diffvg" when pydiffvg imports, else BackendUnavailable."""
    if backend == "torch":
        return render
    if backend == "diffvg":
        try:
            import pydiffvg  # noqa: F401
        except ImportError:
            raise BackendUnavailable(
                "--backend diffvg: pydiffvg is not installed (it is on neither PyPI nor Debian; build it from "
                "https://github.com/BachiLi/diffvg) - use --backend torch"
            ) from None
        return render_diffvg
    raise BackendUnavailable(f"--backend {backend!r}: choose torch or diffvg")
