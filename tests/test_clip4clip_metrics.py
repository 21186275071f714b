"""Retrieval metrics against a brute-force sort, on random similarity matrices full of ties."""

from __future__ import annotations

import numpy as np
import pytest

from apps.clip4clip.metrics import retrieval_metrics, text_to_video_ranks, video_to_text_ranks


def _brute_rank(scores: np.ndarray, is_correct: np.ndarray, ties: str) -> float:
    """Sort every candidate; ties put correct items last (pessimistic) or first (optimistic)."""

    def first_correct(correct_last: bool) -> int:
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], bool(is_correct[i]) == correct_last))
        return next(pos for pos, i in enumerate(order) if is_correct[i]) + 1

    if ties == "pessimistic":
        return first_correct(correct_last=True)
    if ties == "optimistic":
        return first_correct(correct_last=False)
    return (first_correct(True) + first_correct(False)) / 2


def _brute_metrics(
    similarity: np.ndarray, text_video: np.ndarray, ties: str
) -> tuple[np.ndarray, np.ndarray]:
    n_texts, n_videos = similarity.shape
    t2v = [_brute_rank(similarity[i], np.arange(n_videos) == text_video[i], ties) for i in range(n_texts)]
    v2t = [
        _brute_rank(similarity[:, j], text_video == j, ties)
        for j in range(n_videos)
        if (text_video == j).any()
    ]
    return np.array(t2v, dtype=float), np.array(v2t, dtype=float)


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic", "average"])
@pytest.mark.parametrize("seed", range(6))
def test_ranks_match_brute_force_with_ties(seed: int, ties: str) -> None:
    rng = np.random.default_rng(seed)
    n_videos = int(rng.integers(3, 25))
    captions_per_video = rng.integers(0, 4, size=n_videos)  # some videos have no caption, some several
    captions_per_video[0] = max(1, captions_per_video[0])
    text_video = np.repeat(np.arange(n_videos), captions_per_video)
    rng.shuffle(text_video)
    # Few distinct values: most rows hold ties, including ties with the correct item.
    similarity = rng.integers(0, 4, size=(len(text_video), n_videos)).astype(np.float32) / 4

    t2v, v2t = _brute_metrics(similarity, text_video, ties)
    np.testing.assert_array_equal(text_to_video_ranks(similarity, text_video, ties), t2v)
    np.testing.assert_array_equal(video_to_text_ranks(similarity, text_video, ties), v2t)

    metrics = retrieval_metrics(similarity, text_video, ties)
    for direction, ranks in (("text_to_video", t2v), ("video_to_text", v2t)):
        m = metrics[direction]
        assert m.r1 == pytest.approx(np.mean(ranks <= 1) * 100)
        assert m.r5 == pytest.approx(np.mean(ranks <= 5) * 100)
        assert m.r10 == pytest.approx(np.mean(ranks <= 10) * 100)
        assert m.median_rank == pytest.approx(np.median(ranks))
        assert m.mean_rank == pytest.approx(np.mean(ranks))
        assert m.count == len(ranks)


def test_constant_scores_rank_last_not_first() -> None:
    """A degenerate model (all scores equal) must not look perfect: the original's argsort bug."""
    similarity = np.zeros((10, 10))
    metrics = retrieval_metrics(similarity, np.arange(10))
    assert metrics["text_to_video"].r1 == 0.0
    assert metrics["text_to_video"].median_rank == 10
    assert retrieval_metrics(similarity, np.arange(10), ties="average")["text_to_video"].mean_rank == 5.5


def test_perfect_diagonal_with_several_captions() -> None:
    text_video = np.array([0, 0, 1, 2, 2, 2])
    similarity = np.full((6, 3), 0.1)
    similarity[np.arange(6), text_video] = 0.9
    metrics = retrieval_metrics(similarity, text_video)
    assert metrics["text_to_video"].r1 == 100.0 and metrics["video_to_text"].r1 == 100.0
    assert metrics["video_to_text"].count == 3


def test_nan_scores_are_refused() -> None:
    similarity = np.eye(3)
    similarity[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(similarity, np.arange(3))
