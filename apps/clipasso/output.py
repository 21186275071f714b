"""Writing a sketch's files: DIR/<stem>.svg, .png, _progress.gif and .json, all or nothing.

Everything is encoded in memory first, written under temporary names in the output directory, then
renamed into place; a failure removes the temporary files, so a reader never sees a half-written set.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from apps.clipasso.svg import Sketch, sketch_to_svg
from common.errors import UserError


class OutputError(UserError, OSError):
    """The output directory cannot be created or written."""


def check_writable(out_dir: Path) -> None:
    """Fail before any work when `out_dir` cannot hold our files."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"output directory {out_dir} is not writable ({exc.strerror or exc}); pass --out DIR"
        ) from None


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def gif_bytes(frames: list[np.ndarray], max_frames: int, frame_ms: int = 120) -> bytes:
    """An animated GIF of at most `max_frames` frames, evenly picked, holding the last one longer."""
    if len(frames) > max_frames:
        frames = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, max_frames).round()]
    images = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=64) for f in frames]
    durations = [frame_ms] * (len(images) - 1) + [frame_ms * 10]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buffer.getvalue()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_files(out_dir: Path, files: dict[str, bytes]) -> dict[str, Path]:
    """Write name -> bytes atomically as a set: temporary files first, then renames."""
    check_writable(out_dir)
    staged: list[tuple[str, Path]] = []
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            staged.append((name, Path(tmp)))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        written = {}
        for name, tmp in staged:
            os.replace(tmp, out_dir / name)
            written[name] = out_dir / name
        return written
    except OSError as exc:
        for _, tmp in staged:
            tmp.unlink(missing_ok=True)
        raise OutputError(f"could not write to {out_dir}: {exc}") from None


def sketch_files(
    stem: str,
    sketch: Sketch,
    image: np.ndarray,
    frames: list[np.ndarray],
    report: dict[str, Any],
    gif_frames: int,
) -> dict[str, bytes]:
    """The four files of one sketch, encoded."""
    return {
        f"{stem}.svg": sketch_to_svg(sketch).encode("utf-8"),
        f"{stem}.png": png_bytes(image),
        f"{stem}_progress.gif": gif_bytes(frames or [image], gif_frames),
        f"{stem}.json": (json.dumps(report, indent=2) + "\n").encode("utf-8"),
    }
