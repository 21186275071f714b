"""Retrieval metrics: R@1/5/10, median and mean rank, text->video and video->text.

`similarity` is [texts, videos]; `text_video[i]` is the video index of caption i, so a video may
have several captions (MSR-VTT has 20).

Tie rule (the default is "pessimistic"): a correct item ranks after every wrong item whose
score equals its own. rank = 1 + #{wrong items with score >= correct score}. A model that gives
every video the same score therefore ranks last, not first, so a degenerate model cannot look
perfect (CLIP4Clip's argsort ranks depended on sort order among ties). "optimistic" counts only
strictly higher wrong items; "average" is the mean of the two, the expected rank under a
random order of the tied items.

Video->text: a video's rank is that of its best-ranked caption among all captions, and only
captions of other videos count as wrong items.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from apps.clip4clip.errors import Clip4ClipError

TIE_RULES = ("pessimistic", "optimistic", "average")


@dataclass(frozen=True)
class RetrievalMetrics:
    r1: float
    r5: float
    r10: float
    median_rank: float
    mean_rank: float
    count: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _summary(ranks: np.ndarray) -> RetrievalMetrics:
    return RetrievalMetrics(
        r1=float(np.mean(ranks <= 1) * 100),
        r5=float(np.mean(ranks <= 5) * 100),
        r10=float(np.mean(ranks <= 10) * 100),
        median_rank=float(np.median(ranks)),
        mean_rank=float(np.mean(ranks)),
        count=int(len(ranks)),
    )


def _tie_ranks(higher: np.ndarray, equal: np.ndarray, ties: str) -> np.ndarray:
    if ties == "pessimistic":
        return 1 + higher + equal
    if ties == "optimistic":
        return 1 + higher
    if ties == "average":
        return 1 + higher + equal / 2.0
    raise Clip4ClipError(f"unknown tie rule {ties!r}: use one of {', '.join(TIE_RULES)}")


def _check(similarity: np.ndarray, text_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    similarity = np.asarray(similarity, dtype=np.float64)
    text_video = np.asarray(text_video, dtype=np.int64)
    if similarity.ndim != 2 or similarity.shape[0] != len(text_video):
        raise Clip4ClipError(
            f"similarity {similarity.shape} must be [texts, videos] with {len(text_video)} texts"
        )
    if not np.isfinite(similarity).all():
        raise Clip4ClipError("similarity has NaN or infinite scores: refusing to rank them")
    if len(text_video) and (text_video.min() < 0 or text_video.max() >= similarity.shape[1]):
        raise Clip4ClipError("text_video holds a video index outside the similarity matrix")
    return similarity, text_video


def text_to_video_ranks(
    similarity: np.ndarray, text_video: np.ndarray, ties: str = "pessimistic"
) -> np.ndarray:
    """1-based rank of each caption's video among all videos."""
    similarity, text_video = _check(similarity, text_video)
    correct = similarity[np.arange(len(text_video)), text_video][:, None]
    higher = (similarity > correct).sum(axis=1)
    equal = (similarity == correct).sum(axis=1) - 1  # the correct video itself is not a wrong tie
    return _tie_ranks(higher, equal, ties)


def video_to_text_ranks(
    similarity: np.ndarray, text_video: np.ndarray, ties: str = "pessimistic"
) -> np.ndarray:
    """1-based rank of each video's best caption among all captions (videos without captions skipped)."""
    similarity, text_video = _check(similarity, text_video)
    n_videos = similarity.shape[1]
    owns = np.zeros((len(text_video), n_videos), dtype=bool)
    owns[np.arange(len(text_video)), text_video] = True
    has_caption = owns.any(axis=0)
    best = np.where(owns, similarity, -np.inf).max(axis=0)  # [videos]
    wrong = ~owns
    higher = ((similarity > best[None, :]) & wrong).sum(axis=0)
    equal = ((similarity == best[None, :]) & wrong).sum(axis=0)
    return _tie_ranks(higher, equal, ties)[has_caption]


def retrieval_metrics(
    similarity: np.ndarray, text_video: np.ndarray, ties: str = "pessimistic"
) -> dict[str, RetrievalMetrics]:
    """{"text_to_video": ..., "video_to_text": ...} for a [texts, videos] similarity matrix."""
    return {
        "text_to_video": _summary(text_to_video_ranks(similarity, text_video, ties)),
        "video_to_text": _summary(video_to_text_ranks(similarity, text_video, ties)),
    }


def format_table(metrics: dict[str, RetrievalMetrics], title: str = "") -> str:
    """Markdown table, one row per direction."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| direction | R@1 | R@5 | R@10 | MdR | MnR | n |", "|---|---|---|---|---|---|---|"]
    for direction, m in metrics.items():
        lines.append(
            f"| {direction.replace('_', ' ')} | {m.r1:.1f} | {m.r5:.1f} | {m.r10:.1f} | "
            f"{m.median_rank:.1f} | {m.mean_rank:.1f} | {m.count} |"
        )
    return "\n".join(lines)
