"""Answer a text query against an index: ranked videos with scores, optionally an HTML result page.

The query is embedded by the CLIP the index was built with (its checkpoint is recorded in
index.json), or by one given explicitly, which must have the same image encoder: a CLIP of another
width or other weights would give meaningless scores, so it is refused with both names.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from apps.clip4clip.errors import Clip4ClipError
from apps.clip4clip.heads import HeadConfig, SimilarityHead, build_head
from apps.clip4clip.index import INDEX_FORMAT, VideoIndexError, check_same_clip
from apps.clip4clip.train import encode_captions, load_head
from common.errors import UserError


class EmptyQueryError(UserError, ValueError):
    """The query has no words."""


@dataclass(frozen=True)
class SearchHit:
    rank: int
    score: float
    path: str
    duration: float
    times: list[float]
    thumbnails: list[bytes]


@dataclass
class VideoIndex:
    """An index directory loaded for searching (with the CLIP and head that embed queries)."""

    path: Path
    meta: dict
    clip: object
    head: SimilarityHead
    videos: list[dict]
    embeddings: np.ndarray
    frames: np.ndarray
    mask: np.ndarray
    faiss_index: object | None


def read_index_meta(index_dir: str | Path) -> dict:
    index_dir = Path(index_dir)
    meta_path = index_dir / "index.json"
    if not meta_path.is_file():
        raise VideoIndexError(
            f"{index_dir} is not a video index (no index.json): build one with `python -m apps.clip4clip index`"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != INDEX_FORMAT:
        raise VideoIndexError(f"{meta_path}: unknown index format {meta.get('format')!r}; rebuild the index")
    return meta


def open_index(index_dir: str | Path, clip) -> VideoIndex:
    """Load an index for `clip` (a LoadedCLIP); raises VideoIndexError if the CLIP does not match it."""
    index_dir = Path(index_dir)
    meta = read_index_meta(index_dir)
    check_same_clip(index_dir, meta["clip"], clip)
    if meta["head"]["file"]:
        head, _, _ = load_head(index_dir / meta["head"]["file"], clip)
    else:
        head = build_head(HeadConfig(meta["head"]["name"], meta["sampling"]["max_frames"]), clip.embed_dim)
    videos = pq.read_table(index_dir / "videos.parquet").to_pylist()
    faiss_path = index_dir / "faiss.index"
    embeddings = np.load(index_dir / "embeddings.npy")
    frames, mask = np.load(index_dir / "frames.npy"), np.load(index_dir / "mask.npy")
    vectors = faiss.read_index(str(faiss_path)) if faiss_path.is_file() else None
    # Every file must describe the same videos: a mixed folder (files of two builds) would answer
    # queries with the wrong videos.
    counts = {"index.json": meta.get("count"), "videos.parquet": len(videos), "embeddings.npy": len(embeddings),
              "frames.npy": len(frames), "mask.npy": len(mask)}  # fmt: skip
    if vectors is not None:
        counts["faiss.index"] = vectors.ntotal
    if len(set(counts.values())) != 1:
        found = ", ".join(f"{name} {n}" for name, n in counts.items())
        raise VideoIndexError(f"index {index_dir} is inconsistent ({found} videos): rebuild it with `index`")
    return VideoIndex(index_dir, meta, clip, head, videos, embeddings, frames, mask, vectors)


@torch.no_grad()
def search(index: VideoIndex, query: str, k: int = 5) -> list[SearchHit]:
    """Top-k videos for `query`, best first."""
    if not query or not query.strip():
        raise EmptyQueryError(
            'empty query: give a few words describing the video, e.g. "a red circle moves left"'
        )
    if k < 1:
        raise Clip4ClipError(f"-k {k}: ask for at least 1 result")
    if not index.videos:
        return []
    k = min(k, len(index.videos))
    clip = index.clip
    text = encode_captions(clip.model, clip.tokenizer, [query.strip()])
    if index.head.cross_encoder:
        device = text.device
        scores = (
            index.head.similarity(
                text, torch.from_numpy(index.frames).to(device), torch.from_numpy(index.mask).to(device)
            )[0]
            .cpu()
            .numpy()
        )
        order = np.argsort(-scores, kind="stable")[:k]
        pairs = [(int(i), float(scores[i])) for i in order]
    else:
        query_vec = F.normalize(text, dim=-1).cpu().numpy().astype(np.float32)
        scores, ids = index.faiss_index.search(query_vec, k)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
    if any(not np.isfinite(s) for _, s in pairs):
        raise Clip4ClipError(
            "a search score is not finite: the index or checkpoint is damaged; rebuild the index"
        )
    hits = []
    for rank, (i, score) in enumerate(pairs, start=1):
        row = index.videos[i]
        hits.append(SearchHit(rank, score, row["path"], row["duration"], row["times"], row["thumbnails"]))
    return hits


def format_hits(query: str, hits: list[SearchHit]) -> str:
    lines = [f"query: {query!r}"]
    lines += [f"{h.rank:>3}. {h.score:+.4f}  {h.path}  ({h.duration:.1f} s)" for h in hits]
    return "\n".join(lines)


def write_html(path: str | Path, query: str, hits: list[SearchHit], index_dir: str | Path) -> Path:
    """A self-contained page: one row per hit with its frames as inline JPEG thumbnails."""
    rows = []
    for hit in hits:
        strip = "".join(
            f'<figure><img alt="frame at {t:.1f} s" src="data:image/jpeg;base64,{base64.b64encode(jpg).decode()}">'
            f"<figcaption>{t:.1f} s</figcaption></figure>"
            for t, jpg in zip(hit.times, hit.thumbnails)
        )
        rows.append(
            f"<section><h2>{hit.rank}. <code>{html.escape(Path(hit.path).name)}</code> "
            f'<span class="score">score {hit.score:.4f}</span></h2>'
            f'<p class="path">{html.escape(hit.path)} &middot; {hit.duration:.1f} s</p><div class="strip">{strip}</div></section>'
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Video search: {html.escape(query)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; background: #fafafa; }}
section {{ background: white; border: 1px solid #ddd; border-radius: 6px; padding: .5em 1em; margin-bottom: 1em; }}
h2 {{ font-size: 1.1em; margin: .3em 0; }} .score {{ color: #666; font-weight: normal; margin-left: 1em; }}
.path {{ color: #888; font-size: .85em; margin: 0 0 .5em; }}
.strip {{ display: flex; gap: 4px; overflow-x: auto; }} figure {{ margin: 0; text-align: center; }}
img {{ height: 96px; image-rendering: pixelated; border-radius: 3px; }} figcaption {{ font-size: .75em; color: #888; }}
</style></head><body>
<h1>Results for &ldquo;{html.escape(query)}&rdquo;</h1>
<p>Index: <code>{html.escape(str(index_dir))}</code> &middot; {len(hits)} results</p>
{"".join(rows) or "<p>No video in the index.</p>"}
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
