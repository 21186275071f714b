"""Reading the input picture: any PIL format, one clear error per bad file, a square canvas over white.

Modes are converted by meaning, not by PIL's default: 16-bit and 32-bit greyscale are scaled by their
bit depth (PIL's `convert("RGB")` would clip them to white), palette and greyscale images with
transparency keep it as a mask, CMYK goes to RGB. Non-square pictures are padded with white, so
nothing of the subject is cropped away.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import UserError

# Far above any photo people sketch; a decompression bomb declares billions of pixels in a tiny file.
MAX_PIXELS = 50_000_000
MIN_SIDE = 16

MaskMode = Literal["auto", "alpha", "none"]


class PictureError(UserError, ValueError):
    """The input picture cannot be used; the message names the file and what to do."""


@dataclass
class Picture:
    """The picture on the square canvas: rgb (3, S, S) in [0, 1] over white; mask (S, S) or None."""

    rgb: torch.Tensor
    mask: torch.Tensor | None
    source: str
    original_size: tuple[int, int]


def _to_rgba(image: Image.Image) -> np.ndarray:
    """Float RGBA in [0, 1] for every PIL mode we accept."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = np.asarray(image, dtype=np.float64)
        # 16-bit PNGs open as I;16 or I; values above 255 mean the 16-bit range.
        scale = 65535.0 if mode.startswith("I;16") or grey.max() > 255 else 255.0
        if mode == "F":
            scale = max(float(grey.max()), 1.0)
        grey = np.clip(grey / scale, 0.0, 1.0)
        return np.stack([grey, grey, grey, np.ones_like(grey)], axis=-1)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    converted = image.convert("RGBA") if has_alpha else image.convert("RGB").convert("RGBA")
    return np.asarray(converted, dtype=np.float64) / 255.0


def load_picture(path: str | Path, size: int, mask: MaskMode = "auto") -> Picture:
    """Read `path`, pad it to a square over white and resize to `size`; raise PictureError on bad input."""
    path = Path(path)
    if not path.is_file():
        raise PictureError(f"image {path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Read the header with PIL's own bomb check off, so our check below can name the declared size.
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
            width, height = image.size
            side = max(width, height)  # the picture is padded to a square: that canvas is what is allocated
            if side * side > MAX_PIXELS:
                raise PictureError(
                    f"image {path} declares {width} x {height} pixels, a {side} x {side} square canvas "
                    f"(over {MAX_PIXELS:,} pixels): refusing a possible decompression bomb; resize it first"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PictureError(f"image {path} is too large to decode safely ({exc}); resize it first") from None
    except UnidentifiedImageError:
        raise PictureError(f"image {path} is not a picture PIL can read (PNG, JPEG, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise PictureError(f"image {path} could not be decoded ({exc}); is it truncated?") from None
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise PictureError(f"image {path} is {width} x {height} pixels: need at least {MIN_SIDE} px per side")

    rgba = _to_rgba(image)
    alpha = rgba[..., 3]
    has_transparency = bool((alpha < 1.0).any())
    if mask == "alpha" and not has_transparency:
        raise PictureError(f"--mask alpha: image {path} has no transparent pixels; use --mask none")
    rgb = rgba[..., :3] * alpha[..., None] + (1.0 - alpha[..., None])  # over white

    side = max(width, height)
    canvas = np.ones((side, side, 4))
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width, :3] = rgb
    canvas[..., 3] = 0.0
    canvas[top : top + height, left : left + width, 3] = alpha
    tensor = torch.from_numpy(canvas).permute(2, 0, 1).float()[None]
    tensor = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)[0]
    tensor = tensor.clamp(0.0, 1.0)
    use_mask = mask == "alpha" or (mask == "auto" and has_transparency)
    return Picture(
        rgb=tensor[:3].contiguous(),
        mask=(tensor[3] > 0.5).float() if use_mask else None,
        source=str(path),
        original_size=(width, height),
    )
