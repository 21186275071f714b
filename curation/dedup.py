"""Dedup across the whole dataset: exact (sha256) and near duplicates (64-bit pHash, Hamming radius).

Near-duplicate search is multi-index hashing: the 64 bits are split into `radius + 1` bands;
two hashes within `radius` bits agree exactly on at least one band (pigeonhole), so
candidates are the rows that share a band value, and only those are compared (vectorised
numpy over sorted runs). Measured here on random hashes: radius 4 (5 bands of 12 bits), a million
in ~20 s; radius 8 (9 bands of 7 bits: more chance matches, growing with n^2 / 128), 100 k in 5 s
and 200 k in 17 s. An all-pairs scan of a million takes hours. For tens of millions of rows use a
radius of 4-5 (`dedup_radius`). faiss's `IndexBinaryMultiHash.range_search` does the same and
measured ~10x slower here at a million rows; probing variants (fewer, wider bands, probing
nearby band values) measured slower than this in numpy.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

DEDUP_STAGE = "dedup"
_MAX_EXPANSION = 10_000  # rows sharing one hash value beyond this are chained through one of them
# pHash sees luminance only: a blue and a green circle of the same size hash alike. Two copies of one
# picture also agree on colour: the mean RGB of each image quadrant may differ by at most this.
COLOUR_TOLERANCE = 24


def phash_hex(jpg: bytes) -> str:
    """16 hex digits of the 64-bit perceptual hash of an encoded image."""
    return image_signature(jpg)[0]


def image_signature(jpg: bytes) -> tuple[str, str]:
    """(pHash as 16 hex digits, colour signature: mean RGB of the 4 quadrants as 24 hex digits)."""
    with Image.open(io.BytesIO(jpg)) as im:
        rgb = im.convert("RGB")
    quadrants = np.asarray(rgb.resize((2, 2), Image.BOX), dtype=np.uint8)
    return str(imagehash.phash(rgb)), quadrants.tobytes().hex()


# Two copies of one picture, as 32x32 thumbnails aligned within +-2 px (a few % of the side: covers
# crops and shifts), differ by at most this mean absolute value (0-255). Measured on the loopback
# web: copies (re-encoded, resized, shifted) <= 2.8; distinct drawings of the same class >= 9.
SAME_PICTURE_MAX_DIFFERENCE = 5.0
THUMBNAIL_SIDE = 32
MAX_SHIFT = 2


def thumbnail(jpg: bytes) -> np.ndarray:
    """32x32 RGB float thumbnail of an encoded image."""
    with Image.open(io.BytesIO(jpg)) as im:
        return np.asarray(
            im.convert("RGB").resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.BOX), dtype=np.float32
        )


def aligned_difference(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> float:
    """Smallest mean absolute difference of two thumbnails over shifts of up to `max_shift` px."""
    side = a.shape[0]
    best = float("inf")
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            ya, yb = slice(max(0, dy), side + min(0, dy)), slice(max(0, -dy), side + min(0, -dy))
            xa, xb = slice(max(0, dx), side + min(0, dx)), slice(max(0, -dx), side + min(0, -dx))
            best = min(best, float(np.abs(a[ya, xa] - b[yb, xb]).mean()))
    return best


def same_picture(jpg_a: bytes, jpg_b: bytes, max_difference: float = SAME_PICTURE_MAX_DIFFERENCE) -> bool:
    """Pixel check of a hash candidate pair: the hashes found it, this confirms it."""
    return aligned_difference(thumbnail(jpg_a), thumbnail(jpg_b)) <= max_difference


def colours_match(a: str | None, b: str | None, tolerance: int = COLOUR_TOLERANCE) -> bool:
    """True when two colour signatures agree within `tolerance` per channel (or one is unknown)."""
    if not a or not b:
        return True
    x = np.frombuffer(bytes.fromhex(a), dtype=np.uint8).astype(int)
    y = np.frombuffer(bytes.fromhex(b), dtype=np.uint8).astype(int)
    return bool(np.abs(x - y).max() <= tolerance)


def hashes_to_ints(phashes: Sequence[str]) -> np.ndarray:
    """uint64 values of 16-hex-digit hashes."""
    return np.fromiter((int(h, 16) for h in phashes), dtype=np.uint64, count=len(phashes))


def near_duplicate_pairs(phashes: Sequence[str], radius: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) pairs, enough to connect every group of hashes within `radius` bits.

    Identical hashes are paired with their first occurrence; distinct ones are found by
    multi-index hashing over `radius + 1` bands, each band compared only inside runs of equal
    band values (sorted), so the work grows with the number of true candidates, not n^2.
    """
    values = hashes_to_ints(phashes)
    if len(values) < 2:
        return []
    uniq, inverse = np.unique(values, return_inverse=True)
    members: dict[int, list[int]] = {}
    for i, u in enumerate(inverse.tolist()):
        members.setdefault(u, []).append(i)

    def expand(u1: int, u2: int | None, distance: int) -> Iterator[tuple[int, int, int]]:
        # Every row pair behind one or two hash values (colour checks may split them later);
        # past _MAX_EXPANSION pairs, rows are chained instead (enough to connect a group).
        a = members[u1]
        b = members[u2] if u2 is not None else a
        if len(a) * len(b) > _MAX_EXPANSION:
            if u2 is None:
                yield from ((x, y, distance) for x, y in zip(a, a[1:]))
            else:
                yield from ((a[0], y, distance) for y in b)
            return
        for x in a:
            for y in b:
                if u2 is not None or x < y:
                    yield (x, y, distance)

    pairs = [pair for u, rows in members.items() if len(rows) > 1 for pair in expand(u, None, 0)]
    width = 64 // (radius + 1)  # disjoint bands; leftover bits only make the pigeonhole argument stronger
    mask = np.uint64((1 << width) - 1)
    found: set[tuple[int, int]] = set()
    for band in range(radius + 1):
        band_values = (uniq >> np.uint64(band * width)) & mask
        order = np.argsort(band_values, kind="stable")
        sorted_band, sorted_values = band_values[order], uniq[order]
        offset = 1
        while offset < len(order):
            same = np.nonzero(sorted_band[offset:] == sorted_band[:-offset])[0]
            if len(same) == 0:  # runs are contiguous: no run is longer than `offset`
                break
            dist = np.bitwise_count(sorted_values[same] ^ sorted_values[same + offset])
            close = same[dist <= radius]
            for a, b, d in zip(
                order[close].tolist(), order[close + offset].tolist(), dist[dist <= radius].tolist()
            ):
                pair = (min(a, b), max(a, b))
                if pair not in found:
                    found.add(pair)
                    pairs.extend(expand(pair[0], pair[1], int(d)))
            offset += 1
    return pairs


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass(frozen=True)
class DedupDecision:
    """For a dropped row: the key it duplicates and why."""

    kept_key: str
    reason: str


