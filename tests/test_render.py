"""The pure-PyTorch Bézier rasterizer: gradients, agreement with the dense reference and with cairosvg."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from apps.clipasso.render import RasterConfig, black_strokes, render, render_dense
from apps.clipasso.svg import Sketch, SvgError, read_svg, sketch_to_svg, svg_to_png_array, svg_to_sketch


def random_strokes(n: int, size: int, spread: float, seed: int, batch: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, n, 1, 2, generator=gen) * (size - 2 * spread) + spread
    return centres + (torch.rand(batch, n, 4, 2, generator=gen) - 0.5) * 2 * spread


def ink(image: torch.Tensor) -> torch.Tensor:
    """Pixels at least half dark: (3, H, W) -> bool (H, W)."""
    return (1 - image.mean(0)) > 0.5


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def dilate(mask: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0] > 0


def test_finite_differences_match_autograd_for_points_width_and_colour():
    points = random_strokes(3, 24, 6.0, seed=0).double().requires_grad_()
    widths = torch.tensor([[1.5, 2.5, 4.0]], dtype=torch.float64, requires_grad=True)
    colors = torch.tensor(
        [[[0.1, 0.2, 0.9, 0.8], [0.7, 0.1, 0.3, 1.0], [0.2, 0.6, 0.1, 0.6]]], dtype=torch.float64
    )
    colors.requires_grad_()
    weights = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    config = RasterConfig(segments_per_curve=8, tile_size=8)

    def loss(p, w, c):
        return (render(p, w, c, 24, config) * weights).sum()

    # float64 central differences; the coverage is piecewise linear, kinks have measure zero.
    assert torch.autograd.gradcheck(loss, (points, widths, colors), eps=1e-6, atol=1e-4, rtol=1e-3)
    grads = torch.autograd.grad(loss(points, widths, colors), (points, widths, colors))
    assert all(g.abs().sum() > 0 for g in grads), "every parameter must receive gradient"


def test_tiled_render_equals_dense_reference_with_batch_of_sketches():
    points = random_strokes(12, 64, 14.0, seed=2, batch=3)
    widths, colors = black_strokes(points, 2.0)
    colors[0, :5] = torch.tensor([1.0, 0.0, 0.0, 0.5])  # mixed colours exercise the compositing order
    tiled = render(points, widths, colors, 64, RasterConfig(tile_size=16))
    dense = render_dense(points, widths, colors, 64)
    assert tiled.shape == (3, 3, 64, 64)
    assert torch.allclose(tiled, dense, atol=1e-5)
    assert (tiled < 0.5).any() and tiled.max() == 1.0
    # The chunked dense form (bench/rasterizer.py's baseline) draws the same picture, with the same gradients.
    leaf = points.clone().requires_grad_(True)
    chunked = render_dense(leaf, widths, colors, 64, chunk=300)
    assert torch.equal(chunked, dense)
    chunked.square().mean().backward()
    whole = points.clone().requires_grad_(True)
    render_dense(whole, widths, colors, 64).square().mean().backward()
    assert torch.allclose(leaf.grad, whole.grad, atol=1e-6) and leaf.grad.abs().sum() > 0


def test_non_square_canvas_and_strokes_outside_are_white():
    points = torch.tensor([[[[-50.0, -50.0], [-40.0, -45.0], [-45.0, -40.0], [-30.0, -30.0]]]])
    widths, colors = black_strokes(points, 3.0)
    out = render(points, widths, colors, (40, 70))
    assert out.shape == (1, 3, 40, 70) and bool((out == 1).all())


def test_rejects_malformed_shapes():
    with pytest.raises(ValueError, match="points must be"):
        render(torch.zeros(3, 4, 2), torch.zeros(3), torch.zeros(3, 4), 32)


@pytest.mark.parametrize("width,threshold,dilated", [(3.0, 0.9, False), (1.5, 0.95, True)])
def test_cairosvg_renders_our_svg_to_our_raster(width, threshold, dilated):
    for seed in range(3):
        points = random_strokes(16, 224, 40.0, seed=10 + seed)
        widths, colors = black_strokes(points, width)
        ours = render(points, widths, colors, 224)[0]
        svg = sketch_to_svg(Sketch(points[0], widths[0], colors[0], 224, 224))
        cairo = svg_to_png_array(svg)
        a, b = ink(ours), ink(cairo)
        if dilated:
            a, b = dilate(a), dilate(b)
        assert iou(a, b) >= threshold, f"seed {seed}: ink IoU {iou(a, b):.3f} < {threshold}"


def test_svg_round_trip_keeps_points_widths_colours(tmp_path):
    points = random_strokes(5, 128, 20.0, seed=3)[0]
    widths = torch.tensor([1.0, 2.0, 3.5, 1.5, 0.75])
    colors = torch.rand(5, 4, generator=torch.Generator().manual_seed(4))
    path = tmp_path / "s.svg"
    path.write_text(sketch_to_svg(Sketch(points, widths, colors, 128, 96)))
    back = read_svg(path)
    assert (back.width, back.height) == (128, 96)
    assert torch.allclose(back.points, points, atol=1e-3)
    assert torch.allclose(back.widths, widths, atol=1e-3)
    assert torch.allclose(back.colors, colors, atol=1 / 255 + 1e-3)


def test_svg_reader_splits_multi_segment_paths_and_lines():
    text = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="50" height="40">'
        '<path d="M1 2 C3 4 5 6 7 8 9 10 11 12 13 14 L20 20" stroke="#f00" stroke-width="2"/></svg>'
    )
    sketch = svg_to_sketch(text)
    assert sketch.points.shape == (3, 4, 2) and (sketch.width, sketch.height) == (50, 40)
    assert sketch.points[1, 0].tolist() == [7.0, 8.0] and sketch.points[2, 3].tolist() == [20.0, 20.0]
    assert sketch.colors[0].tolist() == [1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "text,message",
    [
        ("not xml at all", "not well-formed"),
        ('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "no <path>"),
        (
            '<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><path d="m1 1 c1 1 2 2 3 3"/></svg>',
            "relative",
        ),
        (
            '<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><path d="M1 1 C1 1 2"/></svg>',
            "incomplete",
        ),
    ],
)
def test_svg_reader_names_the_problem(text, message):
    with pytest.raises(SvgError, match=message):
        svg_to_sketch(text, source="x.svg")
