"""Dedup across the whole dataset: exact (sha256) and near duplicates (two 64-bit hashes, Hamming radius).

Candidates come from two hashes: pHash (DCT of luminance: robust to re-encoding and resizing)
within `radius` bits, and average hash (8x8 mean threshold) within AHASH_RADIUS bits, which
catches copies shifted by a few pixels that move pHash 10-20 bits. Both searches are
curation.neardup's multi-index Hamming search (close to linear in the number of hashes,
bench/dedup.py). A colour check and a pixel check (`same_picture`) then reject false candidates.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import imagehash
import numpy as np
from numba import njit
from PIL import Image

from curation.neardup import HammingIndex

DEDUP_STAGE = "dedup"
_MAX_EXPANSION = 10_000  # rows sharing one hash value beyond this are chained through one of them
# pHash sees luminance only: a blue and a green circle of the same size hash alike. Two copies of one
# picture also agree on colour: the mean RGB of each image quadrant may differ by at most this.
COLOUR_TOLERANCE = 24


# Average hash radius of the second candidate search. Measured on the 600-page loopback web (4,239
# images): copies shifted by 2-4 px sit at aHash distance 0-6 (pHash 4-20); distinct pictures within
# 6 bits and of matching colour are 0.2 % of pairs, which the pixel check rejects.
AHASH_RADIUS = 6


class ImageSignature(NamedTuple):
    phash: str  # 16 hex digits
    colour: str  # mean RGB of the 4 quadrants, 24 hex digits
    ahash: str  # 16 hex digits


def phash_hex(jpg: bytes) -> str:
    """16 hex digits of the 64-bit perceptual hash of an encoded image."""
    return image_signature(jpg).phash


def image_signature(jpg: bytes) -> ImageSignature:
    """pHash, colour signature and average hash of an encoded image."""
    with Image.open(io.BytesIO(jpg)) as im:
        rgb = im.convert("RGB")
    quadrants = np.asarray(rgb.resize((2, 2), Image.BOX), dtype=np.uint8)
    return ImageSignature(
        str(imagehash.phash(rgb)), quadrants.tobytes().hex(), str(imagehash.average_hash(rgb))
    )


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


@njit(cache=True, nogil=True)
def _aligned_differences(thumbs, first, second, max_shift, stop_above):  # pragma: no cover - compiled
    side, channels = thumbs.shape[1], thumbs.shape[3]
    out = np.empty(len(first))
    for p in range(len(first)):
        a, b = thumbs[first[p]], thumbs[second[p]]
        best = np.inf
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                rows, cols = side - abs(dy), side - abs(dx)
                count = rows * cols * channels
                # the sum only grows: past this, the shift cannot beat `best` or come under `stop_above`
                cap = min(best, stop_above) * count
                total = 0.0
                for r in range(rows):
                    ra, rb = r + max(0, dy), r + max(0, -dy)
                    for c in range(cols):
                        ca, cb = c + max(0, dx), c + max(0, -dx)
                        for k in range(channels):
                            total += abs(a[ra, ca, k] - b[rb, cb, k])
                    if total > cap:
                        break
                if total <= cap:
                    best = min(best, total / count)
        out[p] = best
    return out


def aligned_differences(
    thumbs: np.ndarray, pairs: np.ndarray, max_shift: int = MAX_SHIFT, stop_above: float = np.inf
) -> np.ndarray:
    """Per pair (i, j) of `pairs` (M, 2), the smallest mean absolute difference of thumbnails
    `thumbs[i]` and `thumbs[j]` (a stack (N, side, side, 3)) over shifts of up to `max_shift` px.

    A difference above `stop_above` is not worked out to the end: the value returned for it is only
    known to be above `stop_above` (inf when no shift came under). Compiled (numba), a shift stops at
    the row where its running sum passes the bound: the corpus web's 80,000 candidate pairs in ~1 s
    instead of 20 s a pair at a time in numpy.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    thumbs = np.ascontiguousarray(thumbs, dtype=np.float32)
    return _aligned_differences(thumbs, pairs[:, 0], pairs[:, 1], max_shift, float(stop_above))