PairVerifier = Callable[[list[tuple[int, int]]], list[bool]]


def duplicate_groups(
    sha256: Sequence[str | None],
    phashes: Sequence[str | None],
    radius: int,
    colours: Sequence[str | None] | None = None,
    verify: PairVerifier | None = None,
) -> list[list[int]]:
    """Groups (row indices) of rows that are exact or near duplicates of each other, size >= 2.

    Same sha256: duplicates. Otherwise a pair needs pHash within `radius`, matching colours, and
    (when `verify` is given) `verify` to confirm it from the pixels, in one batch call.
    """
    n = len(phashes)
    uf = _UnionFind(n)
    first_by_sha: dict[str, int] = {}
    for i, digest in enumerate(sha256):
        if digest:
            if digest in first_by_sha:
                uf.union(first_by_sha[digest], i)
            else:
                first_by_sha[digest] = i
    hashed = [i for i, h in enumerate(phashes) if h]
    candidates = []
    for a, b, _ in near_duplicate_pairs([phashes[i] for i in hashed], radius):
        i, j = hashed[a], hashed[b]
        if uf.find(i) == uf.find(j) and sha256[i] and sha256[i] == sha256[j]:
            continue  # already joined by sha256
        if colours is None or colours_match(colours[i], colours[j]):
            candidates.append((i, j))
    confirmed = verify(candidates) if verify is not None and candidates else [True] * len(candidates)
    for (i, j), same in zip(candidates, confirmed):
        if same:
            uf.union(i, j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def copy_quality(
    caption: str | None, text_source: str | None, pixels: int | None, policy: Sequence[str]
) -> tuple:
    """Sort key, higher is better: the policy's preferred caption field, then the largest original
    picture (a resized copy loses), then a caption of useful length."""
    rank = -policy.index(text_source) if text_source in policy else -len(policy)
    words = len((caption or "").split())
    return (rank, pixels or 0, min(words, 30))


def dedup_decisions(
    keys: Sequence[str],
    sha256: Sequence[str | None],
    phashes: Sequence[str | None],
    captions: Sequence[str | None],
    text_sources: Sequence[str | None],
    radius: int,
    policy: Sequence[str],
    pixels: Sequence[int | None] | None = None,
    colours: Sequence[str | None] | None = None,
    verify: PairVerifier | None = None,
) -> dict[str, DedupDecision]:
    """Which rows to drop: in each duplicate group keep the best copy (`copy_quality`; ties: smallest key)."""
    decisions: dict[str, DedupDecision] = {}
    area = pixels if pixels is not None else [None] * len(keys)
    for group in duplicate_groups(sha256, phashes, radius, colours, verify):
        best = max(
            group, key=lambda i: (copy_quality(captions[i], text_sources[i], area[i], policy), _neg(keys[i]))
        )
        for i in group:
            if i == best:
                continue
            if sha256[i] and sha256[i] == sha256[best]:
                reason = f"exact_duplicate: same sha256 as key {keys[best]}"
            else:
                distance = _hamming(phashes[i], phashes[best])
                reason = f"near_duplicate: of key {keys[best]} (phash distance {distance})"
            decisions[keys[i]] = DedupDecision(keys[best], reason)
    return decisions


def _neg(key: str) -> tuple:
    # max() picks the smallest key on ties: compare negated code points.
    return tuple(-ord(c) for c in key)


def _hamming(a: str | None, b: str | None) -> int | str:
    if not a or not b:
        return "?"
    return bin(int(a, 16) ^ int(b, 16)).count("1")
