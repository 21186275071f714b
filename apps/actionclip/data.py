"""Labelled videos: a labels file (video,label[,split]) matched to files, turned into cached frame features.

Frame features come from apps.clip4clip's cache (same keys: video bytes, image-encoder weights,
frame sampling), so a video clip4clip has indexed is not encoded again here, and the other way
round. Unreadable videos are reported and skipped, never encoded as empty frames.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apps.actionclip.errors import ActionClipError
from apps.clip4clip.cache import FrameFeatures, Rejected, compute_frame_features
from apps.clip4clip.train import VideoBank
from apps.clip4clip.video import FrameSampling, find_videos


class LabelsFileError(ActionClipError):
    """A labels file that is missing, malformed, or names nothing usable."""


@dataclass(frozen=True)
class LabelledVideo:
    video_id: str
    label: str
    split: str


def read_labels_file(path: str | Path) -> list[LabelledVideo]:
    """Rows of a CSV with columns `video,label` and optionally `split` (header required)."""
    path = Path(path)
    if not path.is_file():
        raise LabelsFileError(
            f"labels file {path} does not exist: write a CSV with columns video,label[,split]"
        )
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if "video" not in fields or "label" not in fields:
                raise LabelsFileError(
                    f"labels file {path} has columns {fields or 'none'}: it needs a header with video,label[,split]"
                )
            rows = []
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
                video, label = Path(row["video"]).stem, " ".join(row["label"].split()).lower()
                if not video or not label:
                    raise LabelsFileError(
                        f"labels file {path}, line {line}: empty video or label; fill it or remove the line"
                    )
                rows.append(LabelledVideo(video, label, row.get("split", "")))
    except UnicodeDecodeError:
        raise LabelsFileError(f"labels file {path} is not UTF-8 text: is it a CSV?") from None
    if not rows:
        raise LabelsFileError(f"labels file {path} has a header but no rows")
    seen: dict[str, str] = {}
    for row in rows:
        if seen.setdefault(row.video_id, row.label) != row.label:
            raise LabelsFileError(
                f"labels file {path}: video {row.video_id!r} has two labels ({seen[row.video_id]!r}, {row.label!r})"
            )
    return rows


@dataclass(frozen=True)
class LabelledVideos:
    bank: VideoBank  # frame features of the readable videos
    labels: list[str]  # label of each bank row
    rejected: list[Rejected]
    missing: list[str]  # labelled video ids without a file
    sampling: FrameSampling


def select_rows(
    rows: list[LabelledVideo],
    split: str | None,
    classes: list[str] | None = None,
    exclude: list[str] | None = None,
    shots: int | None = None,
    seed: int = 0,
    source: str = "labels file",
) -> list[LabelledVideo]:
    """Rows of `split` (None: all), restricted to `classes`, without `exclude`, at most `shots` per label."""
    chosen = [r for r in rows if split is None or r.split == split]
    if not chosen:
        splits = sorted({r.split for r in rows if r.split})
        raise LabelsFileError(
            f"{source} has no video in split {split!r} (splits: {splits or 'none'}): pass --split all to use every row"
        )
    present = {r.label for r in chosen}
    for name, wanted in (("--classes", classes), ("--exclude", exclude)):
        unknown = [c for c in wanted or [] if c not in present]
        if unknown:
            raise LabelsFileError(
                f"{name}: {unknown[0]!r} is not a label of the selected videos (labels: {', '.join(sorted(present))})"
            )
    if classes:
        chosen = [r for r in chosen if r.label in classes]
    if exclude:
        chosen = [r for r in chosen if r.label not in exclude]
    if shots is not None:
        if shots < 1:
            raise LabelsFileError(f"--shots {shots}: give at least 1 video per label")
        by_label: dict[str, list[LabelledVideo]] = {}
        for row in chosen:
            by_label.setdefault(row.label, []).append(row)
        short = {label: len(v) for label, v in by_label.items() if len(v) < shots}
        if short:
            label, count = min(short.items(), key=lambda kv: kv[1])
            raise LabelsFileError(
                f"--shots {shots}: label {label!r} has only {count} videos; use --shots {count} or fewer"
            )
        rng = np.random.default_rng(seed)
        chosen = [v[i] for v in by_label.values() for i in sorted(rng.permutation(len(v))[:shots].tolist())]
    return chosen


def load_labelled_videos(
    videos_dir: str | Path,
    rows: list[LabelledVideo],
    clip,
    sampling: FrameSampling,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> LabelledVideos:
    """Frame features of the rows' videos (by file stem under `videos_dir`); unreadable ones are skipped."""
    by_stem = {p.stem: p for p in find_videos(videos_dir)}
    present = [r for r in rows if r.video_id in by_stem]
    missing = [r.video_id for r in rows if r.video_id not in by_stem]
    results = compute_frame_features(
        [by_stem[r.video_id] for r in present],
        clip.model,
        clip.preprocess,
        sampling,
        cache_dir,
        progress=progress,
    )
    return _collect(present, results, sampling, missing, videos_dir)


def load_video_files(paths: list[Path], clip, sampling: FrameSampling, cache_dir=None, progress=True):
    """(bank of the readable videos or None, rejected) for a list of video files (`classify`)."""
    results = compute_frame_features(
        paths, clip.model, clip.preprocess, sampling, cache_dir, progress=progress
    )
    ids = [str(p) for p, r in zip(paths, results) if isinstance(r, FrameFeatures)]
    items = [r for r in results if isinstance(r, FrameFeatures)]
    rejected = [r for r in results if isinstance(r, Rejected)]
    return (VideoBank.from_features(ids, items, sampling.max_frames) if items else None), rejected


def _collect(present, results, sampling, missing, videos_dir) -> LabelledVideos:
    ids, items, labels, rejected = [], [], [], []
    for row, result in zip(present, results):
        if isinstance(result, Rejected):
            rejected.append(result)
        else:
            ids.append(row.video_id)
            items.append(result)
            labels.append(row.label)
    if not items:
        raise LabelsFileError(
            f"no labelled video could be read from {videos_dir} ({len(missing)} missing, {len(rejected)} unreadable)"
        )
    return LabelledVideos(
        VideoBank.from_features(ids, items, sampling.max_frames), labels, rejected, missing, sampling
    )
