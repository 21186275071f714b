"""Dedup: the banded Hamming search finds exactly the pairs an all-pairs scan finds; groups keep the best copy."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from curation.config import DEFAULT_CAPTION_POLICY
from curation.dedup import dedup_decisions, duplicate_groups, near_duplicate_pairs, phash_hex


def flip_bits(value: int, bits: list[int]) -> int:
    for b in bits:
        value ^= 1 << b
    return value


def planted_hashes(n: int, seed: int) -> list[str]:
    """Random hashes plus near copies at distances 0..8 of some of them."""
    rng = np.random.default_rng(seed)
    values = [int(v) for v in rng.integers(0, 2**63, size=n, dtype=np.int64)]
    for i in range(0, n // 2, 7):
        distance = int(rng.integers(0, 9))
        values.append(flip_bits(values[i], [int(b) for b in rng.choice(64, size=distance, replace=False)]))
    return [f"{v:016x}" for v in values]


def brute_force(hashes: list[str], radius: int) -> set[frozenset]:
    ints = [int(h, 16) for h in hashes]
    return {
        frozenset((i, j))
        for i, j in itertools.combinations(range(len(ints)), 2)
        if bin(ints[i] ^ ints[j]).count("1") <= radius
    }


def connected(pairs, n: int) -> list[set[int]]:
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for i, j, *_ in pairs:
        parent[find(i)] = find(j)
    groups: dict[int, set[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), set()).add(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=min)


@pytest.mark.parametrize("radius", [0, 1, 4, 8])
def test_banded_search_equals_all_pairs(radius):
    hashes = planted_hashes(800, seed=radius)
    found = near_duplicate_pairs(hashes, radius)
    ints = [int(h, 16) for h in hashes]
    for i, j, d in found:  # every reported pair is real and its distance right
        assert d == bin(ints[i] ^ ints[j]).count("1") <= radius
    # the same groups as the exhaustive scan (pairs may differ: identical hashes pair with the first)
    assert connected(found, len(hashes)) == connected(brute_force(hashes, radius), len(hashes))


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=quality)
    return buffer.getvalue()


def test_phash_of_real_photos_groups_copies_not_different_pictures():
    astronaut = Image.fromarray(skdata.astronaut())
    variants = [
        encode(astronaut),
        encode(astronaut, quality=40),  # re-encoded
        encode(astronaut.resize((400, 400))),  # resized
        encode(astronaut, "PNG"),
    ]
    others = [encode(Image.fromarray(skdata.chelsea())), encode(Image.fromarray(skdata.coffee()))]
    hashes = [phash_hex(v) for v in variants + others]
    groups = duplicate_groups([None] * len(hashes), hashes, radius=4)
    assert groups == [[0, 1, 2, 3]]


def test_decisions_keep_best_copy_and_name_the_kept_key():
    h = "c3c3c3c3c3c3c3c3"
    near = f"{int(h, 16) ^ 0b101:016x}"
    keys = ["k1", "k2", "k3", "k4", "k5"]
    sha = ["aa", "aa", None, None, "zz"]
    phashes = [h, h, near, "0f0f0f0f0f0f0f0f", "ffffffff00000000"]
    captions = ["IMG 1", "a red circle on paper", "a red circle", "blue star", "something"]
    sources = [
        "caption_attribution_description",
        "caption_reference_description",
        "caption_reference_description",
        "caption_reference_description",
        "caption_reference_description",
    ]
    pixels = [100, 100, 50, 100, 100]
    decisions = dedup_decisions(keys, sha, phashes, captions, sources, 4, DEFAULT_CAPTION_POLICY, pixels)
    assert set(decisions) == {"k1", "k3"}  # k2: reference caption and the largest picture
    assert decisions["k1"].kept_key == "k2" and decisions["k1"].reason.startswith("exact_duplicate")
    assert decisions["k3"].kept_key == "k2" and decisions["k3"].reason.startswith("near_duplicate")
    assert "phash distance 2" in decisions["k3"].reason


def test_pixel_check_accepts_shifted_copies_and_refuses_look_alikes():
    from curation.dedup import same_picture
    from testbed.shapes import render_shape_image

    rng = np.random.default_rng(0)
    circle = render_shape_image("blue circle", rng, 128)
    shifted = Image.fromarray(np.pad(np.asarray(circle), ((3, 0), (3, 0), (0, 0)), mode="edge")[:128, :128])
    other = render_shape_image("blue circle", rng, 128)  # same class, another drawing
    assert same_picture(encode(circle), encode(shifted, quality=50))
    assert same_picture(encode(circle), encode(circle.resize((96, 96))))
    assert not same_picture(encode(circle), encode(other))
    assert not same_picture(encode(circle), encode(render_shape_image("green circle", rng, 128)))


def test_batched_pixel_check_matches_the_numpy_definition():
    """The compiled kernel gives the numpy definition's difference; past `stop_above` it may stop early
    but never reports a value at or under the bound, and `same_pictures` agrees pair by pair."""
    from curation.dedup import MAX_SHIFT, aligned_differences, same_pictures

    def numpy_definition(a: np.ndarray, b: np.ndarray) -> float:
        side, best = a.shape[0], np.inf
        for dy, dx in itertools.product(range(-MAX_SHIFT, MAX_SHIFT + 1), repeat=2):
            ya, yb = slice(max(0, dy), side + min(0, dy)), slice(max(0, -dy), side + min(0, -dy))
            xa, xb = slice(max(0, dx), side + min(0, dx)), slice(max(0, -dx), side + min(0, -dx))
            best = min(best, float(np.abs(a[ya, xa] - b[yb, xb]).mean()))
        return best

    rng = np.random.default_rng(0)
    thumbs = rng.uniform(0, 255, (40, 32, 32, 3)).astype(np.float32)
    thumbs[20:30] = np.roll(thumbs[:10], (1, -2), axis=(1, 2)) + rng.normal(0, 2, (10, 32, 32, 3))
    thumbs[30:] = thumbs[:10] + rng.normal(0, 6, (10, 32, 32, 3))  # near the bound
    pairs = np.array([(i, 20 + i) for i in range(10)] + [(i, 30 + i) for i in range(10)] + [(0, 1), (2, 3)])
    expected = np.array([numpy_definition(thumbs[i], thumbs[j]) for i, j in pairs])
    np.testing.assert_allclose(aligned_differences(thumbs, pairs), expected, rtol=1e-5)
    bound = float(np.median(expected))
    early = aligned_differences(thumbs, pairs, stop_above=bound)
    assert np.array_equal(early <= bound, expected <= bound)
    np.testing.assert_allclose(early[expected <= bound], expected[expected <= bound], rtol=1e-5)
    keyed = {f"k{i}": t for i, t in enumerate(thumbs)}
    verdicts = same_pictures(keyed, [(f"k{i}", f"k{j}") for i, j in pairs], max_difference=bound)
    assert verdicts == (expected <= bound).tolist()


def test_verifier_splits_hash_candidates():
    h = "c3c3c3c3c3c3c3c3"
    groups = duplicate_groups(
        [None, None, None], [h, h, h], radius=8, verify=lambda pairs: [p == (0, 2) for p in pairs]
    )
    assert groups == [[0, 2]]
