"""Index a folder of videos: one embedding per readable video, its metadata, and a faiss index.

An index directory holds:
- `index.json`: the CLIP (model, checkpoint, image-encoder fingerprint, width), the head, the frame
  sampling and the faiss index type: everything `search` needs to check it embeds queries alike;
- `videos.parquet`: one row per video (path, sha256, size, duration, frame times, JPEG thumbnails);
- `embeddings.npy` (normalised video embeddings) and `frames.npy`/`mask.npy` (frame features, for
  the tightTransf cross-encoder and for re-embedding with another head);
- `faiss.index`: exact inner product (IndexFlatIP) for small collections, IVF for large ones;
- `rejects.json`: every file that could not be indexed, with the reason; `head.pt` when a trained
  head was used (copied, so the index stands alone).

Re-running on the same folder keeps the rows of unchanged files (same path and sha256) and
embeds only new or changed ones; files that disappeared are dropped. A re-index writes the new
index beside the old one (`.NAME.staging`) and swaps it in when complete: a killed re-index leaves
the old index whole. One writer at a time (an output lock on the folder).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from apps.clip4clip.cache import (
    FrameFeatures,
    Rejected,
    compute_frame_features,
    file_sha256,
    visual_fingerprint,
)
from apps.clip4clip.errors import Clip4ClipError
from apps.clip4clip.heads import HeadConfig, SimilarityHead, build_head
from apps.clip4clip.train import VideoBank, load_head, resolve_head_checkpoint
from apps.clip4clip.video import FrameSampling, find_videos
from common.atomic import OUTPUT_LOCK, atomic_path, atomic_write_json, output_lock, replace_directory
from common.errors import UserError

INDEX_FORMAT = "clip4clip-index/1"
# Below this many vectors exact search is fast enough: at 20,000 x 512 it took 35-64 ms per single query
# (load 6-9) and 82 ms (load 15) on 2 shared cores (bench/video_search.py --n 19999; docs/benchmarks.md,
# "Video search and CLIP4Clip heads").
FLAT_LIMIT = 20_000

VIDEO_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("n_frames", pa.int32()),
        ("duration", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("rotation", pa.int32()),
        ("times", pa.list_(pa.float64())),
        ("thumbnails", pa.list_(pa.binary())),
    ]
)


class VideoIndexError(UserError, RuntimeError):
    """An index that cannot be used as asked; the message names the index and the fix."""


@dataclass(frozen=True)
class IndexOptions:
    sampling: FrameSampling = field(default_factory=FrameSampling)
    head: str = "meanP"  # used when no head checkpoint is given (meanP has no weights)
    head_checkpoint: Path | None = None
    cache_dir: Path | None = None  # default: INDEX_DIR/frame_cache
    batch_size: int = 64
    faiss_type: str | None = None  # faiss factory string ("Flat", "IVF1024,Flat", "HNSW32"); None: by size


@dataclass(frozen=True)
class IndexReport:
    index_dir: Path
    added: list[str]
    unchanged: list[str]
    removed: list[str]
    rejected: list[Rejected]
    total: int
    faiss_type: str


def clip_record(clip) -> dict:
    """What identifies the CLIP that made the embeddings (stored in index.json, checked by search)."""
    return {
        "model_name": clip.model_name,
        "identity": clip.identity,
        "checkpoint": clip.path if clip.path and Path(clip.path).is_file() else None,
        "visual_fingerprint": visual_fingerprint(clip.model),
        "embed_dim": clip.embed_dim,
    }


def describe_clip(record: dict) -> str:
    return f"{record['model_name']} ({record['identity']}, width {record['embed_dim']})"


def check_same_clip(index_dir: Path, recorded: dict, clip) -> None:
    """Refuse a CLIP whose embeddings are not comparable with the index's, naming both."""
    current = clip_record(clip)
    if recorded["embed_dim"] != current["embed_dim"]:
        raise VideoIndexError(
            f"index {index_dir} was built with {describe_clip(recorded)} but the CLIP given is "
            f"{describe_clip(current)}: their embeddings have different widths. Search with the index's "
            "checkpoint (omit --checkpoint/--model) or build a new index with this one"
        )
    if recorded["visual_fingerprint"] != current["visual_fingerprint"]:
        raise VideoIndexError(
            f"index {index_dir} was built with {describe_clip(recorded)} but the CLIP given is "
            f"{describe_clip(current)}: same width, different image-encoder weights, so scores would be "
            "meaningless. Use the index's checkpoint or re-index into a new folder"
        )


def choose_faiss_type(n: int) -> str:
    """Exact search while it is cheap; an inverted file (IVF) beyond FLAT_LIMIT vectors."""
    if n < FLAT_LIMIT:
        return "Flat"
    return f"IVF{max(16, int(math.sqrt(n)))},Flat"


