"""Where the first strokes go: CLIP attention x XDoG edges, softmax with a temperature, one start per stroke.

ViTs: the CLS token's attention to the patches, averaged over heads and blocks (hooks on each block's
attention recompute it with `need_weights=True`; open_clip calls it with weights off). Other encoders:
a smoothed gradient-magnitude map stands in for attention. Either is multiplied by the XDoG edge map
(CLIPasso's `(1 - XDoG)`), restricted to the foreground mask when there is one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import rgb2gray
from skimage.filters import gaussian, sobel, threshold_otsu

from apps.clipasso.losses import ClipImageEncoder


def xdog_edges(
    rgb: np.ndarray,
    sigma: float = 0.8,
    k: float = 10.0,
    gamma: float = 0.98,
    phi: float = 200.0,
    eps: float = -0.1,
) -> np.ndarray:
    """Binary edge map (1 on edges) by the eXtended Difference of Gaussians, CLIPasso's settings."""
    grey = rgb2gray(rgb)
    diff = gaussian(grey, sigma) - gamma * gaussian(grey, sigma * k)
    response = np.where(diff < eps, 1.0, 1.0 + np.tanh(phi * diff))
    response = (response - response.min()) / max(float(np.ptp(response)), 1e-8)
    if np.ptp(response) == 0:
        return np.zeros_like(grey)
    return (response < threshold_otsu(response)).astype(np.float64)


def vit_attention_map(encoder: ClipImageEncoder, image: torch.Tensor) -> torch.Tensor | None:
    """CLS -> patch attention averaged over heads and blocks, (grid, grid); None when not a plain ViT."""
    if not encoder.is_vit:
        return None
    blocks = encoder.visual.transformer.resblocks
    if not all(isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention) for b in blocks):
        return None
    maps: list[torch.Tensor] = []

    def hook(module, args, kwargs, output):
        call = dict(kwargs, need_weights=True, average_attn_weights=True)
        _, weights = module.forward(*args, **call)  # .forward skips hooks, so no recursion
        maps.append(weights[:, 0, 1:].detach())  # (batch, queries, keys) whatever batch_first is

    handles = [b.attn.register_forward_hook(hook, with_kwargs=True) for b in blocks]
    try:
        with torch.no_grad():
            encoder(image[None])
    finally:
        for handle in handles:
            handle.remove()
    attention = torch.stack(maps).mean(0)[0]
    grid = int(round(attention.numel() ** 0.5))
    if grid * grid != attention.numel():
        return None
    return attention.reshape(grid, grid)


def edge_attention_map(rgb: np.ndarray) -> np.ndarray:
    """Stand-in for attention on non-ViT encoders: blurred gradient magnitude."""
    return gaussian(sobel(rgb2gray(rgb)), sigma=rgb.shape[0] / 50)


def saliency_map(
    encoder: ClipImageEncoder, picture_rgb: torch.Tensor, mask: torch.Tensor | None
) -> np.ndarray:
    """Saliency (S, S) in [0, 1] for a picture (3, S, S) on the canvas."""
    size = picture_rgb.shape[-1]
    rgb = picture_rgb.permute(1, 2, 0).cpu().numpy().astype(np.float64)
    model_view = F.interpolate(picture_rgb[None], size=encoder.image_size, mode="bilinear", antialias=True)[0]
    attention = vit_attention_map(encoder, model_view.to(encoder.mean.device))
    if attention is not None:
        up = F.interpolate(
            attention[None, None].float().cpu(), size=(size, size), mode="bicubic", align_corners=False
        )
        attn = up[0, 0].numpy().astype(np.float64)
    else:
        attn = edge_attention_map(rgb)
    attn = (attn - attn.min()) / max(float(np.ptp(attn)), 1e-8)
    saliency = attn * xdog_edges(rgb)
    if mask is not None:
        saliency = saliency * mask.cpu().numpy()
    return saliency


def sample_start_points(
    saliency: np.ndarray,
    count: int,
    temperature: float,
    rng: np.random.Generator,
    mask: torch.Tensor | None = None,
) -> np.ndarray:
    """`count` distinct pixel positions (x, y) drawn from softmax(saliency / temperature) over salient pixels.

    Falls back to the foreground (or the whole canvas) when fewer than `count` pixels are salient.
    """
    flat = saliency.reshape(-1)
    candidates = np.flatnonzero(flat > 0)
    weights = np.exp((flat[candidates] - flat[candidates].max()) / temperature) if candidates.size else None
    if candidates.size < count:
        region = mask.cpu().numpy().reshape(-1) > 0 if mask is not None else np.ones_like(flat, dtype=bool)
        candidates = np.flatnonzero(region) if region.sum() >= count else np.arange(flat.size)
        weights = None
    p = None if weights is None else weights / weights.sum()
    chosen = rng.choice(candidates, size=count, replace=False, p=p)
    side = saliency.shape[1]
    return np.stack([chosen % side + 0.5, chosen // side + 0.5], axis=-1).astype(np.float64)


def initial_strokes(starts: np.ndarray, size: int, radius: float, rng: np.random.Generator) -> torch.Tensor:
    """Cubic strokes (N, 4, 2) from start points; each next control point within +-radius/2 of the last."""
    points = [starts]
    for _ in range(3):
        points.append(points[-1] + (rng.random(starts.shape) - 0.5) * radius * size)
    return torch.tensor(np.stack(points, axis=1), dtype=torch.float32)
