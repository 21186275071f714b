"""A small dataset with the awkward rows a search service meets, its index, and a served app.

    world = build_search_world(tmp_path, checkpoint)     # dataset + index (+ videos)
    with serve_search(world) as base_url: ...

Rows: shape pictures (tests.datasets), exact copies of the first few (near-duplicate groups),
a caption with `<script>` in it, a caption in three scripts, and one picture that does not
decode (a recorded reject). No pytest imports: usable from scripts too.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from PIL import Image

from curation.shards import write_shard
from testbed.datasets import shape_rows

SCRIPT_CAPTION = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> a red circle'
UNICODE_CAPTION = "Ein rotes Dreieck — 赤い三角形 — красный треугольник 🔺"
COPIED = 4  # rows 0..COPIED-1 get an exact copy each


@dataclass
class SearchWorld:
    dataset: Path
    index: Path
    checkpoint: Path
    clip: object
    rows: list[dict]  # as written, in shard order (the broken row included)
    videos: Path | None = None

    def id_of(self, key: str) -> int:
        """Index id of a dataset key (ids follow shard order, rejects skipped)."""
        kept = [r["key"] for r in self.rows if r["key"] != "broken"]
        return kept.index(key)


def search_rows(n: int = 60, seed: int = 0, size: int = 32) -> list[dict]:
    rows = shape_rows(n, seed, size)
    copies = [dict(rows[i], key=f"copy-{i}", url=f"http://127.0.0.1/copies/{i}.jpg") for i in range(COPIED)]
    script = dict(rows[n - 2], key="script", caption=SCRIPT_CAPTION)
    unicode = dict(rows[n - 1], key="unicode", caption=UNICODE_CAPTION)
    broken = dict(rows[0], key="broken", jpg=b"this is not a JPEG", sha256="0" * 64)
    return rows[: n - 2] + copies + [script, unicode, broken]


def build_search_world(root: Path, checkpoint: Path, videos: bool = False) -> SearchWorld:
    from apps.search.index import IndexSettings, build_index
    from models import load_clip

    root = Path(root)
    rows = search_rows()
    half = len(rows) // 2
    write_shard(root / "data", "part-00000", pa.Table.from_pylist(rows[:half]))
    write_shard(root / "data", "part-00001", pa.Table.from_pylist(rows[half:]))
    clip = load_clip(checkpoint)
    build_index(root / "data", root / "index", clip, IndexSettings(progress=False))
    world = SearchWorld(root / "data", root / "index", Path(checkpoint), clip, rows)
    if videos:
        from apps.clip4clip.index import IndexOptions
        from apps.clip4clip.index import build_index as build_video_index
        from apps.clip4clip.video import FrameSampling
        from testbed.videos import SynthConfig, generate_synthetic_set

        made = generate_synthetic_set(root / "synth", SynthConfig(n_train=2, n_test_pairs=1, size=32))
        options = IndexOptions(sampling=FrameSampling(max_frames=4, fps=2.0), batch_size=16)
        build_video_index(made.videos_dir, root / "videos", clip, options, progress=False)
        world.videos = root / "videos"
    return world


def jpeg_of(rows: list[dict], key: str) -> bytes:
    return next(r["jpg"] for r in rows if r["key"] == key)


def png_bytes(size: int = 48, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def serve_search(world: SearchWorld, allowed_networks: tuple[str, ...] = ()) -> Iterator[str]:
    """The real app (FastAPI + uvicorn) on a free loopback port, from a thread."""
    from apps.clip4clip.search import open_index
    from apps.search.query import QueryEncoder, url_policy
    from apps.search.service import ServiceState, create_app, running_server
    from apps.search.store import SearchIndex

    videos = open_index(world.videos, world.clip) if world.videos else None
    encoder = QueryEncoder(world.clip, url_policy=url_policy(allowed_networks))
    state = ServiceState(SearchIndex(world.index), encoder, videos)
    with running_server(create_app(state)) as base_url:
        yield base_url
