"""Read a video with PyAV into a few uniformly sampled RGB frames.

CLIP4Clip extracts frames at 1 fps and keeps up to 12, uniformly spread. We do the same in two
passes over the file so memory stays bounded whatever the length or resolution:

1. demux only (no decoding): collect the presentation times of the video packets. Times, not
   frame indices, so a variable-frame-rate video is sampled evenly in time;
2. decode (codec threads on) and keep only the chosen frames, each shrunk by swscale right away
   (a 4000x4000 frame becomes a few hundred pixels before it is ever an RGB array), then turned
   upright according to the stream's rotation metadata.

A file that gives no frame (zero bytes, text, audio only, corrupt beyond repair) raises
`VideoRejected` with a reason: it is never encoded as an all-zero mask (CLIP4Clip's NaN bug).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import numpy as np
from PIL import Image

from apps.clip4clip.errors import Clip4ClipError

# Extensions `index` looks at when walking a folder; anything else is not a video to us.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".ts",
        ".gif",
        ".3gp",
        ".ogv",
        ".flv",
        ".wmv",
    }
)


class VideoRejected(Exception):
    """A video that cannot give a single frame; `reason` says why in one line."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class FrameSampling:
    """How frames are taken from a video (CLIP4Clip: 1 fps, at most 12)."""

    max_frames: int = field(default=12, metadata={"help": "frames kept per video"})
    # pre-sample at this rate first; None keeps every frame as a candidate
    fps: float | None = field(
        default=1.0, metadata={"help": "pre-sample at this rate before uniform selection; 0 = every frame"}
    )
    # frames are shrunk so their shorter side is at most this, as early as possible
    short_side: int = field(
        default=224, metadata={"help": "shrink frames so their shorter side is at most this"}
    )

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise Clip4ClipError(f"max_frames={self.max_frames}: need at least 1 frame per video")
        if self.fps == 0:  # 0 on the command line: every frame
            object.__setattr__(self, "fps", None)
        if self.fps is not None and not self.fps > 0:
            raise Clip4ClipError(f"fps={self.fps}: give a positive rate, or None to use every frame")
        if self.short_side < 8:
            raise Clip4ClipError(f"short_side={self.short_side}: frames smaller than 8 px are useless")


@dataclass(frozen=True)
class SampledVideo:
    """Frames of one video, upright and shrunk, with their presentation times in seconds."""

    path: str
    frames: list[Image.Image]
    times: list[float]
    width: int  # displayed size (after rotation) of the original video
    height: int
    rotation: int  # counter-clockwise degrees applied to make frames upright
    duration: float


def _packet_times(path: Path) -> tuple[list[float | None], int, int, int]:
    """Presentation times of the video packets (demux only), with the stream's size."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise VideoRejected(path, f"cannot open as a video ({_short(err)})") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoRejected(path, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        times: list[float | None] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                times.append(float(packet.pts * packet.time_base) if packet.pts is not None else None)
        except av.error.FFmpegError:
            pass  # a truncated or damaged tail: sample from what could be read
        return times, width, height, stream.index


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]


def choose_times(times: list[float], sampling: FrameSampling) -> list[float]:
    """Target presentation times: optional pre-sampling at `fps`, then up to `max_frames` uniformly.

    `times` are the frames' presentation times in any order (decode order differs with B-frames).
    """
    ordered = sorted(set(times))
    if not ordered:
        return []
    candidates = ordered
    if sampling.fps is not None:
        step = 1.0 / sampling.fps
        start, end = ordered[0], ordered[-1]
        ticks = start + step * np.arange(int(math.floor((end - start) / step)) + 1)
        # The first frame shown at or after each tick: even in time for variable frame rates.
        positions = np.searchsorted(np.asarray(ordered), ticks - 1e-9, side="left")
        candidates = [ordered[p] for p in sorted(set(positions.tolist())) if p < len(ordered)]
    if len(candidates) <= sampling.max_frames:
        return candidates
    picks = np.linspace(0, len(candidates) - 1, sampling.max_frames).round().astype(int)
    return [candidates[p] for p in sorted(set(picks.tolist()))]


def _shrunk_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    scale = min(1.0, short_side / max(1, min(width, height)))
    # Even sizes keep swscale's chroma handling exact; never below 2 px.
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def read_video(path: str | Path, sampling: FrameSampling = FrameSampling()) -> SampledVideo:
    """Sample frames from the video at `path`; raises `VideoRejected` when none can be read."""
    path = Path(path)
    if not path.is_file():
        raise VideoRejected(path, "not a file")
    if path.stat().st_size == 0:
        raise VideoRejected(path, "empty file (0 bytes)")
    times, width, height, stream_index = _packet_times(path)
    if not times:
        raise VideoRejected(path, "the video stream has no packets")
    timed = all(t is not None for t in times)
    # Without timestamps (raw elementary streams) fall back to the frame's position in the stream.
    if timed:
        targets = choose_times([t for t in times if t is not None], sampling)
    else:
        targets = choose_times([float(i) for i in range(len(times))], replace(sampling, fps=None))

    frames: list[Image.Image] = []
    kept_times: list[float] = []
    rotation = 0
    decode_errors = 0
    target_index = 0
    frame_index = 0
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise VideoRejected(path, f"cannot open as a video ({_short(err)})") from None
    with container:
        stream = container.streams[stream_index]
        stream.thread_type = "AUTO"
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                decoded = []
                decode_errors += 1
            for frame in decoded:
                position = frame.time if timed and frame.pts is not None else float(frame_index)
                frame_index += 1
                # Keep the first frame shown at or after the next target time.
                if target_index >= len(targets) or position < targets[target_index] - 1e-6:
                    continue
                while target_index < len(targets) and position >= targets[target_index] - 1e-6:
                    target_index += 1
                small = frame.reformat(
                    *_shrunk_size(frame.width, frame.height, sampling.short_side), format="rgb24"
                )
                image = small.to_image()
                rotation = int(round(frame.rotation or 0)) % 360
                if rotation:
                    image = image.rotate(rotation, expand=True)
                frames.append(image)
                kept_times.append(float(position))
            if target_index >= len(targets):
                break
    if not frames:
        why = f"{decode_errors} packets failed to decode" if decode_errors else "no frame could be decoded"
        raise VideoRejected(path, f"no frame decoded ({why})")
    shown_w, shown_h = (height, width) if rotation in (90, 270) else (width, height)
    duration = (
        (max(t for t in times if t is not None) - min(t for t in times if t is not None)) if timed else 0.0
    )
    return SampledVideo(str(path), frames, kept_times, shown_w, shown_h, rotation, float(duration))


def find_videos(root: str | Path) -> list[Path]:
    """Every file under `root` (recursively) whose extension is a video extension, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise Clip4ClipError(f"video folder {root} does not exist or is not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
