"""The search part of `make demo`: index the curated dataset with the trained CLIP, check it answers.

    from apps.search.demo import run_demo
    figures = run_demo("runs/demo/apps/search", "runs/demo/train", "runs/demo/data/round1")
    print(figures["serve_command"])

Figures: rows indexed, seconds to embed, index type, near-duplicate groups, and, for captions
typed as queries against the picture index (the service's own search path): how often the
caption's own picture is in the first 10, and, where captions name one of the test web's 36
colour-shape classes, the share of the first 10 pictures whose caption names the same class
(many pictures share a class, so this is the figure a person sees), with the median query time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from apps.search.index import IndexSettings, build_index
from apps.search.query import QueryEncoder
from apps.search.store import SearchIndex
from models import load_clip
from testbed.shapes import CLASSES


def class_named(caption: str | None) -> str | None:
    """The one test-web class a caption names ("a big red circle" -> "red circle"), else None."""
    text = (caption or "").lower()
    named = [c for c in CLASSES if c in text]
    return named[0] if len(named) == 1 else None


def run_demo(
    out_dir: str | Path, checkpoint: str | Path, dataset: str | Path, queries: int = 200, port: int = 8000
) -> dict:
    """Build (or update) the index of `dataset` under OUT/index; returns figures and the serve command."""
    out = Path(out_dir)
    index_dir = out / "index"
    clip = load_clip(checkpoint)
    start = time.perf_counter()
    report = build_index(dataset, index_dir, clip, IndexSettings(progress=False))
    index_seconds = time.perf_counter() - start

    index = SearchIndex(index_dir)
    encoder = QueryEncoder(clip)
    rows = index.metadata.select(["id", "caption"]).to_pylist()
    sample = [
        rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:queries] if rows[i]["caption"]
    ]
    captions = index.metadata["caption"].to_pylist()
    found, times, same_class = 0, [], []
    for row in sample:
        t0 = time.perf_counter()
        hits = index.knn(encoder.text(row["caption"]), "image", k=10)
        times.append(time.perf_counter() - t0)
        found += any(h.id == row["id"] for h in hits)
        wanted = class_named(row["caption"])
        if wanted is not None:
            same_class.append(np.mean([class_named(captions[h.id]) == wanted for h in hits]))
    figures = {
        "rows": report.rows,
        "embedded_shards": len(report.embedded_shards),
        "reused_shards": len(report.reused_shards),
        "rejected": report.rejected,
        "index_seconds": round(index_seconds, 1),
        "index_type": report.index_types["image"],
        "duplicate_groups": report.duplicate_groups,
        "index_mb": round(report.bytes / 1e6, 1),
        "caption_finds_its_picture_at_10": round(found / max(1, len(sample)), 3),
        "same_class_at_10": round(float(np.mean(same_class)), 3) if same_class else None,
        "queries": len(sample),
        "median_query_ms": round(1000 * float(np.median(times)), 2) if times else None,
        "index_dir": str(index_dir),
        "serve_command": f"python -m apps.search serve {index_dir} --port {port}",
    }
    (out / "report.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures
