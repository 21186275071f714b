"""PyAV frame sampling on real encoded files, including the hostile inputs of issue 8."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from apps.clip4clip.errors import Clip4ClipError
from apps.clip4clip.video import FrameSampling, VideoRejected, choose_times, find_videos, read_video
from testbed.videos import write_mp4


def _frames(n: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Frames whose brightness encodes their index, so a test can tell which ones were kept."""
    return [np.full((height, width, 3), 10 + 20 * (i % 12), dtype=np.uint8) for i in range(n)]


def test_uniform_sampling_of_a_constant_rate_video(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "clip.mp4", _frames(40), fps=10)  # 4 s
    video = read_video(path, FrameSampling(max_frames=8, fps=None, short_side=32))
    assert len(video.frames) == 8
    assert video.times[0] == pytest.approx(0.0) and video.times[-1] == pytest.approx(3.9)
    gaps = np.diff(video.times)
    assert gaps.min() > 0.4 and gaps.max() < 0.7  # evenly spread over the 40 frames
    assert min(video.frames[0].size) <= 32
    # 1 fps pre-sampling: one frame per second, 4 candidates, all kept.
    assert read_video(path, FrameSampling(max_frames=12, fps=1.0)).times == pytest.approx([0, 1, 2, 3])


def test_variable_frame_rate_is_sampled_evenly_in_time(tmp_path: Path) -> None:
    """100 frames in the first second, then one per second: index-uniform sampling would crowd the start."""
    times_ms = list(range(0, 1000, 10)) + [1000 + 1000 * k for k in range(9)]
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=100)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(_frames(1)[0] + i % 2, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    video = read_video(path, FrameSampling(max_frames=10, fps=1.0))
    assert len(video.frames) == 10
    assert video.times[0] == pytest.approx(0.0, abs=0.02) and video.times[-1] == pytest.approx(9.0, abs=0.02)
    assert np.diff(video.times).max() <= 1.01
    assert sum(t < 1.0 for t in video.times) == 1


def test_choose_times_never_exceeds_max_frames_and_keeps_order() -> None:
    rng = np.random.default_rng(0)
    times = sorted(rng.uniform(0, 100, size=500).tolist())
    chosen = choose_times(times, FrameSampling(max_frames=12, fps=2.0))
    assert len(chosen) == 12 and chosen == sorted(chosen) and set(chosen) <= set(times)


def test_rotation_metadata_is_applied(tmp_path: Path) -> None:
    """A 64x32 frame with a bright left edge, shown rotated 90 degrees counter-clockwise."""
    image = np.zeros((32, 64, 3), np.uint8)
    image[:, :16] = 255
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    video = read_video(path, FrameSampling(max_frames=2, fps=None))
    assert video.rotation == 90
    assert video.frames[0].size == (32, 64) and (video.width, video.height) == (32, 64)
    pixels = np.asarray(video.frames[0].convert("L"), dtype=float)
    assert pixels[-12:].mean() > 200 and pixels[:40].mean() < 40  # the left edge is now at the bottom


def test_one_frame_video(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "single.mp4", _frames(1), fps=25)
    video = read_video(path, FrameSampling(max_frames=12, fps=1.0))
    assert len(video.frames) == 1 and video.times == [0.0]


def test_huge_and_tiny_resolutions_are_shrunk_early(tmp_path: Path) -> None:
    huge = write_mp4(tmp_path / "huge.mp4", [np.full((4000, 4000, 3), 128, np.uint8)] * 2, fps=2)
    video = read_video(huge, FrameSampling(max_frames=4, fps=None, short_side=224))
    assert [f.size for f in video.frames] == [(224, 224)] * 2
    assert (video.width, video.height) == (4000, 4000)
    tiny = write_mp4(tmp_path / "tiny.mp4", [np.full((2, 2, 3), 200, np.uint8)] * 3, fps=3)
    assert len(read_video(tiny, FrameSampling(max_frames=4, fps=None)).frames) == 3


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for k in range(10):
            samples = (np.sin(np.arange(1024) / 5.0 + k) * 0.3).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("kind", ["zero_bytes", "text", "audio_only", "corrupt", "truncated"])
def test_unreadable_files_are_rejected_with_a_reason(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.mp4"
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is a text file, not a video\n" * 20)
    elif kind == "audio_only":
        _audio_only(path)
    else:
        good = write_mp4(tmp_path / "good.mp4", _frames(30), fps=10).read_bytes()
        rng = np.random.default_rng(1)
        # corrupt: the container header survives, every byte after it is noise; truncated: header only.
        body = (
            rng.integers(0, 256, size=len(good) - 64, dtype=np.uint8).tobytes() if kind == "corrupt" else b""
        )
        path.write_bytes(good[:64] + body)
    with pytest.raises(VideoRejected) as raised:
        read_video(path)
    reason = raised.value.reason
    assert reason and "\n" not in reason
    expected = {"zero_bytes": "empty", "text": "cannot open", "audio_only": "no video stream"}
    if kind in expected:
        assert expected[kind] in reason


def test_find_videos_is_recursive_and_checks_the_folder(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.mp4", "a/b/y.MKV", "a/notes.txt", "z.gif"):
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_videos(tmp_path)] == [
        "a/b/y.MKV",
        "a/x.mp4",
        "z.gif",
    ]
    with pytest.raises(Clip4ClipError, match="does not exist"):
        find_videos(tmp_path / "missing")