def build_faiss_index(
    embeddings: np.ndarray, kind: str | None = None, nprobe: int | None = None, seed: int = 0
):
    """A trained faiss index with inner-product metric over `embeddings` (rows L2-normalised)."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = embeddings.shape
    kind = kind or choose_faiss_type(n)
    try:
        if kind.startswith("HNSW"):
            index = faiss.IndexHNSWFlat(dim, int(kind[4:] or 32), faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            # k-means on a sample is enough to place the lists: 64 points per list, as faiss recommends.
            nlist = faiss.extract_index_ivf(index).nlist
            if n < nlist:
                raise Clip4ClipError(f"faiss index {kind!r} has {nlist} lists but only {n} videos: use Flat")
            sample = np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False)
            index.train(embeddings[sample])
    except RuntimeError as err:  # faiss reports a bad factory string as a C++ RuntimeError
        raise Clip4ClipError(
            f"faiss index type {kind!r} not understood ({str(err).splitlines()[0][:100]}): "
            "use Flat, IVF<lists>,Flat or HNSW<links>"
        ) from None
    index.add(embeddings)
    if kind.startswith("IVF"):
        ivf = faiss.extract_index_ivf(index)
        # Scan about 1/16 of the lists by default: recall against exact search in docs/benchmarks.md,
        # "Video search and CLIP4Clip heads".
        ivf.nprobe = nprobe or max(16, ivf.nlist // 16)
    return index


def _head_for(options: IndexOptions, clip) -> tuple[SimilarityHead, dict | None]:
    if options.head_checkpoint is not None:
        head, sampling, state = load_head(options.head_checkpoint, clip)
        if sampling.max_frames != options.sampling.max_frames:
            raise Clip4ClipError(
                f"head {options.head_checkpoint} was trained with max_frames={sampling.max_frames}; "
                f"index with --max-frames {sampling.max_frames}"
            )
        return head, state
    if options.head not in ("meanP",):
        raise Clip4ClipError(
            f"--head {options.head} has weights to learn: pass --head-checkpoint from `train`, or use meanP"
        )
    return build_head(HeadConfig("meanP", options.sampling.max_frames), clip.embed_dim), None


def _read_existing(out: Path) -> tuple[dict | None, dict[str, int], pa.Table | None]:
    meta_path = out / "index.json"
    if not meta_path.is_file():
        return None, {}, None
    meta = json.loads(meta_path.read_text())
    table = pq.read_table(out / "videos.parquet")
    return meta, {p: i for i, p in enumerate(table.column("path").to_pylist())}, table


def build_index(
    video_dir: str | Path,
    out_dir: str | Path,
    clip,
    options: IndexOptions = IndexOptions(),
    progress: bool = True,
) -> IndexReport:
    """Embed every readable video under `video_dir` into the index at `out_dir` (see module doc)."""
    video_dir, out = Path(video_dir), Path(out_dir)
    paths = find_videos(video_dir)
    with output_lock(out, "clip4clip index") as lock:
        return _build_index(paths, out, lock, clip, options, progress)


def _staging(out: Path, lock: Path) -> Path:
    """An empty folder beside `out` sharing its lock file (a hard link: the lock outlives the swap)."""
    stage = out.with_name(f".{out.name}.staging")
    if stage.exists():
        shutil.rmtree(stage)  # a killed re-index's leftovers
    stage.mkdir()
    os.link(lock, stage / OUTPUT_LOCK)
    return stage


def _build_index(
    paths: list[Path], out: Path, lock: Path, clip, options: IndexOptions, progress: bool
) -> IndexReport:
    head, head_state = _head_for(options, clip)
    head_name = head.config.name
    head_sha = (
        file_sha256(resolve_head_checkpoint(options.head_checkpoint)) if options.head_checkpoint else None
    )

    meta, existing_rows, existing = _read_existing(out)
    if meta is not None:
        if meta.get("format") != INDEX_FORMAT:
            raise VideoIndexError(
                f"{out}/index.json is not a clip4clip index ({meta.get('format')}): use an empty --out"
            )
        check_same_clip(out, meta["clip"], clip)
        if (
            meta["head"]["name"] != head_name
            or meta["head"]["checkpoint_sha256"] != head_sha
            or meta["sampling"] != asdict(options.sampling)
        ):
            raise VideoIndexError(
                f"index {out} was built with head {meta['head']['name']} and sampling {meta['sampling']}; "
                f"this run asks for head {head_name} and {asdict(options.sampling)}: use a new --out"
            )

    keep: list[int] = []
    todo: list[Path] = []
    unchanged: list[str] = []
    for path in paths:
        key = str(path.resolve())
        row = existing_rows.get(key)
        if row is not None and existing.column("sha256")[row].as_py() == file_sha256(path):
            keep.append(row)
            unchanged.append(key)
        else:
            todo.append(path)
    found = {str(p.resolve()) for p in paths}
    removed = [p for p in existing_rows if p not in found]

    cache_dir = options.cache_dir or out / "frame_cache"
    results = compute_frame_features(
        todo, clip.model, clip.preprocess, options.sampling, cache_dir, options.batch_size, progress
    )
    fresh = [r for r in results if isinstance(r, FrameFeatures)]
    rejected = [r for r in results if isinstance(r, Rejected)]

    max_frames = options.sampling.max_frames
    old_frames = (
        np.load(out / "frames.npy")[keep] if keep else np.zeros((0, max_frames, clip.embed_dim), np.float32)
    )
    old_mask = np.load(out / "mask.npy")[keep] if keep else np.zeros((0, max_frames), bool)
    if fresh:
        bank = VideoBank.from_features([r.path for r in fresh], fresh, max_frames)
        frames = np.concatenate([old_frames, bank.frames.numpy()])
        mask = np.concatenate([old_mask, bank.mask.numpy()])
    else:
        frames, mask = old_frames, old_mask

    rows = existing.take(keep).to_pylist() if keep else []
    rows += [
        {
            "path": str(Path(r.path).resolve()),
            "sha256": r.sha256,
            "n_frames": len(r.features),
            "duration": r.duration,
            "width": r.width,
            "height": r.height,
            "rotation": r.rotation,
            "times": r.times.tolist(),
            "thumbnails": list(r.thumbnails),
        }
        for r in fresh
    ]
    table = pa.Table.from_pylist(rows, schema=VIDEO_SCHEMA)

    if len(rows) and not head.cross_encoder:
        with torch.no_grad():
            device = next(clip.model.parameters()).device
            embeddings = (
                head.to(device)
                .video_embedding(torch.from_numpy(frames).to(device), torch.from_numpy(mask).to(device))
                .cpu()
                .numpy()
            )
    else:
        embeddings = np.zeros((len(rows), clip.embed_dim), np.float32)
    if not np.isfinite(embeddings).all():
        raise Clip4ClipError("a video embedding is not finite: the head or checkpoint is damaged")
    if head.cross_encoder:
        faiss_type = "none (cross-encoder)"
    else:
        faiss_type = options.faiss_type or choose_faiss_type(len(rows))

    stage = _staging(out, lock)
    try:
        _write(stage, "videos.parquet", lambda p: pq.write_table(table, p))
        _write_npy(stage, "frames.npy", frames.astype(np.float32))
        _write_npy(stage, "mask.npy", mask)
        _write_npy(stage, "embeddings.npy", embeddings.astype(np.float32))
        if len(rows) and not head.cross_encoder:
            index = build_faiss_index(embeddings, faiss_type)
            _write(stage, "faiss.index", lambda p: faiss.write_index(index, str(p)))
        if options.head_checkpoint is not None and head_state is not None:
            shutil.copyfile(resolve_head_checkpoint(options.head_checkpoint), stage / "head.pt")
        previous_rejects = (
            json.loads((out / "rejects.json").read_text()) if (out / "rejects.json").is_file() else []
        )
        still_there = {str(p.resolve()) for p in paths}
        rejects = {
            r["path"]: r
            for r in previous_rejects
            if r["path"] in still_there and r["path"] not in {str(Path(x.path).resolve()) for x in fresh}
        }
        rejects.update(
            {
                str(Path(r.path).resolve()): {"path": str(Path(r.path).resolve()), "reason": r.reason}
                for r in rejected
            }
        )
        atomic_write_json(stage / "rejects.json", sorted(rejects.values(), key=lambda r: r["path"]))
        # index.json last: a reader trusts the other files only once it names them.
        atomic_write_json(
            stage / "index.json",
            {
                "format": INDEX_FORMAT,
                "clip": clip_record(clip),
                "head": {
                    "name": head_name,
                    "checkpoint_sha256": head_sha,
                    "file": "head.pt" if head_sha else None,
                },
                "sampling": asdict(options.sampling),
                "faiss": faiss_type,
                "count": len(rows),
            },
        )
        if options.cache_dir is None and (out / "frame_cache").is_dir():
            os.rename(out / "frame_cache", stage / "frame_cache")  # the cache moves with the index
        replace_directory(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # the old index stays as it was
        raise
    return IndexReport(
        out, [str(Path(r.path).resolve()) for r in fresh], unchanged, removed, rejected, len(rows), faiss_type
    )


def _write(out: Path, name: str, write) -> None:
    with atomic_path(out / name) as tmp:
        write(tmp)


def _write_npy(out: Path, name: str, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.save would append ".npy" to the temporary name
            np.save(handle, array)

    _write(out, name, write)
