"""Stage 1 of indexing: embed one dataset shard (every image and caption) with a CLIP.

A shard's result is a *part*: its rows' metadata, the L2-normalised image and caption
embeddings, each picture's perceptual hash and colour signature (for near-duplicate groups),
and the encoded pictures themselves (so a served index stands alone). Rows whose picture does
not decode are returned as rejects with the reason, never dropped silently.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image

from curation.dedup import image_signature
from curation.shards import iter_batches

# Read from the shard: what the result page and the filters show (img2dataset + curation columns).
SHARD_COLUMNS = ("key", "url", "caption", "clip_score", "width", "height", "sha256", "jpg")

PART_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("clip_score", pa.float32()),  # the shard's score when it has one, else this CLIP's cosine
        ("clip_score_from", pa.string()),  # "dataset" or "index"
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
        ("colour", pa.string()),
        ("jpg", pa.binary()),
    ]
)


@dataclass
class Part:
    """One shard, embedded."""

    rows: pa.Table  # PART_SCHEMA
    image: np.ndarray  # [n, dim] float32, unit rows
    text: np.ndarray  # [n, dim] float32, unit rows
    rejects: list[dict]  # {"key", "reason"}


@torch.no_grad()
def encode_texts(clip, texts: list[str]) -> np.ndarray:
    """Unit-length caption embeddings [n, dim] float32."""
    device = next(clip.model.parameters()).device
    tokens = clip.tokenizer(texts).to(device)
    return F.normalize(clip.model.encode_text(tokens).float(), dim=-1).cpu().numpy()


@torch.no_grad()
def encode_images(clip, images: list[Image.Image]) -> np.ndarray:
    """Unit-length image embeddings [n, dim] float32."""
    device = next(clip.model.parameters()).device
    pixels = torch.stack([clip.preprocess(im.convert("RGB")) for im in images]).to(device)
    return F.normalize(clip.model.encode_image(pixels).float(), dim=-1).cpu().numpy()


def _decode(jpg: bytes | None) -> tuple[Image.Image | None, str | None]:
    if not jpg:
        return None, "no picture bytes in column `jpg`"
    try:
        with Image.open(io.BytesIO(jpg)) as im:
            im.load()
            return im.convert("RGB"), None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"picture does not decode ({type(exc).__name__}: {str(exc)[:120]})"


def embed_shard(
    clip, shard: Path, batch_size: int = 64, advance: Callable[[int], None] | None = None
) -> Part:
    """Embed every row of one trusted shard (see module doc); `advance(n)` is called per batch."""
    columns = {name: [] for name in PART_SCHEMA.names}
    image_parts, text_parts, rejects = [], [], []
    for batch in iter_batches(shard, columns=list(SHARD_COLUMNS), batch_size=batch_size, verify=False):
        names = batch.schema.names
        data = {
            c: batch.column(c).to_pylist() if c in names else [None] * batch.num_rows for c in SHARD_COLUMNS
        }
        pictures, kept = [], []
        for i, jpg in enumerate(data["jpg"]):
            picture, problem = _decode(jpg)
            if problem:
                rejects.append({"key": data["key"][i], "reason": problem})
            else:
                pictures.append(picture)
                kept.append(i)
        if kept:
            captions = [data["caption"][i] or "" for i in kept]
            image = encode_images(clip, pictures)
            text = encode_texts(clip, captions)
            cosine = (image * text).sum(axis=1)
            image_parts.append(image)
            text_parts.append(text)
            for j, i in enumerate(kept):
                signature = image_signature(data["jpg"][i])
                phash, colour = signature.phash, signature.colour
                from_dataset = data["clip_score"][i] is not None
                columns["key"].append(data["key"][i])
                columns["url"].append(data["url"][i])
                columns["caption"].append(data["caption"][i])
                columns["clip_score"].append(data["clip_score"][i] if from_dataset else float(cosine[j]))
                columns["clip_score_from"].append("dataset" if from_dataset else "index")
                columns["width"].append(data["width"][i] or pictures[j].width)
                columns["height"].append(data["height"][i] or pictures[j].height)
                columns["bytes"].append(len(data["jpg"][i]))
                columns["sha256"].append(data["sha256"][i])
                columns["phash"].append(phash)
                columns["colour"].append(colour)
                columns["jpg"].append(data["jpg"][i])
        if advance is not None:
            advance(batch.num_rows)
    dim = clip.embed_dim
    return Part(
        pa.table(columns, schema=PART_SCHEMA),
        np.concatenate(image_parts) if image_parts else np.zeros((0, dim), np.float32),
        np.concatenate(text_parts) if text_parts else np.zeros((0, dim), np.float32),
        rejects,
    )