def aligned_difference(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> float:
    """Smallest mean absolute difference of two thumbnails over shifts of up to `max_shift` px."""
    return float(aligned_differences(np.stack([a, b]), np.array([[0, 1]]), max_shift)[0])


def same_picture(jpg_a: bytes, jpg_b: bytes, max_difference: float = SAME_PICTURE_MAX_DIFFERENCE) -> bool:
    """Pixel check of a hash candidate pair: the hashes found it, this confirms it."""
    return aligned_difference(thumbnail(jpg_a), thumbnail(jpg_b)) <= max_difference


def same_pictures(
    thumbs: Mapping[Hashable, np.ndarray],
    pairs: Sequence[tuple[Hashable, Hashable]],
    max_difference: float = SAME_PICTURE_MAX_DIFFERENCE,
) -> list[bool]:
    """Pixel check of many hash candidate pairs (keys of `thumbs`)."""
    if not pairs:
        return []
    at = {key: n for n, key in enumerate(thumbs)}
    stack = np.stack(list(thumbs.values()))
    index = np.array([(at[x], at[y]) for x, y in pairs], dtype=np.int64)
    differences = aligned_differences(stack, index, stop_above=max_difference)
    return (differences <= max_difference).tolist()


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

    Identical hashes are paired with their first occurrence; distinct ones come from the
    multi-index Hamming search of curation.neardup over the unique values, so the work grows
    close to linearly with the number of hashes (bench/dedup.py).
    """
    values = hashes_to_ints(phashes)
    if len(values) < 2:
        return []
    uniq, first, inverse, counts = np.unique(
        values, return_index=True, return_inverse=True, return_counts=True
    )
    members: dict[int, list[int]] = {}  # rows of the repeated values only: millions of singletons stay arrays
    repeated = counts[inverse] > 1
    for i, u in zip(np.nonzero(repeated)[0].tolist(), inverse[repeated].tolist()):
        members.setdefault(u, []).append(i)

    def expand(u1: int, u2: int | None, distance: int) -> Iterator[tuple[int, int, int]]:
        # Every row pair behind one or two hash values (colour checks may split them later);
        # past _MAX_EXPANSION pairs, rows are chained instead (enough to connect a group).
        a = members.get(u1) or [int(first[u1])]
        b = (members.get(u2) or [int(first[u2])]) if u2 is not None else a
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
    if len(uniq) > 1:
        matches = HammingIndex(uniq, radius).pairs()
        for a, b, d in zip(matches.row.tolist(), matches.query.tolist(), matches.distance.tolist()):
            pairs.extend(expand(a, b, int(d)))
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
    ahashes: Sequence[str | None] | None = None,
    ahash_radius: int = AHASH_RADIUS,
) -> list[list[int]]:
    """Groups (row indices) of rows that are exact or near duplicates of each other, size >= 2.

    Same sha256: duplicates. Otherwise a pair needs pHash within `radius` or aHash within
    `ahash_radius`, matching colours, and (when `verify` is given) `verify` to confirm it from the
    pixels, in one batch call.
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
    searches = [(phashes, radius)] + ([(ahashes, ahash_radius)] if ahashes is not None else [])
    seen: set[tuple[int, int]] = set()
    candidates = []
    for hashes, within in searches:
        hashed = [i for i, h in enumerate(hashes) if h]
        for a, b, _ in near_duplicate_pairs([hashes[i] for i in hashed], within):
            i, j = min(hashed[a], hashed[b]), max(hashed[a], hashed[b])
            if (i, j) in seen or (sha256[i] and sha256[i] == sha256[j]):
                continue  # found by the other hash, or already joined by sha256
            seen.add((i, j))
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
    ahashes: Sequence[str | None] | None = None,
) -> dict[str, DedupDecision]:
    """Which rows to drop: in each duplicate group keep the best copy (`copy_quality`; ties: smallest key)."""
    decisions: dict[str, DedupDecision] = {}
    area = pixels if pixels is not None else [None] * len(keys)
    for group in duplicate_groups(sha256, phashes, radius, colours, verify, ahashes):
        best = max(
            group, key=lambda i: (copy_quality(captions[i], text_sources[i], area[i], policy), _neg(keys[i]))
        )
        for i in group:
            if i == best:
                continue
            if sha256[i] and sha256[i] == sha256[best]:
                reason = f"exact_duplicate: same sha256 as key {keys[best]}"
            else:
                distance = f"phash distance {_hamming(phashes[i], phashes[best])}"
                if ahashes is not None:
                    distance += f", ahash distance {_hamming(ahashes[i], ahashes[best])}"
                reason = f"near_duplicate: of key {keys[best]} ({distance})"
            decisions[keys[i]] = DedupDecision(keys[best], reason)
    return decisions


def _neg(key: str) -> tuple:
    # max() picks the smallest key on ties: compare negated code points.
    return tuple(-ord(c) for c in key)


def _hamming(a: str | None, b: str | None) -> int | str:
    if not a or not b:
        return "?"
    return bin(int(a, 16) ^ int(b, 16)).count("1")
