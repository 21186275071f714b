"""The generated shape world and the loopback web: what the truth file says is what the server serves."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import subprocess
import sys
import time
import urllib.robotparser
from html.parser import HTMLParser
from pathlib import Path

import httpx
import imagehash
import numpy as np
import py3langid
import pytest
from PIL import Image

from testbed import shapes
from testbed.testweb import (
    EXPECTED_REJECTS,
    JUNK_KINDS,
    LARGE_CONTENT_LENGTH,
    WIT_COLUMNS,
    SiteOptions,
    build_site,
    main,
)
from testbed.web import serve_testweb

REPO = Path(__file__).resolve().parents[1]
SLOW_DELAY = 1.0

# --- the shape world ---------------------------------------------------------------------------------


def test_classes_are_36_colour_shape_pairs():
    assert len(shapes.CLASSES) == 36 == len(set(shapes.CLASSES))
    assert shapes.CLASSES[0] == "red circle"
    for cls in shapes.CLASSES:
        assert shapes.class_from_folder(shapes.folder_name(cls)) == cls
    with pytest.raises(ValueError, match="unknown shape class"):
        shapes.split_class("pink unicorn")


def test_render_is_deterministic_and_varied():
    a = shapes.render_shape_image("blue star", np.random.default_rng(5), 64)
    b = shapes.render_shape_image("blue star", np.random.default_rng(5), 64)
    c = shapes.render_shape_image("blue star", np.random.default_rng(6), 64)
    assert a.size == (64, 64) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def _background_distance(image: Image.Image) -> np.ndarray:
    """Each pixel's distance from the (light, neutral-ish) background colour, which the border shows."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return np.linalg.norm(pixels - np.median(border, axis=0), axis=2)


def _shape_mask(image: Image.Image) -> np.ndarray:
    """Pixels far from the background colour."""
    return _background_distance(image) > 60


