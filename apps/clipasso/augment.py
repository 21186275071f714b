"""Random views shared by the sketch and the picture: perspective (p=0.5) then a resized crop (0.8-1).

CLIPasso draws the same random parameters for both images so the losses compare like with like. Each
view is one homography, applied to a whole batch with `grid_sample`; areas that come from outside the
canvas are white (the paper's torchvision transforms fill black, which draws a frame on a sketch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's augmentations: `views` random views plus the plain one."""

    views: int = 4
    perspective_p: float = 0.5
    distortion: float = 0.5
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)


_CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """3x3 matrices mapping src corners (V, 4, 2) to dst corners (V, 4, 2)."""
    rows = []
    for i in range(4):
        x, y = src[:, i, 0], src[:, i, 1]
        u, v = dst[:, i, 0], dst[:, i, 1]
        one, zero = torch.ones_like(x), torch.zeros_like(x)
        rows.append(torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1))
        rows.append(torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1))
    a = torch.stack(rows, 1)  # (V, 8, 8)
    b = dst.reshape(-1, 8)
    h = torch.linalg.solve(a, b)
    return torch.cat([h, torch.ones_like(h[:, :1])], 1).reshape(-1, 3, 3)


def sample_views(config: AugmentConfig, size: int, generator: torch.Generator) -> torch.Tensor:
    """Sampling grids (views, size, size, 2) in grid_sample's [-1, 1] coordinates; the first is the plain view."""
    n = config.views
    jitter = torch.rand(n, 4, 2, generator=generator) * config.distortion
    inward = -_CORNERS.sign()
    warped = _CORNERS + inward * jitter  # output shows the canvas squeezed into these corners
    apply = torch.rand(n, generator=generator) < config.perspective_p
    warped = torch.where(apply[:, None, None], warped, _CORNERS.expand(n, 4, 2))
    to_source = _homography(warped, _CORNERS.expand(n, 4, 2).contiguous())

    area = torch.empty(n).uniform_(*config.crop_scale, generator=generator)
    log_ratio = torch.empty(n).uniform_(*torch.tensor(config.crop_ratio).log().tolist(), generator=generator)
    ratio = log_ratio.exp()
    half_w = (area * ratio).sqrt().clamp(max=1.0)
    half_h = (area / ratio).sqrt().clamp(max=1.0)
    centre_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - half_w)
    centre_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - half_h)

    line = (torch.arange(size) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(line, line, indexing="ij")
    out = torch.stack([gx, gy], -1).reshape(1, -1, 2)  # output pixel centres
    cropped = torch.stack(
        [
            centre_x[:, None] + half_w[:, None] * out[..., 0],
            centre_y[:, None] + half_h[:, None] * out[..., 1],
        ],
        -1,
    )
    homogeneous = torch.cat([cropped, torch.ones_like(cropped[..., :1])], -1) @ to_source.transpose(1, 2)
    source = homogeneous[..., :2] / homogeneous[..., 2:3]
    grids = source.reshape(n, size, size, 2)
    plain = torch.stack([gx, gy], -1)[None]
    return torch.cat([plain, grids], 0)


def apply_views(images: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """images (B, 3, H, W) over white, grids (V, h, w, 2) -> (B, V, 3, h, w); outside the canvas is white."""
    batch, views = images.shape[0], grids.shape[0]
    expanded = (images - 1.0)[:, None].expand(-1, views, -1, -1, -1).reshape(batch * views, *images.shape[1:])
    sampled = F.grid_sample(
        expanded,
        grids.to(images).repeat(batch, 1, 1, 1),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return (sampled + 1.0).reshape(batch, views, *sampled.shape[1:])
