"""Similarity heads, frame-feature cache and training: the pieces under `train` and `index`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from apps.clip4clip.cache import (
    FrameFeatureCache,
    FrameFeatures,
    Rejected,
    compute_frame_features,
    visual_fingerprint,
)
from apps.clip4clip.heads import HEAD_NAMES, HeadConfig, build_head, dual_softmax
from apps.clip4clip.video import FrameSampling
from models import create_model
from testbed.videos import SynthConfig, generate_synthetic_set


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    model, _, preprocess, tokenizer = create_model("clip-tiny")
    return model.eval(), preprocess, tokenizer


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_heads_ignore_padding_and_refuse_empty_videos(name: str, tiny_clip) -> None:
    torch.manual_seed(1)
    head = build_head(HeadConfig(name, max_frames=6, layers=2), 64, tiny_clip[0]).eval()
    frames = torch.randn(3, 6, 64)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    text = torch.randn(4, 64)
    with torch.no_grad():
        scores = head.similarity(text, frames, mask)
        noisy = frames.clone()
        noisy[~mask] = torch.randn(int((~mask).sum()), 64) * 100  # whatever sits in padding must not count
        assert torch.allclose(head.similarity(text, noisy, mask), scores, atol=1e-4)
    assert scores.shape == (4, 3) and torch.isfinite(scores).all()
    mask[2] = False
    with pytest.raises(ValueError, match="no frame"):
        head.similarity(text, frames, mask)


def test_meanp_is_order_blind_and_seqtransf_is_not(tiny_clip) -> None:
    torch.manual_seed(2)
    frames = torch.randn(1, 6, 64)
    reversed_frames = frames.flip(1)
    mask = torch.ones(1, 6, dtype=torch.bool)
    meanp = build_head(HeadConfig("meanP", 6), 64)
    seq = build_head(HeadConfig("seqTransf", 6, layers=2), 64, tiny_clip[0]).eval()
    with torch.no_grad():
        torch.nn.init.normal_(seq.frame_position.weight, std=1.0)
        assert torch.allclose(
            meanp.video_embedding(frames, mask), meanp.video_embedding(reversed_frames, mask), atol=1e-6
        )
        assert not torch.allclose(
            seq.video_embedding(frames, mask), seq.video_embedding(reversed_frames, mask), atol=1e-3
        )


def test_seqtransf_starts_from_the_clip_text_blocks(tiny_clip) -> None:
    model = tiny_clip[0]
    head = build_head(HeadConfig("seqTransf", 12, layers=2), 64, model)
    assert head.initialised_from_text  # clip-tiny: text width 64 == embed_dim 64
    for key, value in head.transformer.state_dict().items():
        assert torch.equal(value, model.transformer.state_dict()[key])
    assert not build_head(HeadConfig("seqTransf", 12, layers=2), 32, model).initialised_from_text


def test_dual_softmax_keeps_shape_and_damps_hub_videos() -> None:
    # Video 1 is a hub: every text scores it high. Text 0's raw best is the hub (0.82 > 0.80), but no
    # other text likes video 0, so the prior over texts moves text 0 to its own video.
    similarity = torch.tensor([[0.80, 0.82], [0.10, 0.85], [0.20, 0.80]])
    reranked = dual_softmax(similarity, temperature=10)
    assert reranked.shape == similarity.shape
    assert similarity[0].argmax() == 1 and reranked[0].argmax() == 0
    assert reranked[1].argmax() == similarity[1].argmax() == 1  # the hub's best text keeps it
    # Damping: each score is scaled by its video's softmax over texts; the hub, liked by all three,
    # keeps at most about a third of any score, the other video nearly all of its best text's score.
    kept = reranked / similarity
    assert (kept <= 1).all() and kept[:, 1].max() < 0.5 < 0.99 < kept[0, 0]
    assert torch.allclose(kept.sum(0), torch.ones(2))  # a softmax over the texts of each video
    # A cold temperature flattens the prior to 1/texts: plain similarity, scaled.
    assert torch.allclose(dual_softmax(similarity, temperature=1e-6), similarity / 3, atol=1e-6)


def test_frame_feature_cache_is_keyed_by_content_and_weights(tmp_path: Path, tiny_clip) -> None:
    model, preprocess, _ = tiny_clip
    made = generate_synthetic_set(tmp_path / "set", SynthConfig(n_train=2, n_test_pairs=0, size=32))
    video = made.videos_dir / "train00000a.mp4"
    broken = made.videos_dir / "broken.mp4"
    broken.write_text("no video here")
    sampling = FrameSampling(max_frames=4, fps=None)
    cache_dir = tmp_path / "cache"
    first, reject = compute_frame_features(
        [video, broken], model, preprocess, sampling, cache_dir, progress=False
    )
    assert (
        isinstance(first, FrameFeatures) and isinstance(reject, Rejected) and "cannot open" in reject.reason
    )
    assert (
        first.features.shape == (4, 64) and np.isfinite(first.features).all() and len(first.thumbnails) == 4
    )

    copy = tmp_path / "renamed.mp4"
    copy.write_bytes(video.read_bytes())
    cache = FrameFeatureCache(cache_dir, visual_fingerprint(model), sampling)
    hit = cache.get(copy, first.sha256)  # same bytes under another name: served from the cache
    assert (
        hit is not None
        and np.array_equal(hit.features, first.features)
        and hit.thumbnails == first.thumbnails
    )
    assert isinstance(cache.get(broken, reject.sha256), Rejected)

    torch.manual_seed(5)
    other, *_ = create_model("clip-tiny")
    assert visual_fingerprint(other) != visual_fingerprint(model)
    assert FrameFeatureCache(cache_dir, visual_fingerprint(other), sampling).get(video, first.sha256) is None