def _drawn_colour(image: Image.Image) -> str:
    """The class colour nearest to the ink: the pixels at least 70 % as far from the background as the
    farthest one (a thin outline's anti-aliased edge, blended with the paper, is left out)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    distance = _background_distance(image)
    mean = pixels[distance >= 0.7 * distance.max()].mean(axis=0)
    return min(shapes.COLOR_RGB, key=lambda c: np.linalg.norm(mean - np.array(shapes.COLOR_RGB[c])))


@pytest.mark.parametrize("style", shapes.STYLES)
@pytest.mark.parametrize("cls", shapes.CLASSES)
def test_drawn_colour_is_the_class_colour(cls, style):
    """The ink is nearest to its own colour among the six, on several random draws, in both styles."""
    rng = np.random.default_rng(shapes.CLASSES.index(cls))  # not hash(): it changes every process
    color, _ = shapes.split_class(cls)
    for _ in range(3):
        image = shapes.render_shape_image(cls, rng, 64, style)
        mask = _shape_mask(image)
        least = 0.05 if style == "filled" else 0.02  # a pen line covers less than a filled shape
        assert mask.mean() > least, f"{cls}: the shape covers only {mask.mean():.1%} of the picture"
        assert _drawn_colour(image) == color


def test_outline_style_is_a_line_on_paper():
    """A line drawing: near-white paper, ink on a thin band only, and far less ink than the filled shape."""
    ink = {}
    for style in shapes.STYLES:
        rng = np.random.default_rng(3)
        images = [shapes.render_shape_image("blue square", rng, 64, style) for _ in range(6)]
        ink[style] = np.mean([_shape_mask(image).mean() for image in images])
        if style == "outline":
            corners = np.concatenate([np.asarray(im)[:4, :4].reshape(-1, 3) for im in images])
            assert corners.mean() > 225, "outline pictures are drawn on near-white paper"
    assert ink["outline"] < 0.5 * ink["filled"], ink
    with pytest.raises(ValueError, match="unknown style"):
        shapes.render_shape_image("blue square", np.random.default_rng(0), 64, "dotted")


def test_shapes_differ_in_outline():
    """Same colour, same seed: the six shapes cover visibly different areas (circle > cross, star)."""
    fill = {}
    for shape in shapes.SHAPES:
        rng = np.random.default_rng(1)
        fill[shape] = np.mean(
            [_shape_mask(shapes.render_shape_image(f"red {shape}", rng, 64)).mean() for _ in range(8)]
        )
    assert (
        fill["circle"] > fill["star"] and fill["circle"] > fill["cross"] and fill["square"] > fill["triangle"]
    )
    assert len({round(v, 3) for v in fill.values()}) == 6


def test_captions_name_colour_and_shape():
    rng = np.random.default_rng(0)
    phrasings = set()
    for cls in shapes.CLASSES:
        for _ in range(4):
            caption = shapes.caption_for(cls, rng)
            assert cls in caption.lower()
            phrasings.add(caption.lower().replace(cls, "X"))
    assert len(phrasings) >= 8


def test_write_image_folder_layout(tmp_path):
    out = shapes.write_image_folder(tmp_path / "folder", n_per_class=2, seed=3, size=32)
    dirs = sorted(p.name for p in out.iterdir())
    assert dirs == sorted(shapes.folder_name(c) for c in shapes.CLASSES)
    files = sorted(out.glob("*/*.png"))
    assert len(files) == 72 and (out / "red_circle" / "00001.png").exists()
    again = shapes.write_image_folder(tmp_path / "again", n_per_class=2, seed=3, size=32)
    assert (out / "green_heart" / "00000.png").read_bytes() == (
        again / "green_heart" / "00000.png"
    ).read_bytes()


def test_contact_sheet_cli(tmp_path, capsys):
    assert shapes.main(["--sheet", str(tmp_path / "sheet.png")]) == 0
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (len(shapes.SHAPES) * 2 * 64, len(shapes.COLORS) * 64)
    assert shapes.main(["--out", str(tmp_path / "f"), "--n-per-class", "0"]) == 2
    assert "need at least 1 image per class" in capsys.readouterr().err


# --- the site ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web():
    with serve_testweb(pages=12, seed=0, slow_delay_s=SLOW_DELAY, hostile=True) as running:
        yield running


@pytest.fixture(scope="module")
def fetched(web):
    """Every image URL fetched once, as a client following redirects (at most 10) would."""
    results = {}
    with httpx.Client(follow_redirects=True, max_redirects=10, timeout=10) as client:
        for url in web.truth["images"]:
            started = time.monotonic()
            try:
                response = client.get(url)
                results[url] = (response, time.monotonic() - started)
            except httpx.TooManyRedirects as exc:
                results[url] = (exc, time.monotonic() - started)
    return results


def _decode(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def test_every_junk_kind_is_present_and_a_minority(web):
    counts = web.truth["counts"]
    assert set(JUNK_KINDS) <= set(counts), f"missing kinds: {set(JUNK_KINDS) - set(counts)}"
    assert counts["slow_response"] == 1
    total = len(web.truth["images"])
    junk = sum(1 for t in web.truth["images"].values() if t["junk"])
    assert 0.1 < junk / total < 0.45 and counts["clean"] > total / 2


def test_default_site_size_and_junk_fraction():
    site = build_site(40, seed=1, options=SiteOptions(image_size=48))  # small pictures: same layout, faster
    junk = sum(1 for e in site.images if e.junk)
    assert 240 <= len(site.images) <= 330
    assert 0.18 <= junk / len(site.images) <= 0.32


def test_served_images_match_truth(web, fetched):
    for url, truth in web.truth["images"].items():
        result, seconds = fetched[url]
        kinds = truth["junk"]
        if "redirect_loop" in kinds:
            assert isinstance(result, httpx.TooManyRedirects), url
            continue
        assert result.status_code == truth["status"], url
        if truth["status"] != 200:
            continue
        assert str(result.url) == truth["served_url"]
        assert result.headers["content-type"] == truth["mime_type"]
        assert hashlib.sha256(result.content).hexdigest() == truth["sha256"]
        if "broken_image" in kinds:
            with pytest.raises(OSError):
                _decode(result.content)
            continue
        image = _decode(result.content)
        assert image.size == (truth["width"], truth["height"]), url
        if "small_image" in kinds:
            assert min(image.size) < 32
        elif "extreme_aspect" in kinds:
            assert max(image.size) / min(image.size) > 5
        else:
            assert min(image.size) >= 32 and max(image.size) / min(image.size) <= 5
        if "redirect_chain" in kinds:
            assert len(result.history) >= 2 and str(result.url) != url
        if "noai_header" in kinds:
            assert "noai" in result.headers["x-robots-tag"]
        else:
            assert "x-robots-tag" not in result.headers
        if "slow_response" in kinds:
            assert seconds >= SLOW_DELAY * 0.9
        if truth["class"] and not kinds:
            assert _drawn_colour(image) == truth["class"].split()[0], url


def test_expected_rejects_and_captions(web):
    images = web.truth["images"]
    for url, truth in images.items():
        kinds = truth["junk"]
        rejects = [EXPECTED_REJECTS[k] for k in kinds if EXPECTED_REJECTS[k]]
        assert (truth["expected_reject"] is None) == (not rejects), url
        if not kinds:
            assert truth["caption_class"] == truth["class"]
            text = truth["caption_reference_description"] or truth["caption_alt_text_description"]
            assert truth["class"] in text.lower()
        if "mismatched_caption" in kinds:
            assert truth["caption_class"] not in (None, truth["class"])
            assert truth["caption_class"] in truth["caption_reference_description"].lower()
            assert truth["class"] not in truth["caption_alt_text_description"].lower()
        if "filename_caption" in kinds:
            assert re.fullmatch(r"IMG_\d{4}\.(JPG|jpg|jpeg|png)", truth["caption_reference_description"])
        if "empty_caption" in kinds:
            assert truth["caption_reference_description"] == truth["caption_alt_text_description"] == ""
        if "non_english" in kinds:
            language, _ = py3langid.classify(truth["caption_reference_description"])
            assert language == truth["caption_language"] != "en", truth["caption_reference_description"]


def test_duplicate_groups_decode_to_similar_pictures(web, fetched):
    groups = web.truth["duplicate_groups"]
    assert {g["kind"] for g in groups} >= {"exact", "near"}
    for group in groups:
        original = fetched[group["original"]][0]
        original_hash = imagehash.phash(_decode(original.content))
        for member in group["members"][1:]:
            truth = web.truth["images"][member]
            assert truth["duplicate_of"] == group["original"] and truth["dup_group"] == group["group"]
            body = fetched[member][0].content
            if "exact_duplicate" in truth["junk"]:
                assert body == original.content
            else:
                assert body != original.content
                distance = imagehash.phash(_decode(body)) - original_hash
                assert distance <= 10, f"{member} ({truth['variant']}) is {distance} bits from its original"
    # Distinct clean pictures are far apart: near-duplicate detection has something to separate.
    clean = [u for u, t in web.truth["images"].items() if not t["junk"] and t["dup_group"] is None][:20]
    hashes = [imagehash.phash(_decode(fetched[u][0].content)) for u in clean]
    far = [a - b for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert np.median(far) > 16


class _PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.lang = self.title = None
        self.tags: list[str] = []
        self.images: list[dict] = []
        self.links: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "html":
            self.lang = attrs.get("lang")
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        self._in_title = tag == "title"

    def handle_data(self, data):
        if self._in_title:
            self.title = data


def test_pages_carry_wit_fields_and_robots(web):
    robots = httpx.get(web.url("/robots.txt"))
    assert robots.status_code == 200 and "Disallow: /private/" in robots.text
    parser = urllib.robotparser.RobotFileParser()
    parser.parse(robots.text.splitlines())
    pages = web.truth["pages"]
    assert sum(1 for p in pages.values() if p["disallowed"]) == 1
    for page_url, page in pages.items():
        assert parser.can_fetch("*", page_url) == (not page["disallowed"])
        response = httpx.get(page_url, follow_redirects=False)
        assert response.status_code == page["status"], page_url
        if page["status"] in (301, 302):
            assert response.headers["location"] == page["location"]
        if page["status"] != 200 or page_url == web.base_url + "/":
            continue
        html = _PageParser()
        html.feed(response.text)
        assert html.lang and html.lang.startswith("en") and html.title
        assert {"h2", "p", "figure", "figcaption", "a"} <= set(html.tags)
        on_page = {u for u, t in web.truth["images"].items() if t["page_url"] == page_url}
        assert {web.base_url + img["src"] for img in html.images} == on_page
        assert len(on_page) == page["images"]
    private = [u for u, t in web.truth["images"].items() if "robots_disallowed" in t["junk"]]
    assert private and all(not parser.can_fetch("*", u) for u in private)


def test_wit_tsv_has_17_columns_and_resolving_urls(web, fetched, tmp_path):
    path = web.write_wit(tmp_path / "site.tsv")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0] == list(WIT_COLUMNS) and len(WIT_COLUMNS) == 17
    assert all(len(row) == 17 for row in rows)
    records = [dict(zip(rows[0], row)) for row in rows[1:]]
    in_wit = {u for u, t in web.truth["images"].items() if t["in_wit"]}
    assert {r["image_url"] for r in records} == in_wit
    for record in records:
        truth = web.truth["images"][record["image_url"]]
        assert record["caption_reference_description"] == truth["caption_reference_description"]
        assert record["page_url"] == truth["page_url"]
        assert record["image_url"].startswith(web.base_url)
        result = fetched[record["image_url"]][0]
        if isinstance(result, httpx.Response) and not truth["junk"]:
            assert result.status_code == 200


def test_hostile_pages(web):
    hostile = web.truth["hostile"]
    with httpx.Client(timeout=5) as client:
        with client.stream("GET", hostile["huge"]) as response:
            assert int(response.headers["content-length"]) == LARGE_CONTENT_LENGTH
        many = client.get(hostile["many_links"]).text
        assert many.count('<a href="/hostile/leaf/') == 10_000
        assert client.get(web.url("/hostile/leaf/9999.html")).status_code == 200
        latin1 = client.get(hostile["latin1"])
        assert "charset=iso-8859-1" in latin1.headers["content-type"]
        assert "été".encode("iso-8859-1") in latin1.content and "été".encode() not in latin1.content
        cp1252 = client.get(hostile["cp1252_meta"])
        assert "charset" not in cp1252.headers["content-type"] and b"\x80" in cp1252.content
        redirect = client.get(hostile["redirect_private"])
        assert redirect.status_code == 302 and redirect.headers["location"].startswith("http://10.")


def test_site_is_deterministic_by_seed():
    options = SiteOptions(images_per_page=(3, 4), image_size=48)
    a, b, c = build_site(4, 7, options), build_site(4, 7, options), build_site(4, 8, options)
    assert a.resources.keys() == b.resources.keys()
    assert all(a.resources[k].body == b.resources[k].body for k in a.resources)
    assert a.truth("http://h") == b.truth("http://h")
    assert a.resources.keys() != c.resources.keys()


def test_corpus_pages_serve_real_files(tmp_path):
    corpus = tmp_path / "clipart" / "png" / "animals"
    corpus.mkdir(parents=True)
    for n, name in enumerate(["cat", "dog", "fish"]):
        shapes.render_shape_image(shapes.CLASSES[n], np.random.default_rng(n), 40).save(
            corpus / f"{name}.png"
        )
    (corpus / "cat.json").write_text('{"title": "Sleeping cat", "description": "A cat asleep on a rug"}')
    (corpus / "dog.txt").write_text("Happy dog\nA dog running on the beach\n")
    svg_dir = tmp_path / "clipart" / "svg" / "animals"
    svg_dir.mkdir(parents=True)
    (svg_dir / "fish.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        "<title>Goldfish</title><metadata><dc:description>An orange fish in a bowl</dc:description></metadata></svg>"
    )
    site = build_site(
        3, 0, SiteOptions(images_per_page=(3, 3), image_size=48, corpus=tmp_path / "clipart" / "png")
    )
    corpus_images = {e.alt: e for e in site.images if e.path.startswith("/corpus/")}
    assert set(corpus_images) == {"Sleeping cat", "Happy dog", "Goldfish"}
    assert corpus_images["Goldfish"].reference == "An orange fish in a bowl"
    assert site.resources[corpus_images["Happy dog"].path].body == (corpus / "dog.png").read_bytes()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.png"):
        build_site(3, 0, SiteOptions(corpus=tmp_path / "empty"))


def test_cli_writes_wit_and_truth(tmp_path, capsys):
    rc = main(["--port", "0", "--pages", "3", "--seed", "2", "--no-serve", "--wit", str(tmp_path / "w.tsv"),
               "--truth", str(tmp_path / "t.json")])  # fmt: skip
    assert rc == 0 and "WIT rows" in capsys.readouterr().out
    assert (tmp_path / "w.tsv").read_text().startswith("language\tpage_url\timage_url")
    assert '"duplicate_groups"' in (tmp_path / "t.json").read_text()


def test_cli_bad_input_is_one_line(tmp_path):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "testbed.testweb", "--port", "0", "--corpus", str(tmp_path / "nope"), "--no-serve"],
        cwd=REPO, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a directory" in result.stderr
    assert "Traceback" not in result.stderr
