"""The multi-index Hamming search finds exactly the brute-force pairs; the dataset index persists and grows by segments;
the second hash (aHash) catches shifted copies that pHash misses, and the pixel check still refuses look-alikes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from curation.dedup import dedup_decisions, duplicate_groups, image_signature, same_picture
from curation.neardup import HammingIndex, NearDupIndex, NearDupIndexError, choose_bands
from testbed.shapes import render_shape_image


def planted(n: int, seed: int) -> np.ndarray:
    """Random 64-bit codes plus copies of some of them at 0-12 flipped bits, and exact repeats."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    codes ^= rng.integers(0, 2, size=n).astype(np.uint64)
    copies = []
    for i in range(0, n // 2, 5):
        bits = rng.choice(64, size=int(rng.integers(0, 13)), replace=False)
        copies.append(codes[i] ^ np.uint64(sum(1 << int(b) for b in bits)))
    return np.concatenate([codes, np.array(copies, dtype=np.uint64), codes[:7]])


def brute_pairs(codes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    found = set()
    for i in range(1, len(codes)):
        d = np.bitwise_count(codes[:i] ^ codes[i])
        found |= {(i, int(j)) for j in np.nonzero(d <= radius)[0]}
    return found


@pytest.mark.parametrize("radius", [0, 3, 6, 8, 12])
@pytest.mark.parametrize("threads", [1, 2])
def test_self_join_equals_brute_force(radius, threads):
    codes = planted(700, seed=radius)
    matches = HammingIndex(codes, radius, threads=threads).pairs()
    got = list(zip(matches.query.tolist(), matches.row.tolist()))
    assert len(got) == len(set(got)), "a pair reported twice"
    assert set(got) == brute_pairs(codes, radius)
    assert all(
        d == np.bitwise_count(codes[q] ^ codes[x]) for q, x, d in zip(*map(list, vars(matches).values()))
    )


def test_queries_against_an_index_equal_brute_force_and_buffers_grow():
    codes = planted(500, seed=1)
    queries = np.concatenate([codes[::3] ^ np.uint64(0b10010), codes[:40]])
    index = HammingIndex(codes, 8, bands=3)
    matches = index.search(queries)
    got = set(zip(matches.query.tolist(), matches.row.tolist()))
    want = {
        (q, int(x))
        for q in range(len(queries))
        for x in np.nonzero(np.bitwise_count(codes ^ queries[q]) <= 8)[0]
    }
    assert got == want and len(got) == len(matches) > 1024 // 8


def test_band_count_follows_the_cost_model():
    assert choose_bands(10_000_000, 8) == 3  # 3 bands of 21-22 bits, 2 flipped bits per band
    assert all(
        max(64 // b + 1, 0) <= 22 for b in (choose_bands(n, r) for n in (10, 10**6) for r in (0, 4, 16))
    )


def hexes(codes: np.ndarray) -> list[str]:
    return [f"{int(c):016x}" for c in codes]


def test_dataset_index_persists_and_an_increment_only_adds_a_segment(tmp_path):
    codes = planted(300, seed=5)[:300]
    keys = [f"v1-{i:04d}" for i in range(300)]
    index = NearDupIndex.open(tmp_path, radii={"phash": 8, "ahash": 6})
    assert len(index) == 0 and index.query({"phash": hexes(codes[:2])}) == []
    first = index.query_and_add({"phash": hexes(codes), "ahash": hexes(codes[::-1])}, keys)
    assert {(keys[c.index], c.other_key) for c in first if c.kind == "phash"} == {
        (keys[q], keys[x]) for q, x in brute_pairs(codes, 8)
    }
    index.save()

    reopened = NearDupIndex.open(tmp_path, radii={"phash": 8, "ahash": 6})
    assert reopened.keys == keys
    new = np.array(
        [codes[10] ^ np.uint64(0b111), codes[20] ^ np.uint64(1 << 40), 12345, 12345 ^ 3], dtype=np.uint64
    )
    found = reopened.query_and_add({"phash": hexes(new) + [None]}, ["n0", "n1", "n2", "n3", "n4"])
    pairs = {(c.index, c.other_key, c.distance) for c in found}
    assert {(0, "v1-0010", 3), (1, "v1-0020", 1), (3, "n2", 2)} <= pairs
    assert all(c.kind == "phash" for c in found)  # no aHash given for the increment: none searched
    segment = reopened.save()
    assert len(NearDupIndex.open(tmp_path).keys) == 305
    assert pq_rows(segment) == 5  # the increment wrote only its own rows
    meta = json.loads((tmp_path / "index" / "neardup" / "segments.json").read_text())
    assert len(meta["segments"]) == 2 and meta["rows"] == 305


def pq_rows(path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def test_broken_or_mismatched_index_is_one_clear_error(tmp_path):
    index = NearDupIndex.open(tmp_path, radii={"phash": 8})
    index.add({"phash": ["00000000000000ff"]}, ["a"])
    index.save()
    with pytest.raises(NearDupIndexError, match="not \\['ahash'\\]; delete it"):
        NearDupIndex.open(tmp_path, radii={"phash": 8, "ahash": 6})
    (tmp_path / "index" / "neardup" / "segments.json").write_text("{not json")
    with pytest.raises(NearDupIndexError, match="delete .* and rebuild"):
        NearDupIndex.open(tmp_path)
    with pytest.raises(NearDupIndexError, match="not in this index"):
        NearDupIndex(None, {"phash": 8}).query({"dhash": ["00"]})


def encode(image: Image.Image, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def shifted(image: Image.Image, dy: int, dx: int) -> Image.Image:
    pixels = np.asarray(image)
    return Image.fromarray(
        np.pad(pixels, ((dy, 0), (dx, 0), (0, 0)), mode="edge")[: image.height, : image.width]
    )


def test_ahash_catches_shifted_copies_phash_misses_and_pixels_refuse_look_alikes():
    rng = np.random.default_rng(1)
    originals = [render_shape_image(c, rng, 128) for c in ("red star", "blue circle")]
    look_alike = render_shape_image("blue circle", rng, 128)  # same class, another drawing
    jpgs = (
        [encode(o) for o in originals] + [encode(shifted(o, 4, 4)) for o in originals] + [encode(look_alike)]
    )
    signatures = [image_signature(j) for j in jpgs]
    phashes, ahashes = [s.phash for s in signatures], [s.ahash for s in signatures]
    colours = [s.colour for s in signatures]
    for k in (0, 1):  # pHash alone misses both shifted copies
        assert bin(int(phashes[k], 16) ^ int(phashes[k + 2], 16)).count("1") > 8
    sha = [None] * len(jpgs)

    def verify(pairs):
        return [same_picture(jpgs[i], jpgs[j]) for i, j in pairs]

    assert duplicate_groups(sha, phashes, 8, colours, verify) == []
    assert duplicate_groups(sha, phashes, 8, colours, verify, ahashes) == [[0, 2], [1, 3]]
    refused = duplicate_groups(sha, phashes, 8, colours, lambda pairs: [False] * len(pairs), ahashes)
    assert refused == []  # the aHash pairs are candidates only: the pixel check decides
    keys = [f"k{i}" for i in range(5)]
    decisions = dedup_decisions(
        keys, sha, phashes, [None] * 5, [None] * 5, 8, ["a"], [100] * 5, colours, verify, ahashes
    )
    assert set(decisions) == {"k2", "k3"} and "ahash distance" in decisions["k2"].reason
