"""CLIP score: cosine similarity of image and caption embeddings, in batches.

The embedder is passed in (curation does not import training): anything with
`encode_image` / `encode_text` (an open_clip model) plus its `preprocess` and `tokenizer`,
e.g. `models.loader.load_clip(path)` or `open_clip.create_model_and_transforms(...)`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

CLIP_STAGE = "clip"


@dataclass(frozen=True)
class ClipEmbedder:
    model: Any  # has encode_image(images) and encode_text(tokens)
    preprocess: Callable[[Image.Image], Any]
    tokenizer: Callable[[list[str]], Any]
    device: str = "cpu"


def as_embedder(obj: Any, device: str | None = None) -> ClipEmbedder:
    """Accept a ClipEmbedder, a LoadedCLIP-like object (model, preprocess, tokenizer) or an
    open_clip model that carries `preprocess` and `tokenizer` attributes."""
    if isinstance(obj, ClipEmbedder):
        return obj
    model = obj.model if hasattr(obj, "model") and hasattr(obj.model, "encode_image") else obj
    preprocess = getattr(obj, "preprocess", None) or getattr(obj, "preprocess_val", None)
    tokenizer = getattr(obj, "tokenizer", None)
    if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
        raise TypeError(f"{type(obj).__name__} has no encode_image/encode_text: not a CLIP embedder")
    if preprocess is None or tokenizer is None:
        raise TypeError(f"{type(obj).__name__} lacks `preprocess` or `tokenizer`; wrap it in ClipEmbedder")
    dev = device or getattr(obj, "device", None) or _model_device(model)
    return ClipEmbedder(model=model, preprocess=preprocess, tokenizer=tokenizer, device=str(dev))


def load_embedder(cfg: Any) -> ClipEmbedder | None:
    """The CLIP a build config asks for (`clip_checkpoint`, or `clip_model` + `clip_pretrained`), as an
    embedder; None when no CLIP stage is configured. Loaded through the model layer."""
    if not getattr(cfg, "wants_clip", False):
        return None
    from models import load_clip

    loaded = load_clip(cfg.clip_checkpoint, cfg.device, model=cfg.clip_model, pretrained=cfg.clip_pretrained)
    return ClipEmbedder(loaded.model, loaded.preprocess, loaded.tokenizer, cfg.device)


def _model_device(model: Any) -> str:
    try:
        return str(next(model.parameters()).device)
    except (AttributeError, StopIteration, TypeError):
        return "cpu"


def clip_scores(
    embedder: ClipEmbedder, jpgs: Sequence[bytes], captions: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    """Cosine similarity of each (image, caption) pair, float32, in input order."""
    import torch  # heavy: only when a CLIP score is asked for

    model = embedder.model
    was_training = getattr(model, "training", False)
    model.eval()
    out = np.zeros(len(jpgs), dtype=np.float32)
    try:
        with torch.no_grad():
            for start in range(0, len(jpgs), batch_size):
                images = []
                for data in jpgs[start : start + batch_size]:
                    with Image.open(io.BytesIO(data)) as im:
                        images.append(embedder.preprocess(im.convert("RGB")))
                pixels = torch.stack(images).to(embedder.device)
                tokens = embedder.tokenizer(list(captions[start : start + batch_size])).to(embedder.device)
                image_features = torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)
                text_features = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
                out[start : start + len(images)] = (image_features * text_features).sum(-1).cpu().numpy()
    finally:
        if was_training:
            model.train()
    return out


def clip_rejects(
    keys: Sequence[str], scores: Sequence[float], min_score: float | None, top_fraction: float | None
) -> dict[str, str]:
    """Key -> reason for the pairs a threshold or a top fraction drops (ties broken by key)."""
    rejects: dict[str, str] = {}
    if min_score is not None:
        for key, score in zip(keys, scores):
            if not score >= min_score:  # NaN counts as below
                rejects[key] = f"low_clip_score: {score:.3f} < {min_score:g}"
    elif top_fraction is not None and len(keys):
        keep = math.ceil(top_fraction * len(keys))
        order = sorted(range(len(keys)), key=lambda i: (-_finite(scores[i]), keys[i]))
        cutoff = _finite(scores[order[keep - 1]]) if keep else math.inf
        for i in order[keep:]:
            rejects[keys[i]] = (
                f"low_clip_score: {scores[i]:.3f} outside the top {top_fraction:g} (>= {cutoff:.3f})"
            )
    return rejects


def _finite(x: float) -> float:
    return x if x == x else -math.inf
