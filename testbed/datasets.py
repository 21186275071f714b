"""Small datasets of generated coloured shapes, written as real shards (for tests of any stage).

    make_shape_dataset(tmp_path / "data", n=144, seed=0, size=64)

writes `shards/*.parquet` + `manifest.json` through `curation.shards.write_shard`, exactly what
`curation build` leaves behind, with JPEG bytes in `jpg` and a phrased caption in `caption`.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.shards import write_shard
from testbed.shapes import CLASSES, caption_for, render_shape_image


def shape_rows(
    n: int, seed: int, size: int = 64, start: int = 0, outline_fraction: float = 0.0
) -> list[dict]:
    """`n` image-caption rows cycling through the 36 classes; deterministic from `seed`.

    `outline_fraction` of the pictures (every k-th row) are pen-outline drawings, as on the loopback web.
    """
    rng = np.random.default_rng(seed)
    every = round(1 / outline_fraction) if outline_fraction > 0 else 0
    rows = []
    for i in range(start, start + n):
        cls = CLASSES[i % len(CLASSES)]
        style = "outline" if every and i % every == every - 1 else "filled"
        buffer = io.BytesIO()
        render_shape_image(cls, rng, size, style=style).save(buffer, format="JPEG", quality=90)
        data = buffer.getvalue()
        rows.append(
            {
                "key": f"{i:09d}",
                "url": f"http://127.0.0.1/shapes/{i}.jpg",
                "caption": caption_for(cls, rng),
                "status": "success",
                "width": size,
                "height": size,
                "sha256": hashlib.sha256(data).hexdigest(),
                "jpg": data,
                "source": "generated",
            }
        )
    return rows


def rows_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def make_shape_dataset(
    root: Path | str,
    n: int,
    seed: int = 0,
    size: int = 64,
    shards: int = 1,
    row_group_size: int = 512,
    outline_fraction: float = 0.0,
) -> Path:
    """A dataset directory with `n` shape pairs split over `shards` Parquet shards."""
    root = Path(root)
    rows = shape_rows(n, seed, size, outline_fraction=outline_fraction)
    per_shard = -(-n // shards)
    for s in range(shards):
        part = rows[s * per_shard : (s + 1) * per_shard]
        if part:
            write_shard(root, f"shapes-{s:05d}", rows_table(part), row_group_size=row_group_size)
    return root
