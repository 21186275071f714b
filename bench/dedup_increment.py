"""Increment dedup: a full rescan of the dataset's hashes (before) against a query of its persisted index (ours).

    python -m bench.dedup_increment                        # 100k committed pairs + 1k new, 3 repeats
    python -m bench.dedup_increment --old 1000000 --new 1000 --repeats 2

A dataset of `--old` committed pairs (synthetic 64-bit pHash and aHash, shards of 5,000 rows, one
Delta version) and a staged increment of `--new` pairs, 2 % of them copies of old pairs (half exact
bytes, half a few bits away). Both decide which new pairs to drop; they must agree.

  before   what curation/build.py did until the index was used: read the dedup columns of every
           committed shard, search old + new at once (curation.dedup), read candidate pixels by a key
           filter over every shard.
  ours     curation.build.dedup_new_pairs: open DIR/index/neardup, query it with the new hashes, read
           the candidates' rows from their own shards (one row group each).

Same process, order alternating between repeats, the page cache warm for both (a warm-up run of each
first). Printed: seconds per run, median and spread, ratio before / ours, and the one-time cost of
building the index from the committed shards (what a dataset built before the index pays once).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from curation import shards, versions
from curation.build import STAGED_SCHEMA, dedup_new_pairs
from curation.config import BuildConfig
from curation.dedup import same_pictures, thumbnail
from curation.increments import PairColumns, dedup_against_dataset, index_radii, open_dataset_index
from curation.schema import conform

DEDUP_COLUMNS = ["key", "sha256", "phash", "colour_signature", "ahash", "caption", "text_source"]
DEDUP_COLUMNS += ["original_width", "original_height"]
SHARD_ROWS = 5000
PICTURES = (
    256  # distinct small JPEGs the rows cycle through (hashes are synthetic, pixels matter only for copies)
)


def _pictures(rng: np.random.Generator) -> list[bytes]:
    out = []
    for _ in range(PICTURES):
        buffer = io.BytesIO()
        grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(grid).resize((32, 32), Image.BICUBIC).save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def _hex(values: np.ndarray) -> list[str]:
    return [f"{v:016x}" for v in values.tolist()]


def _rows(keys: range, phash: np.ndarray, ahash: np.ndarray, pictures: list[int], jpgs: list[bytes], rng):
    n = len(keys)
    return pa.table(
        {
            "key": [f"{k:010d}" for k in keys],
            "url": [f"http://127.0.0.1/{k}.jpg" for k in keys],
            "caption": [f"a picture number {k}" for k in keys],
            "status": ["success"] * n,
            "width": [32] * n,
            "height": [32] * n,
            "original_width": [32] * n,
            "original_height": [32] * n,
            "sha256": [rng.bytes(32).hex() for _ in range(n)],
            "phash": _hex(phash),
            "ahash": _hex(ahash),
            "colour_signature": [None] * n,
            "text_source": ["caption_reference_description"] * n,
            "jpg": [jpgs[p] for p in pictures],
        }
    )


def make_dataset(root: Path, n_old: int, n_new: int, seed: int) -> Path:
    """Committed shards (version 0) and one staged file of new pairs; returns the staged file."""
    rng = np.random.default_rng(seed)
    jpgs = _pictures(rng)
    files = []
    for start in tqdm(range(0, n_old, SHARD_ROWS), desc="writing committed shards", unit=" shard"):
        keys = range(start, min(n_old, start + SHARD_ROWS))
        codes = rng.integers(0, 2**63, size=(2, len(keys)), dtype=np.int64).astype(np.uint64) << np.uint64(1)
        table = _rows(keys, codes[0], codes[1], [k % PICTURES for k in keys], jpgs, rng)
        name = f"i00000-part-{start // SHARD_ROWS:05d}"
        shards.write_shard(root, name, table)
        files.append(f"shards/{name}.parquet")
    versions.commit(root, files, {"increment": 0, "added": n_old})

    copies = max(2, n_new // 50)
    sources = rng.choice(n_old, size=copies, replace=False)
    old = {k: v for k, v in zip(*_codes_of(root, set(sources.tolist())))}
    keys = range(n_old + 1, n_old + 1 + n_new)
    codes = rng.integers(0, 2**63, size=(2, n_new), dtype=np.int64).astype(np.uint64) << np.uint64(1)
    pictures = [PICTURES + i for i in range(n_new)]  # fresh pictures, unlike any old one
    jpgs = jpgs + _pictures(np.random.default_rng(seed + 1)) * (n_new // PICTURES + 1)
    table = _rows(keys, codes[0], codes[1], pictures, jpgs, rng).to_pylist()
    for i, source in enumerate(
        sources.tolist()
    ):  # copies of old pairs: even ones exact, odd ones a few bits off
        phash, ahash, sha = old[source]
        flips = (np.uint64(0), np.uint64(0)) if i % 2 == 0 else (np.uint64(0b1011), np.uint64(0b11))
        table[i].update(
            phash=f"{int(phash, 16) ^ int(flips[0]):016x}",
            ahash=f"{int(ahash, 16) ^ int(flips[1]):016x}",
            jpg=jpgs[source % PICTURES],
            sha256=sha if i % 2 == 0 else table[i]["sha256"],
        )
    staged = root / "work" / "staged" / "chunk-00000.parquet"
    staged.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(conform(pa.Table.from_pylist(table), STAGED_SCHEMA), staged)
    return staged


def _codes_of(root: Path, wanted: set[int]):
    keys, values = [], []
    for batch in shards.iter_batches(root, columns=["key", "phash", "ahash", "sha256"], verify=False):
        for row in batch.to_pylist():
            if int(row["key"]) in wanted:
                keys.append(int(row["key"]))
                values.append((row["phash"], row["ahash"], row["sha256"]))
    return keys, values


def before(cfg: BuildConfig, staged: Path) -> dict:
    """The build's dedup before the index: every committed shard's hashes, searched with the new ones."""
    committed = shards.trusted_shards(cfg.out, verify=False)

    def columns(paths: list[Path]) -> PairColumns:
        schema = pa.schema([STAGED_SCHEMA.field(name) for name in DEDUP_COLUMNS])
        tables = [pq.read_table(p, columns=DEDUP_COLUMNS).cast(schema) for p in paths]
        return PairColumns.from_table(pa.concat_tables(tables))

    new, old = columns([staged]), columns(committed)
    keys = old.keys + new.keys

    def verify(pairs):
        wanted = {keys[i] for pair in pairs for i in pair}
        thumbs = {}
        for path in [staged, *committed]:
            table = pq.read_table(path, columns=["key", "jpg"], filters=[("key", "in", list(wanted))])
            for key, jpg in zip(table["key"].to_pylist(), table["jpg"].to_pylist()):
                thumbs[key] = thumbnail(jpg)
        return same_pictures(thumbs, [(keys[i], keys[j]) for i, j in pairs])

    return dedup_against_dataset(new, old, cfg.dedup_radius, cfg.caption_policy, verify)


def ours(cfg: BuildConfig, staged: Path) -> dict:
    return dedup_new_pairs(cfg, [staged], increment=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dedup_increment",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--old", type=int, default=100_000, help="committed pairs in the dataset")
    parser.add_argument("--new", type=int, default=1_000, help="pairs in the increment")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (after one warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="build the dataset here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.old < 10 or args.new < 2:
        parser.error("--old must be at least 10 and --new at least 2")

    root = args.keep or Path(tempfile.mkdtemp(prefix="dedup-increment-"))
    try:
        print(
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"load {os.getloadavg()[0]:.1f}; {args.old:,} committed pairs + {args.new:,} new"
        )
        staged = make_dataset(root / "ds", args.old, args.new, args.seed)
        cfg = BuildConfig(out=root / "ds", source=["wit:unused.tsv"])
        started = time.perf_counter()
        open_dataset_index(cfg.out, index_radii(cfg.dedup_radius), increment=1)
        index_seconds = time.perf_counter() - started

        reference = ours(cfg, staged)  # warm-ups (numba kernel, page cache), and the answers compared
        if before(cfg, staged) != reference:
            raise SystemExit("before and ours disagree on which pairs to drop")
        print(f"both drop the same {len(reference)} new pairs (copies of old ones)")
        times: dict[str, list[float]] = {"before": [], "ours": []}
        for r in range(args.repeats):
            for name in ("before", "ours") if r % 2 == 0 else ("ours", "before"):
                started = time.perf_counter()
                (before if name == "before" else ours)(cfg, staged)
                times[name].append(time.perf_counter() - started)
                print(f"  run {r + 1} {name:>6}: {times[name][-1]:.3f} s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        spread = {k: (max(v) - min(v)) / 2 for k, v in times.items()}
        print(
            f"\nincrement dedup, {args.old:,} committed + {args.new:,} new: before {med['before']:.3f} "
            f"+- {spread['before']:.3f} s, ours {med['ours']:.3f} +- {spread['ours']:.3f} s, "
            f"before / ours {med['before'] / med['ours']:.1f}x"
        )
        print(f"one-time index build from the committed shards (hash columns only): {index_seconds:.2f} s")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
