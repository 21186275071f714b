"""Frame features: each video's sampled frames encoded once by the CLIP image encoder, then cached.

Cache key = sha256 of the video file's bytes + a fingerprint of the image encoder's weights + the
frame sampling. Keying by content (not path) means a renamed or copied video is not re-encoded,
and an edited one is; keying by weights (not by name) means two random initialisations of the
same config, or two checkpoints of one run, never share entries. A video that yields no frame is
cached as a reject with its reason, so re-runs report it again without decoding it again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from apps.clip4clip.errors import Clip4ClipError
from apps.clip4clip.video import FrameSampling, SampledVideo, VideoRejected, read_video

THUMB_SIDE = 96  # thumbnails kept for result pages, shorter side in pixels


@dataclass(frozen=True)
class FrameFeatures:
    """One video's CLIP frame embeddings (raw, not normalised) and what a result page shows."""

    path: str
    sha256: str
    features: np.ndarray  # [frames, embed_dim] float32
    times: np.ndarray  # [frames] seconds
    thumbnails: tuple[bytes, ...]  # one small JPEG per frame
    width: int
    height: int
    rotation: int
    duration: float


@dataclass(frozen=True)
class Rejected:
    path: str
    sha256: str
    reason: str


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def visual_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the image encoder's weights: the identity frame features depend on.

    Remembered on the module, since hashing a large model's weights takes about a second.
    """
    cached = getattr(model, "_clip4clip_visual_fingerprint", None)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, tensor in sorted(model.visual.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    fingerprint = digest.hexdigest()
    model._clip4clip_visual_fingerprint = fingerprint
    return fingerprint


def sampling_key(sampling: FrameSampling) -> str:
    return hashlib.sha256(json.dumps(asdict(sampling), sort_keys=True).encode()).hexdigest()[:12]


def _jpeg(image: Image.Image) -> bytes:
    thumb = image.copy()
    scale = THUMB_SIDE / max(1, min(thumb.size))
    if scale < 1:
        thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))))
    buffer = io.BytesIO()
    thumb.convert("RGB").save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FrameFeatureCache:
    """Directory of `.npz` entries keyed by (video sha256, encoder fingerprint, sampling)."""

    def __init__(self, root: str | Path, fingerprint: str, sampling: FrameSampling):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.sampling = sampling
        self._folder = self.root / fingerprint[:16] / sampling_key(sampling)

    def _entry(self, sha: str) -> Path:
        return self._folder / sha[:2] / f"{sha}.npz"

    def _reject_entry(self, sha: str) -> Path:
        # Rejects do not depend on the encoder: keep them beside the encoder folders.
        return self.root / "rejects" / sampling_key(self.sampling) / f"{sha}.json"

    def get(self, path: str | Path, sha: str) -> FrameFeatures | Rejected | None:
        reject = self._reject_entry(sha)
        if reject.is_file():
            return Rejected(str(path), sha, json.loads(reject.read_text())["reason"])
        entry = self._entry(sha)
        if not entry.is_file():
            return None
        try:
            with np.load(entry, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                offsets = data["thumb_offsets"]
                blob = data["thumb_bytes"].tobytes()
                thumbs = tuple(blob[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1))
                return FrameFeatures(
                    str(path),
                    sha,
                    data["features"],
                    data["times"],
                    thumbs,
                    meta["width"],
                    meta["height"],
                    meta["rotation"],
                    meta["duration"],
                )
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is re-computed, not trusted

    def put(self, item: FrameFeatures | Rejected) -> None:
        if isinstance(item, Rejected):
            payload = json.dumps({"path": item.path, "reason": item.reason}).encode()
            _atomic_write(self._reject_entry(item.sha256), lambda h: h.write(payload))
            return
        offsets = np.cumsum([0] + [len(t) for t in item.thumbnails]).astype(np.int64)
        meta = {
            "width": item.width,
            "height": item.height,
            "rotation": item.rotation,
            "duration": item.duration,
        }
        arrays = {
            "features": item.features.astype(np.float32),
            "times": item.times.astype(np.float64),
            "thumb_bytes": np.frombuffer(b"".join(item.thumbnails), dtype=np.uint8),
            "thumb_offsets": offsets,
            "meta": np.array(json.dumps(meta)),
        }
        _atomic_write(self._entry(item.sha256), lambda h: np.savez(h, **arrays))


@torch.no_grad()
def encode_images(
    model: torch.nn.Module, preprocess, images: list[Image.Image], batch_size: int = 64
) -> np.ndarray:
    """Raw CLIP image embeddings [n, embed_dim] of PIL images."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([preprocess(im.convert("RGB")) for im in images[start : start + batch_size]])
        out.append(model.encode_image(batch.to(device)).float().cpu())
    features = torch.cat(out).numpy()
    if not np.isfinite(features).all():
        raise Clip4ClipError("the image encoder returned non-finite features: is the checkpoint damaged?")
    return features


def _to_features(video: SampledVideo, sha: str, features: np.ndarray) -> FrameFeatures:
    return FrameFeatures(
        video.path,
        sha,
        features,
        np.asarray(video.times, dtype=np.float64),
        tuple(_jpeg(f) for f in video.frames),
        video.width,
        video.height,
        video.rotation,
        video.duration,
    )


def compute_frame_features(
    paths: Iterable[str | Path],
    model: torch.nn.Module,
    preprocess,
    sampling: FrameSampling,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> list[FrameFeatures | Rejected]:
    """Frame features of every video, in the order given: from the cache, or decoded and encoded.

    Frames of several videos are encoded together so the encoder sees full batches.
    """
    paths = [Path(p) for p in paths]
    cache = FrameFeatureCache(cache_dir, visual_fingerprint(model), sampling) if cache_dir else None
    results: list[FrameFeatures | Rejected | None] = [None] * len(paths)
    pending: list[tuple[int, SampledVideo, str]] = []

    def flush() -> None:
        images = [im for _, video, _ in pending for im in video.frames]
        features = encode_images(model, preprocess, images, batch_size)
        start = 0
        for index, video, sha in pending:
            item = _to_features(video, sha, features[start : start + len(video.frames)])
            start += len(video.frames)
            results[index] = item
            if cache:
                cache.put(item)
        pending.clear()

    for index, path in enumerate(tqdm(paths, desc="frame features", unit="video", disable=not progress)):
        try:
            sha = file_sha256(path)
        except OSError as err:
            results[index] = Rejected(str(path), "", f"cannot read file ({err.strerror or err})")
            continue
        cached = cache.get(path, sha) if cache else None
        if cached is not None:
            results[index] = cached
            continue
        try:
            video = read_video(path, sampling)
        except VideoRejected as rejected:
            results[index] = Rejected(str(path), sha, rejected.reason)
            if cache:
                cache.put(results[index])
            continue
        except Exception as err:  # noqa: BLE001 - one unforeseen decoder failure must not stop a run of thousands
            # Not cached: it may be transient (memory, a codec bug fixed by an upgrade).
            results[index] = Rejected(
                str(path), sha, f"decoder failed: {type(err).__name__}: {str(err)[:120]}"
            )
            continue
        pending.append((index, video, sha))
        if sum(len(v.frames) for _, v, _ in pending) >= batch_size:
            flush()
    if pending:
        flush()
    return results  # type: ignore[return-value]
