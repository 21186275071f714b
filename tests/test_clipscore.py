"""CLIP score with a real (randomly initialised) open_clip model: batched cosine, threshold and top fraction."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from curation.clipscore import as_embedder, clip_rejects, clip_scores
from models import load_clip
from testbed.shapes import CLASSES, render_shape_image


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return load_clip(model="clip-tiny")


def jpgs(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buffer = io.BytesIO()
        render_shape_image(CLASSES[i % len(CLASSES)], rng, 48).save(buffer, "JPEG")
        out.append(buffer.getvalue())
    return out


def test_batched_scores_equal_one_by_one_cosine(tiny_clip):
    embedder = as_embedder(tiny_clip)
    images = jpgs(7)
    captions = [f"a {CLASSES[i]}" for i in range(7)]
    batched = clip_scores(embedder, images, captions, batch_size=3)
    assert batched.shape == (7,) and batched.dtype == np.float32
    assert np.all(np.abs(batched) <= 1.0 + 1e-5)
    model = tiny_clip.model
    with torch.no_grad():
        for i in (0, 6):
            pixels = tiny_clip.preprocess(Image.open(io.BytesIO(images[i])).convert("RGB"))[None]
            a = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
            b = torch.nn.functional.normalize(model.encode_text(tiny_clip.tokenizer([captions[i]])), dim=-1)
            assert float((a * b).sum()) == pytest.approx(float(batched[i]), abs=1e-5)
    # the caption matters: another caption gives another score
    other = clip_scores(embedder, images[:1], ["a completely different sentence about trains"])
    assert other[0] != pytest.approx(batched[0], abs=1e-6)


def test_threshold_and_top_fraction():
    keys = ["a", "b", "c", "d", "e"]
    scores = [0.30, 0.10, float("nan"), 0.25, 0.31]
    by_threshold = clip_rejects(keys, scores, min_score=0.26, top_fraction=None)
    assert set(by_threshold) == {"b", "c", "d"}
    assert by_threshold["b"].startswith("low_clip_score: 0.100 < 0.26")
    top = clip_rejects(keys, scores, min_score=None, top_fraction=0.4)  # ceil(0.4 * 5) = 2 kept
    assert set(keys) - set(top) == {"a", "e"}
    assert clip_rejects(keys, scores, None, None) == {}


def test_not_an_embedder_is_a_clear_error():
    with pytest.raises(TypeError, match="encode_image"):
        as_embedder(object())
