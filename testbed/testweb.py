"""A loopback web site with known content: the ground truth that crawling and curation are tested against.

    python -m testbed.testweb --port 8765 --pages 40 --seed 0 --wit site.tsv --truth truth.json

serves, on 127.0.0.1 only, a generated gallery site (deterministic from the seed): HTML pages with a
<title>, <h2> sections, paragraphs, links, and pictures of coloured shapes (testbed/shapes.py) in
<figure> elements with <figcaption>, `alt` and `title`. One picture in five is a pen-outline drawing
of its shape (`--line-drawing-fraction`, the truth's `style`), as the web has line drawings too. About a
quarter of the pictures are junk of a known kind, each recorded in the truth file with the reject a
correct pipeline makes (`EXPECTED_REJECTS`): broken bytes, 404/500, a redirect loop, tiny and
banner-shaped images, exact and near duplicates, file-name / empty / "image" captions, captions of
another picture, non-English captions, a page under a robots.txt `Disallow`, `X-Robots-Tag: noai`;
plus hostile-but-valid ones that must be kept: a redirect chain that resolves and one slow response
(`--slow-delay`).

`--wit out.tsv` writes the same site as a WIT-format TSV (the 17 public columns, header first) whose
image URLs point at this server; `--truth truth.json` writes what every image URL is.

`--hostile` also serves crawler torture pages under /hostile/ (not linked from the site): a 2 GB
Content-Length, an endless body, a page with 10,000 links, a redirect loop, a redirect to a private
address, a slow page, and pages in ISO-8859-1 / windows-1252.

`--world corpus` serves the real emoji and icon corpus instead of shapes (testbed/corpus_web.py: a page per
emoji subgroup or icon category, texts from the real names, some pages in other languages).

`--corpus DIR` adds pages that serve a folder of real pictures (*.png, *.jpg) through the same page
template. Metadata is read from a sidecar next to each picture: `NAME.json` ({"title", "description",
"keywords"}), `NAME.txt` (first line title, the rest description), or `NAME.svg` (its <title> and
<dc:description>); the Debian clip-art collection works as is:

    sudo apt-get install openclipart-png openclipart-svg     # ~8,000 pictures, /usr/share/openclipart
    python -m testbed.testweb --port 8765 --corpus /usr/share/openclipart/png

(for a picture under a `png/` folder, the SVG at the same path under `svg/` supplies title and description).

Library use (tests, the demo): `site = build_site(pages, seed)`, `server = serve(site, "127.0.0.1", 0)`,
`server.start()`, `site.truth(server.base_url)`, `server.stop()`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import html
import io
import json
import re
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from curation.schema import WIT_COLUMNS
from testbed.shapes import CLASSES, COLORS, SHAPES, caption_for, render_shape_image, split_class

# The 17 columns of the public WIT release, in its order.

# What a correct pipeline does with each kind of junk: the stage that drops it and why.
# None: hostile but valid, the pair must be kept (and the run must not stall on it).
EXPECTED_REJECTS: dict[str, dict[str, str] | None] = {
    "robots_disallowed": {"stage": "crawl", "reason": "robots.txt disallows the page"},
    "http_404": {"stage": "download", "reason": "HTTP 404"},
    "http_500": {"stage": "download", "reason": "HTTP 500"},
    "redirect_loop": {"stage": "download", "reason": "redirect loop"},
    "broken_image": {"stage": "download", "reason": "bytes do not decode as an image"},
    "noai_header": {"stage": "download", "reason": "X-Robots-Tag: noai"},
    "small_image": {"stage": "image_filter", "reason": "min side under 32 px"},
    "extreme_aspect": {"stage": "image_filter", "reason": "aspect ratio over 5"},
    "filename_caption": {"stage": "text_filter", "reason": "caption is a file name"},
    "empty_caption": {"stage": "text_filter", "reason": "no caption text"},
    "generic_caption": {"stage": "text_filter", "reason": "boilerplate caption ('image')"},
    "non_english": {"stage": "text_filter", "reason": "caption is not English"},
    "exact_duplicate": {"stage": "dedup", "reason": "same bytes as the original"},
    "near_duplicate": {"stage": "dedup", "reason": "perceptual hash near the original"},
    "mismatched_caption": {"stage": "clip_score", "reason": "caption describes another picture"},
    "redirect_chain": None,
    "slow_response": None,
}
JUNK_KINDS = list(EXPECTED_REJECTS)
# Kinds spread over the site round-robin; robots_disallowed lives on its own page, slow_response is one image.
_SPREAD_KINDS = [k for k in JUNK_KINDS if k not in ("robots_disallowed", "slow_response")]
NEAR_DUPLICATE_VARIANTS = ("reencoded", "resized", "shifted")
FOREIGN_LANGUAGES = ("de", "fr", "es")
MIN_SIDE = 32
MAX_ASPECT = 5.0
ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
LARGE_CONTENT_LENGTH = 2 * 1024**3  # what /hostile/huge.html announces
# Site pages that are not galleries: a redirect, a dead link and a server error, linked from some galleries.
SITE_EXTRA_PAGES = ["/index.html", "/moved.html", "/missing.html", "/error.html"]

_GENERIC_CAPTIONS = ["image", "Image", "picture", "photo"]
_AUTHORS = ["Anna K.", "Ben", "the club archive", "M. Duval", "Sofia R.", "Tom W.", "a visitor"]
_SECTION_HEADINGS = [
    "Recent uploads",
    "From the archive",
    "Members' drawings",
    "Odds and ends",
    "Printed and scanned",
    "Sent in by readers",
    "Workshop results",
    "Favourites",
]
_PAGE_THEMES = ["Shapes gallery", "Colour studies", "Sketchbook", "Club exhibition", "Paper cut-outs"]
_INTRO_SENTENCES = [
    "This page collects pictures that members of the drawing club sent in this month.",
    "Every picture below was drawn by hand, scanned or photographed, and uploaded as it came.",
    "We keep the captions the authors wrote, even when they are short.",
    "Most pictures show a single shape in one colour on a light background.",
    "Click a picture to see it full size; the originals are kept in the archive.",
]
_SECTION_SENTENCES = [
    "Here are some {ss} in {c} and other colours.",
    "A few of these were cut from coloured paper before being photographed.",
    "The {c} ones were the most popular this week.",
    "These {ss} were drawn during the Saturday workshop.",
    "Some scans came out a little blurry; we kept them anyway.",
]
_FOREIGN = {
    "de": {
        "colors": {
            "red": "Rot",
            "green": "Grün",
            "blue": "Blau",
            "yellow": "Gelb",
            "purple": "Lila",
            "orange": "Orange",
        },
        "shapes": {
            "circle": "Kreis",
            "square": "Quadrat",
            "triangle": "Dreieck",
            "star": "Stern",
            "cross": "Kreuz",
            "heart": "Herz",
        },
        # dative "einem" fits every noun above (all masculine or neuter)
        "templates": [
            "Eine Zeichnung mit einem {s} in {c}, gemalt auf hellem Papier",
            "Hier sieht man ein Bild mit einem {s} in {c} auf einem grauen Hintergrund",
            "Foto von einem kleinen {s} in der Farbe {c}, von Hand gezeichnet",
        ],
    },
    "fr": {
        "colors": {
            "red": "rouge",
            "green": "verte",
            "blue": "bleue",
            "yellow": "jaune",
            "purple": "violette",
            "orange": "orange",
        },
        "shapes": {
            "circle": "un cercle",
            "square": "un carré",
            "triangle": "un triangle",
            "star": "une étoile",
            "cross": "une croix",
            "heart": "un cœur",
        },
        # "de couleur X": the adjective agrees with "couleur", so it fits every noun
        "templates": [
            "Un dessin représentant {s} de couleur {c} sur un fond clair",
            "Voici une photo avec {s} de couleur {c}, dessinée à la main",
            "Sur cette image, on voit {s} de couleur {c} au milieu de la feuille",
        ],
    },
    "es": {
        "colors": {
            "red": "rojo",
            "green": "verde",
            "blue": "azul",
            "yellow": "amarillo",
            "purple": "morado",
            "orange": "naranja",
        },
        "shapes": {
            "circle": "un círculo",
            "square": "un cuadrado",
            "triangle": "un triángulo",
            "star": "una estrella",
            "cross": "una cruz",
            "heart": "un corazón",
        },
        "templates": [
            "Un dibujo de {s} de color {c} sobre un fondo claro",
            "Esta es una foto que muestra {s} de color {c} en el centro",
            "En la imagen se ve {s} de color {c}, dibujado a mano por un alumno",
        ],
    },
}


@dataclass(frozen=True)
class SiteOptions:
    """How the generated site looks; every choice inside is drawn from the seed."""

    images_per_page: tuple[int, int] = (6, 8)
    image_size: int = 128
    junk_fraction: float = 0.22
    slow_delay_s: float = 3.0
    latency_s: float = 0.0  # added to every response, like a network round trip (benchmarks)
    private_images: int = 4
    hostile: bool = False
    corpus: Path | None = None
    corpus_limit: int = 400
    line_drawing_fraction: float = 0.2  # pictures drawn as a pen outline instead of a filled shape
    # What the pictures show and how pages read: None is the shapes world (ShapesWorld); the emoji/icon
    # corpus is testbed.corpus_web.CorpusWorld.
    world: World | None = None


@dataclass(frozen=True)
class Resource:
    """One URL path's response. `stream` names a misbehaving body written by the handler itself."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    stream: str | None = None


@dataclass
class ImageEntry:
    """One <img> on the site and everything a test needs to know about it (paths, not URLs)."""

    path: str
    page_path: str
    cls: str | None
    caption_class: str | None
    reference: str
    alt: str
    attribution: str
    caption_language: str
    junk: list[str] = field(default_factory=list)
    variant: str | None = None
    served_path: str = ""
    status: int = 200
    mime: str = "image/jpeg"
    width: int = 0
    height: int = 0
    sha256: str | None = None
    duplicate_of: str | None = None
    dup_group: int | None = None
    in_figure: bool = True
    style: str = "filled"  # or "outline": a pen line drawing (testbed.shapes.STYLES)
    is_main_image: bool = False
    in_wit: bool = True
    section_title: str = ""
    context: str = ""


@dataclass
class Section:
    heading: str
    paragraph: str
    images: list[ImageEntry] = field(default_factory=list)


@dataclass
class Page:
    path: str
    title: str
    lang: str
    intro: str
    sections: list[Section]
    links: list[str]
    encoding: str = "utf-8"


@dataclass
class DuplicateGroup:
    group: int
    kind: str  # "exact" or "near"
    original: str
    members: list[str]


@dataclass
class Site:
    seed: int
    options: SiteOptions
    pages: list[Page]
    images: list[ImageEntry]
    resources: dict[str, Resource]
    duplicate_groups: list[DuplicateGroup]
    robots_txt: str = ROBOTS_TXT
    hostile_paths: dict[str, str] = field(default_factory=dict)

    def resolve(self, path: str) -> Resource | None:
        """The response for a URL path (query and fragment ignored), or None for a 404."""
        path = urllib.parse.urlsplit(path).path or "/"
        found = self.resources.get(path)
        if found is not None or not self.options.hostile:
            return found
        match = re.fullmatch(r"/hostile/leaf/(\d+)\.html", path)
        if match:
            n = int(match.group(1))
            body = f"<html lang='en'><head><title>Leaf {n}</title></head><body><p>Leaf page {n}.</p></body></html>"
            return Resource(body=body.encode())
        return None

    def truth(self, base_url: str) -> dict[str, Any]:
        """Everything a curation test scores against, keyed by absolute image URL."""
        base = base_url.rstrip("/")
        images = {}
        for entry in self.images:
            images[base + entry.path] = {
                "class": entry.cls,
                "style": entry.style,
                "caption_class": entry.caption_class,
                "page_url": base + entry.page_path,
                "caption_reference_description": entry.reference,
                "caption_alt_text_description": entry.alt,
                "caption_attribution_description": entry.attribution,
                "caption_language": entry.caption_language,
                "section_title": entry.section_title,
                "junk": list(entry.junk),
                "variant": entry.variant,
                "expected_reject": _expected_reject(entry.junk),
                "served_url": base + entry.served_path,
                "status": entry.status,
                "mime_type": entry.mime,
                "width": entry.width,
                "height": entry.height,
                "sha256": entry.sha256,
                "duplicate_of": base + entry.duplicate_of if entry.duplicate_of else None,
                "dup_group": entry.dup_group,
                "in_wit": entry.in_wit,
            }
        pages = {}
        for path in ["/", *SITE_EXTRA_PAGES, *(p.path for p in self.pages)]:
            resource = self.resources[path]
            pages[base + path] = {
                "status": resource.status,
                "location": dict(resource.headers).get("Location"),
                "disallowed": path.startswith("/private/"),
                "images": sum(len(s.images) for p in self.pages if p.path == path for s in p.sections),
            }
        groups = [
            {
                "group": g.group,
                "kind": g.kind,
                "original": base + g.original,
                "members": [base + m for m in g.members],
            }
            for g in self.duplicate_groups
        ]
        counts: dict[str, int] = {}
        for entry in self.images:
            for kind in entry.junk or ["clean"]:
                counts[kind] = counts.get(kind, 0) + 1
        return {
            "seed": self.seed,
            "base_url": base,
            "robots_txt": self.robots_txt,
            "expected_rejects": EXPECTED_REJECTS,
            "counts": counts,
            "images": images,
            "duplicate_groups": groups,
            "pages": pages,
            "hostile": {name: base + path for name, path in self.hostile_paths.items()},
        }

    def wit_rows(self, base_url: str) -> list[dict[str, str]]:
        """The site as WIT rows (robots-disallowed pages left out, as a polite crawler would)."""
        base = base_url.rstrip("/")
        pages = {p.path: p for p in self.pages}
        rows = []
        for entry in self.images:
            if not entry.in_wit:
                continue
            page = pages[entry.page_path]
            rows.append(
                {
                    "language": page.lang.split("-")[0],
                    "page_url": base + page.path,
                    "image_url": base + entry.path,
                    "page_title": page.title,
                    "section_title": entry.section_title,
                    "hierarchical_section_title": f"{page.title} / {entry.section_title}",
                    "caption_reference_description": entry.reference,
                    "caption_attribution_description": entry.attribution,
                    "caption_alt_text_description": entry.alt,
                    "mime_type": entry.mime,
                    "original_height": str(entry.height),
                    "original_width": str(entry.width),
                    "is_main_image": "true" if entry.is_main_image else "false",
                    "attribution_passes_lang_id": "true" if entry.caption_language == "en" else "false",
                    "page_changed_recently": "false",
                    "context_page_description": page.intro,
                    "context_section_description": entry.context,
                }
            )
        return rows

    def write_wit(self, path: str | Path, base_url: str) -> int:
        """Write the WIT TSV (header + rows); returns the number of rows."""
        rows = self.wit_rows(base_url)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=WIT_COLUMNS, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return len(rows)

    def first_pages(self, count: int) -> Site:
        """The site as it was when it had only its first `count` galleries: serve this, then the whole site,
        and the web has grown (new pages, new images, new copies of old pictures; links from old pages
        to the new ones answer 404 until then). Responses of what both hold are byte-identical."""
        galleries = [p for p in self.pages if p.path.startswith("/gallery/")]
        hidden_pages = {p.path for p in galleries[count:]}
        hidden_images = [e for e in self.images if e.page_path in hidden_pages]
        hidden = set(hidden_pages)
        for entry in hidden_images:
            hidden |= {entry.path, entry.served_path}
            if entry.path.startswith(("/go/", "/loop/")):  # every hop of its redirect chain or loop
                hop = entry.path.rsplit("/", 1)[0] + "/"
                hidden |= {path for path in self.resources if path.startswith(hop)}
        pages = [p for p in self.pages if p.path not in hidden_pages]
        resources = {path: r for path, r in self.resources.items() if path not in hidden}
        resources["/"] = Resource(body=_render_index(pages))
        visible = {e.path for e in self.images if e.page_path not in hidden_pages}
        groups = []
        for group in self.duplicate_groups:
            members = [m for m in group.members if m in visible]
            if len(members) > 1:
                original = group.original if group.original in visible else members[0]
                groups.append(dataclasses.replace(group, original=original, members=members))
        images = [e for e in self.images if e.page_path not in hidden_pages]
        return dataclasses.replace(
            self, pages=pages, images=images, resources=resources, duplicate_groups=groups
        )

    def write_truth(self, path: str | Path, base_url: str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(self.truth(base_url), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )


def _expected_reject(junk: list[str]) -> dict[str, str] | None:
    """The first reject in pipeline order: a 404 duplicate is dropped at download, not at dedup."""
    order = ["crawl", "download", "image_filter", "text_filter", "dedup", "clip_score"]
    rejects = [EXPECTED_REJECTS[k] for k in junk if EXPECTED_REJECTS.get(k)]
    if not rejects:
        return None
    return min(rejects, key=lambda r: order.index(r["stage"]))


# --- pictures ------------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buffer, "JPEG", quality=quality)
    else:
        image.save(buffer, "PNG", compress_level=1)  # lossless at any level; 1 is 3x faster than 6
    return buffer.getvalue()


def _style(path: str, line_drawing_fraction: float) -> str:
    """Filled shape or pen outline, decided by the picture's path (so the site's other draws do not move)."""
    return "outline" if zlib.crc32(path.encode()) % 1000 < line_drawing_fraction * 1000 else "filled"


def _banner(world: World, cls: str, rng: np.random.Generator, short_side: int) -> Image.Image:
    """A picture on a strip more than 5 times longer than wide (a page banner or a spacer)."""
    tile = world.render(cls, rng, short_side, None)
    long_side = int(short_side * rng.uniform(6.0, 8.0))
    corner = tuple(int(v) for v in np.asarray(tile)[:2, :2].reshape(-1, 3).mean(axis=0))
    horizontal = rng.random() < 0.7
    canvas = Image.new("RGB", (long_side, short_side) if horizontal else (short_side, long_side), corner)
    offset = int(rng.integers(0, long_side - short_side))
    canvas.paste(tile, (offset, 0) if horizontal else (0, offset))
    return canvas


def _near_duplicate(original: bytes, variant: str, rng: np.random.Generator) -> tuple[bytes, Image.Image]:
    """Another file of the same picture: re-encoded at a lower quality, resized, or shifted a few px."""
    image = Image.open(io.BytesIO(original)).convert("RGB")
    if variant == "resized":
        scale = rng.uniform(0.7, 0.85)
        image = image.resize(
            (max(8, int(image.width * scale)), max(8, int(image.height * scale))), Image.LANCZOS
        )
        return _encode(image, "JPEG", 85), image
    if variant == "shifted":
        dx, dy = (int(v) for v in rng.integers(2, 5, size=2))
        pixels = np.asarray(image)
        shifted = np.pad(pixels, ((dy, 0), (dx, 0), (0, 0)), mode="edge")[
            : pixels.shape[0], : pixels.shape[1]
        ]
        image = Image.fromarray(shifted)
        return _encode(image, "JPEG", 88), image
    return _encode(image, "JPEG", int(rng.integers(35, 60))), image


def _broken_bytes(rng: np.random.Generator, valid_jpeg: bytes) -> tuple[bytes, str]:
    """Bytes served as image/jpeg that are no picture: a cut-off JPEG, or an HTML error page."""
    if rng.random() < 0.5:
        cut = valid_jpeg[: max(64, len(valid_jpeg) // 10)]
        return cut + rng.integers(0, 256, size=64, dtype=np.uint8).tobytes(), "truncated"
    return b"<html><body><h1>Service unavailable</h1></body></html>", "html_as_image"


def _plural(shape: str) -> str:
    return shape + "es" if shape.endswith(("s", "x", "ch", "sh")) else shape + "s"


def foreign_caption(cls: str, language: str, rng: np.random.Generator) -> str:
    """A caption for `cls` in German, French or Spanish."""
    color, shape = split_class(cls)
    words = _FOREIGN[language]
    template = words["templates"][rng.integers(len(words["templates"]))]
    return template.format(c=words["colors"][color], s=words["shapes"][shape])


def _other_class(cls: str, rng: np.random.Generator) -> str:
    """A wrong class, half the time sharing the colour or the shape (a hard mismatch)."""
    color, shape = split_class(cls)
    roll = rng.random()
    if roll < 0.33:
        return f"{color} {rng.choice([s for s in SHAPES if s != shape])}"
    if roll < 0.66:
        return f"{rng.choice([c for c in COLORS if c != color])} {shape}"
    return str(rng.choice([c for c in CLASSES if c != cls]))


# --- worlds: what the pictures show ----------------------------------------------------------------


class World(Protocol):
    """What a site's pictures show and how its pages read; every choice is drawn from the site's rng."""

    def page(self, n: int, rng: np.random.Generator) -> PagePlan: ...

    def pick(self, plan: PagePlan, rng: np.random.Generator) -> str: ...

    def style(self, cls: str, path: str, rng: np.random.Generator) -> str: ...

    def render(self, cls: str, rng: np.random.Generator, size: int, style: str | None) -> Image.Image: ...

    def captions(self, cls: str, rng: np.random.Generator) -> tuple[str, str, str]: ...

    def foreign_caption(self, cls: str, language: str, rng: np.random.Generator) -> str: ...

    def other_class(self, cls: str, rng: np.random.Generator) -> str: ...

    def section_paragraph(self, cls: str | None, rng: np.random.Generator) -> str: ...

    def begin_site(self) -> None:
        """Called once before a site is built (a world that remembers what it served starts afresh)."""

    def shown_as_junk(self, cls: str) -> None:
        """The picture `style` chose last went out as junk a pipeline must reject (broken bytes, a wrong
        caption, another language, ...): a world that serves each picture once may show it again."""


@dataclass
class PagePlan:
    """A page's texts before its pictures: title, intro, language, section headings, and its topic."""

    title: str
    intro: str
    lang: str
    headings: list[str]
    topic: Any = None


class ShapesWorld:
    """The generated world: 36 colour-shape classes (testbed/shapes.py), one in five drawn as an outline."""

    def begin_site(self) -> None:
        pass

    def shown_as_junk(self, cls: str) -> None:
        pass

    def __init__(self, line_drawing_fraction: float = 0.2) -> None:
        self.line_drawing_fraction = line_drawing_fraction

    def page(self, n: int, rng: np.random.Generator) -> PagePlan:
        theme = str(rng.choice(_PAGE_THEMES))
        first_color, second_color = rng.choice(COLORS, size=2, replace=False)
        title = f"{theme} {n + 1}: {first_color} and {second_color} {_plural(str(rng.choice(SHAPES)))}"
        intro = " ".join(rng.choice(_INTRO_SENTENCES, size=2, replace=False))
        headings = rng.choice(_SECTION_HEADINGS, size=min(3, len(_SECTION_HEADINGS)), replace=False)
        return PagePlan(title, intro, "", [str(h) for h in headings])

    def pick(self, plan: PagePlan, rng: np.random.Generator) -> str:
        return str(rng.choice(CLASSES))

    def style(self, cls: str, path: str, rng: np.random.Generator) -> str:
        return _style(path, self.line_drawing_fraction)

    def render(self, cls: str, rng: np.random.Generator, size: int, style: str | None) -> Image.Image:
        return (
            render_shape_image(cls, rng, size) if style is None else render_shape_image(cls, rng, size, style)
        )

    def captions(self, cls: str, rng: np.random.Generator) -> tuple[str, str, str]:
        return _captions(cls, rng)

    def foreign_caption(self, cls: str, language: str, rng: np.random.Generator) -> str:
        return foreign_caption(cls, language, rng)

    def other_class(self, cls: str, rng: np.random.Generator) -> str:
        return _other_class(cls, rng)

    def section_paragraph(self, cls: str | None, rng: np.random.Generator) -> str:
        color, shape = split_class(cls or str(rng.choice(CLASSES)))
        return " ".join(
            s.format(c=color, s=shape, ss=_plural(shape))
            for s in rng.choice(_SECTION_SENTENCES, 2, replace=False)
        )


# --- site generation --------------------------------------------------------------------------------


def _captions(cls: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """(figcaption, alt, title attribute) of a clean picture: phrasings vary, alt and title are often missing."""
    reference = caption_for(cls, rng)
    alt = caption_for(cls, rng) if rng.random() < 0.7 else ""
    attribution = f"{caption_for(cls, rng)} (by {rng.choice(_AUTHORS)})" if rng.random() < 0.4 else ""
    return reference, alt, attribution


def _assign_kinds(slots: int, options: SiteOptions, rng: np.random.Generator) -> list[list[str]]:
    """Per image slot, its junk kinds: every spread kind at least once, about `junk_fraction` in all."""
    junk_slots = max(len(_SPREAD_KINDS) + 1, round(slots * options.junk_fraction))
    junk_slots = min(junk_slots, max(slots - 4, 0))
    kinds: list[list[str]] = [[] for _ in range(slots)]
    order = rng.permutation(slots)
    for n, slot in enumerate(order[:junk_slots]):
        kinds[slot] = [_SPREAD_KINDS[n % len(_SPREAD_KINDS)]] if n > 0 else ["slow_response"]
    return kinds


def build_site(pages: int = 40, seed: int = 0, options: SiteOptions = SiteOptions()) -> Site:
    """Generate the whole site in memory: pages, image bytes, redirects, errors and the truth.

    Deterministic from `seed`: the same arguments give byte-identical responses.
    """
    if pages < 3:
        raise ValueError(f"pages={pages}: the site needs at least 3 pages to hold every kind of junk")
    if options.image_size < 48:
        raise ValueError(
            f"image_size={options.image_size}: use at least 48 px (small junk is under {MIN_SIDE})"
        )
    rng = np.random.default_rng(seed)
    world = options.world or ShapesWorld(options.line_drawing_fraction)
    world.begin_site()
    lo, hi = options.images_per_page
    per_page = [int(rng.integers(lo, hi + 1)) for _ in range(pages)]
    slots = sum(per_page)
    kinds = _assign_kinds(slots, options, rng)
    resources: dict[str, Resource] = {}
    images: list[ImageEntry] = []
    site_pages: list[Page] = []
    clean_originals: list[ImageEntry] = []
    deferred: list[ImageEntry] = []  # duplicates: made once every original exists
    used_names: set[str] = set()

    def media_path(prefix: str, ext: str) -> str:
        while True:
            name = f"{prefix}{int(rng.integers(0, 16**8)):08x}{ext}"
            if name not in used_names:
                used_names.add(name)
                return name

    def make_image(
        page_path: str, junk: list[str], media_prefix: str = "/media/", plan: PagePlan | None = None
    ) -> ImageEntry:
        cls = world.pick(plan, rng)
        reference, alt, attribution = world.captions(cls, rng)
        fmt = "PNG" if rng.random() < 0.25 else "JPEG"
        ext = ".png" if fmt == "PNG" else ".jpg"
        entry = ImageEntry(
            path=media_path(media_prefix, ext),
            page_path=page_path,
            cls=cls,
            caption_class=cls,
            reference=reference,
            alt=alt,
            attribution=attribution,
            caption_language="en",
            junk=list(junk),
            mime="image/png" if fmt == "PNG" else "image/jpeg",
        )
        entry.in_figure = rng.random() < 0.9 or not alt
        kind = junk[0] if junk else None
        size = int(options.image_size * rng.choice([0.75, 1.0, 1.25]))
        chose_style = False  # small_image and extreme_aspect draw a picture of their own
        if kind == "small_image":
            picture = world.render(cls, rng, int(rng.integers(16, MIN_SIDE)), None)
        elif kind == "extreme_aspect":
            picture = _banner(world, cls, rng, int(rng.integers(40, 64)))
        else:
            entry.style = world.style(cls, entry.path, rng)
            chose_style = True
            picture = world.render(cls, rng, size, entry.style)
        body = _encode(picture, fmt, int(rng.integers(80, 96)))
        entry.width, entry.height = picture.size
        headers: list[tuple[str, str]] = []
        delay = 0.0
        if kind == "broken_image":
            body, entry.variant = _broken_bytes(rng, _encode(picture, "JPEG"))
            entry.mime, entry.path = "image/jpeg", media_path(media_prefix, ".jpg")
        elif kind == "noai_header":
            headers.append(("X-Robots-Tag", "noai, noimageai"))
        elif kind == "slow_response":
            delay = options.slow_delay_s
        elif kind in ("filename_caption", "generic_caption", "empty_caption"):
            if kind == "filename_caption":
                text = f"IMG_{int(rng.integers(1000, 9999))}.{rng.choice(['JPG', 'jpg', 'jpeg', 'png'])}"
                entry.variant = "file name"
            elif kind == "generic_caption":
                text = str(rng.choice(_GENERIC_CAPTIONS))
            else:
                text = ""
            entry.reference, entry.alt, entry.attribution = text, text, ""
            entry.caption_class = None
            entry.in_figure = True
        elif kind == "non_english":
            language = str(rng.choice(FOREIGN_LANGUAGES)) if plan is None or not plan.lang else plan.lang
            entry.reference = world.foreign_caption(cls, language, rng)
            entry.alt = world.foreign_caption(cls, language, rng) if rng.random() < 0.7 else ""
            entry.attribution = ""
            entry.caption_language = entry.variant = language
            entry.in_figure = True
        elif kind == "mismatched_caption":
            wrong = world.other_class(cls, rng)
            entry.caption_class = wrong
            entry.reference, entry.alt, entry.attribution = world.captions(wrong, rng)
            entry.in_figure = True

        if chose_style and EXPECTED_REJECTS.get(kind or ""):
            world.shown_as_junk(cls)
        if kind in ("http_404", "http_500"):
            entry.status = 404 if kind == "http_404" else 500
            entry.served_path = entry.path
            message = (
                b"<html><body><h1>Not Found</h1></body></html>" if entry.status == 404 else b"Internal error"
            )
            resources[entry.path] = Resource(status=entry.status, body=message)
            entry.sha256 = None
            return entry
        if kind == "redirect_loop":
            hop = media_path("/loop/", "")
            entry.path, entry.served_path, entry.status = f"{hop}/a", f"{hop}/a", 302
            resources[f"{hop}/a"] = Resource(status=302, headers=(("Location", f"{hop}/b"),))
            resources[f"{hop}/b"] = Resource(status=302, headers=(("Location", f"{hop}/a"),))
            return entry
        served = entry.path
        if kind == "redirect_chain":
            hop = media_path("/go/", "")
            hops = int(rng.integers(2, 4))
            entry.path = f"{hop}/1"
            for n in range(1, hops + 1):
                target = f"{hop}/{n + 1}" if n < hops else served
                # a mix of absolute-path and relative Location headers, both legal
                location = target if n % 2 else target.rsplit("/", 1)[-1] if n < hops else target
                resources[f"{hop}/{n}"] = Resource(
                    status=301 if n == 1 else 302, headers=(("Location", location),)
                )
        entry.served_path = served
        entry.sha256 = hashlib.sha256(body).hexdigest()
        resources[served] = Resource(
            body=body, content_type=entry.mime, headers=tuple(headers), delay_s=delay
        )
        return entry

    page_paths = [f"/gallery/p{n:03d}.html" for n in range(pages)]
    private_path = "/private/album.html"
    slot = 0
    for n, path in enumerate(tqdm(page_paths, desc="testweb pages", unit="page", disable=None, leave=False)):
        plan = world.page(n, rng)
        title, intro, headings = plan.title, plan.intro, plan.headings
        sections: list[Section] = []
        n_sections = int(rng.integers(2, 4))
        entries = []
        for _ in range(per_page[n]):
            junk = kinds[slot]
            slot += 1
            if plan.lang and not junk:
                junk = ["non_english"]  # a page in another language: every clean picture's text is in it
            if junk and junk[0] in ("exact_duplicate", "near_duplicate"):
                entry = ImageEntry(
                    path="", page_path=path, cls=None, caption_class=None, reference="", alt="", attribution="",
                    caption_language="en", junk=list(junk),
                )  # fmt: skip
                deferred.append(entry)
            else:
                entry = make_image(path, junk, plan=plan)
                if not junk:
                    clean_originals.append(entry)
            entries.append(entry)
        for k in range(n_sections):
            section_entries = entries[k::n_sections]
            first = section_entries[0] if section_entries else None
            paragraph = world.section_paragraph(first.cls if first is not None else None, rng)
            section = Section(
                heading=str(headings[k % len(headings)]), paragraph=paragraph, images=section_entries
            )
            for entry in section_entries:
                entry.section_title, entry.context = section.heading, paragraph
            sections.append(section)
        # Links: the index, the next page, and a few others written in every legal way (relative, absolute path,
        # with fragments) so the crawler's normalisation and dedup are exercised.
        others = rng.choice(pages, size=min(3, pages), replace=False)
        links = ["/", page_paths[(n + 1) % pages] + "#top"]
        links += [f"p{int(o):03d}.html" for o in others] + [
            "../gallery/" + page_paths[int(others[0])].split("/")[-1]
        ]
        if n % 10 == 3:
            links += [private_path, "/moved.html", "/missing.html", "/error.html"]
        lang = plan.lang or str(rng.choice(["en", "en", "en-GB", "en-US"]))
        site_pages.append(
            Page(path=path, title=title, lang=lang, intro=intro, sections=sections, links=links)
        )

    # Duplicates copy a clean original from anywhere on the site, under a new URL and a fresh caption.
    duplicate_groups: dict[str, DuplicateGroup] = {}
    near_count = 0
    for entry in deferred:
        original = clean_originals[int(rng.integers(len(clean_originals)))]
        original_body = resources[original.served_path].body
        entry.cls = entry.caption_class = original.cls
        entry.reference, entry.alt, entry.attribution = world.captions(original.cls, rng)
        if entry.junk[0] == "exact_duplicate":
            body, entry.mime = original_body, original.mime
            entry.width, entry.height = original.width, original.height
            ext = ".png" if entry.mime == "image/png" else ".jpg"
            group_kind = "exact"
        else:
            entry.variant = NEAR_DUPLICATE_VARIANTS[near_count % len(NEAR_DUPLICATE_VARIANTS)]
            near_count += 1
            body, picture = _near_duplicate(original_body, entry.variant, rng)
            entry.mime, ext = "image/jpeg", ".jpg"
            entry.width, entry.height = picture.size
            group_kind = "near"
        entry.path = entry.served_path = media_path("/media/", ext)
        entry.sha256 = hashlib.sha256(body).hexdigest()
        entry.duplicate_of = original.path
        resources[entry.path] = Resource(body=body, content_type=entry.mime)
        group = duplicate_groups.get(original.path)
        if group is None:
            group = duplicate_groups[original.path] = DuplicateGroup(
                group=len(duplicate_groups), kind=group_kind, original=original.path, members=[original.path]
            )
        elif group.kind != group_kind:
            group.kind = "mixed"
        group.members.append(entry.path)
        entry.dup_group = original.dup_group = group.group

    # The page robots.txt forbids: clean-looking pictures that a polite crawler never sees.
    private_entries = [
        make_image(private_path, ["robots_disallowed"], "/private/media/")
        for _ in range(options.private_images)
    ]
    for entry in private_entries:
        entry.in_wit = False
        entry.section_title, entry.context = "Private album", "Pictures shared with club members only."
    site_pages.append(
        Page(
            path=private_path,
            title="Private album (members only)",
            lang="en",
            intro="These pictures are for members only; please do not copy them.",
            sections=[Section("Private album", "Pictures shared with club members only.", private_entries)],
            links=["/"],
        )
    )

    if options.corpus is not None:
        site_pages += _corpus_pages(Path(options.corpus), options.corpus_limit, resources)

    for page in site_pages:
        all_entries = [e for s in page.sections for e in s.images]
        for entry in all_entries:
            if not entry.in_figure:
                entry.reference = ""  # a bare <img> has no <figcaption>: its text is in alt only
        if all_entries:
            all_entries[0].is_main_image = True
        images.extend(all_entries)
        resources[page.path] = Resource(
            body=render_page(page), content_type=f"text/html; charset={page.encoding}"
        )

    resources["/"] = Resource(body=_render_index(site_pages))
    resources["/index.html"] = Resource(status=301, headers=(("Location", "/"),))
    resources["/robots.txt"] = Resource(body=ROBOTS_TXT.encode(), content_type="text/plain")
    resources["/moved.html"] = Resource(status=301, headers=(("Location", page_paths[0]),))
    resources["/error.html"] = Resource(status=500, body=b"Internal error")
    resources["/missing.html"] = Resource(status=404, body=b"<html><body>Not Found</body></html>")
    site = Site(seed, options, site_pages, images, resources, list(duplicate_groups.values()))
    if options.hostile:
        _add_hostile(site)
    return site


def _render_index(pages: list[Page]) -> bytes:
    items = "\n".join(f'<li><a href="{html.escape(p.path)}">{html.escape(p.title)}</a></li>' for p in pages)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Drawing club: all galleries</title>'
        "</head><body><h1>Drawing club</h1><p>All our galleries, newest last.</p>"
        f"<ul>\n{items}\n<li><a href='/moved.html'>Old gallery address</a></li></ul></body></html>\n"
    ).encode()


def render_page(page: Page) -> bytes:
    """The page's HTML, encoded as the page declares (<meta charset> and the Content-Type header agree)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{esc(page.lang)}"><head><meta charset="{page.encoding}">',
        f"<title>{esc(page.title)}</title></head><body>",
        f'<a id="top"></a><h1>{esc(page.title)}</h1>',
        f"<p class='intro'>{esc(page.intro)}</p>",
    ]
    for section in page.sections:
        parts.append(f"<h2>{esc(section.heading)}</h2>\n<p>{esc(section.paragraph)}</p>")
        for entry in section.images:
            attrs = f'src="{esc(entry.path)}" alt="{esc(entry.alt)}"'
            if entry.attribution:
                attrs += f' title="{esc(entry.attribution)}"'
            if entry.width and entry.height:
                attrs += f' width="{entry.width}" height="{entry.height}"'
            if entry.in_figure:
                caption = f"<figcaption>{esc(entry.reference)}</figcaption>" if entry.reference else ""
                parts.append(f"<figure><img {attrs}>{caption}</figure>")
            else:
                parts.append(f"<p><img {attrs}></p>")
    nav = " | ".join(
        f'<a href="{esc(link)}">{esc(link.rsplit("/", 1)[-1] or "home")}</a>' for link in page.links
    )
    parts.append(f"<nav>{nav}</nav></body></html>\n")
    return "\n".join(parts).encode(page.encoding, errors="xmlcharrefreplace")


def _add_hostile(site: Site) -> None:
    """Crawler torture pages, reachable only by seeding them explicitly."""
    delay = site.options.slow_delay_s
    leaf_links = "".join(f'<a href="/hostile/leaf/{n}.html">{n}</a> ' for n in range(10_000))
    latin1_image = ImageEntry(
        path="/hostile/cp1252.png", page_path="/hostile/latin1.html", cls="red circle", caption_class="red circle",
        reference="Un cercle rouge dessiné à la main, été", alt="cercle rouge", attribution="",
        caption_language="fr",
    )  # fmt: skip
    latin1_page = Page(
        path="/hostile/latin1.html",
        title="Galerie d'été: café et crème",
        lang="fr",
        intro="Dessins reçus pendant l'été, très colorés.",
        sections=[Section("Première série", "Les élèves ont dessiné à la main.", [latin1_image])],
        links=["/"],
        encoding="iso-8859-1",
    )
    hostile = {
        "huge": ("/hostile/huge.html", Resource(stream="huge")),
        "endless": ("/hostile/endless.html", Resource(stream="endless")),
        "many_links": (
            "/hostile/many-links.html",
            Resource(
                body=f"<html><head><title>Index of everything</title></head><body>{leaf_links}</body></html>".encode()
            ),
        ),
        "redirect_loop": (
            "/hostile/loop-a.html",
            Resource(status=302, headers=(("Location", "/hostile/loop-b.html"),)),
        ),
        "redirect_private": (
            "/hostile/to-private.html",
            Resource(status=302, headers=(("Location", "http://10.0.0.1/admin"),)),
        ),
        "slow": ("/hostile/slow.html", Resource(body=b"<html><title>Slow</title></html>", delay_s=delay)),
        "latin1": (
            latin1_page.path,
            Resource(body=render_page(latin1_page), content_type="text/html; charset=iso-8859-1"),
        ),
        # no charset in the header: only <meta> says windows-1252 (curly quotes 0x93/0x94, euro 0x80)
        "cp1252_meta": (
            "/hostile/cp1252.html",
            Resource(
                body=(
                    '<html lang="en"><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1252">'
                    "<title>\u201cPrice list\u201d \u20ac5</title></head><body><h2>Cut-outs \u2013 cheap</h2>"
                    '<figure><img src="/hostile/cp1252.png" alt="a \u201cred\u201d circle"><figcaption>'
                    "Red circle for \u20ac5</figcaption></figure></body></html>"
                ).encode("cp1252"),
                content_type="text/html",
            ),
        ),
    }
    icon = render_shape_image("red circle", np.random.default_rng(site.seed), 64)
    site.resources["/hostile/cp1252.png"] = Resource(body=_encode(icon, "PNG"), content_type="image/png")
    # pages that ask not to be used: one by <meta name=robots>, one by header; each has a picture and a link
    opt_out = (
        '<html lang="en"><head>{meta}<title>Opted out</title></head><body><figure><img src="/hostile/cp1252.png"'
        ' alt="red circle"><figcaption>A red circle</figcaption></figure><a href="/hostile/leaf/{n}.html">more</a>'
        "</body></html>"
    )
    meta = '<meta name="robots" content="noimageai, nofollow">'
    hostile["noai_meta"] = ("/hostile/noai-meta.html", Resource(body=opt_out.format(meta=meta, n=1).encode()))
    hostile["noai_header"] = (
        "/hostile/noai-header.html",
        Resource(body=opt_out.format(meta="", n=2).encode(), headers=(("X-Robots-Tag", "noai, nofollow"),)),
    )
    site.resources["/hostile/loop-b.html"] = Resource(
        status=302, headers=(("Location", "/hostile/loop-a.html"),)
    )
    for name, (path, resource) in hostile.items():
        site.resources[path] = resource
        site.hostile_paths[name] = path


def _corpus_metadata(picture: Path) -> tuple[str, str, str]:
    """(title, description, keywords) from a sidecar .json/.txt/.svg, else from the file name."""
    title, description, keywords = picture.stem.replace("_", " ").replace("-", " ").strip(), "", ""
    svg_twin = None
    parts = picture.parts
    if "png" in parts:
        i = len(parts) - 1 - parts[::-1].index("png")
        svg_twin = Path(*parts[:i], "svg", *parts[i + 1 :]).with_suffix(".svg")
    for sidecar in (
        picture.with_suffix(".json"),
        picture.with_suffix(".txt"),
        picture.with_suffix(".svg"),
        svg_twin,
    ):
        if sidecar is None or not sidecar.is_file():
            continue
        try:
            if sidecar.suffix == ".json":
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
                kw = meta.get("keywords", "")
                return (
                    str(meta.get("title") or title),
                    str(meta.get("description") or ""),
                    ", ".join(kw) if isinstance(kw, list) else str(kw),
                )
            if sidecar.suffix == ".txt":
                lines = sidecar.read_text(encoding="utf-8", errors="replace").strip().splitlines()
                return (lines[0].strip() if lines else title), " ".join(lines[1:]).strip(), ""
            root = ET.parse(sidecar).getroot()
            found = {el.tag.rsplit("}", 1)[-1]: (el.text or "").strip() for el in root.iter()}
            return found.get("title") or title, found.get("description", ""), found.get("subject", "")
        except (OSError, ValueError, ET.ParseError):
            continue  # a broken sidecar falls back to the file name, like a page with no caption
    return title, description, keywords


def _corpus_pages(root: Path, limit: int, resources: dict[str, Resource]) -> list[Page]:
    if not root.is_dir():
        raise ValueError(f"--corpus {root}: not a directory (expected a folder of *.png / *.jpg pictures)")
    pictures = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:limit]
    if not pictures:
        raise ValueError(f"--corpus {root}: no *.png or *.jpg pictures found")
    pages = []
    for start in range(0, len(pictures), 8):
        batch = pictures[start : start + 8]
        page_path = f"/corpus/c{start // 8:03d}.html"
        category = batch[0].parent.name.replace("_", " ") or "clip art"
        section = Section(
            heading=category.capitalize(), paragraph=f"Clip art from the {category} collection."
        )
        for n, picture in enumerate(batch):
            title, description, keywords = _corpus_metadata(picture)
            body = picture.read_bytes()
            mime = "image/png" if picture.suffix.lower() == ".png" else "image/jpeg"
            path = f"/corpus/media/{start + n:05d}-{urllib.parse.quote(picture.stem[:40])}{picture.suffix.lower()}"
            try:
                with Image.open(io.BytesIO(body)) as im:
                    width, height = im.size
            except OSError:
                width = height = 0
            resources[path] = Resource(body=body, content_type=mime)
            entry = ImageEntry(
                path=path, page_path=page_path, cls=None, caption_class=None, reference=description or title,
                alt=title, attribution=f"keywords: {keywords}" if keywords else "", caption_language="und",
                served_path=path, mime=mime, width=width, height=height, sha256=hashlib.sha256(body).hexdigest(),
                section_title=section.heading, context=section.paragraph,
            )  # fmt: skip
            section.images.append(entry)
        pages.append(
            Page(path=page_path, title=f"Clip art: {category}", lang="en",
                 intro="Pictures from a public clip-art collection.", sections=[section], links=["/"])
        )  # fmt: skip
    return pages


# --- serving ----------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackWebServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        if self.server.verbose:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._respond(send_body=False)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._respond(send_body=True)

    def _respond(self, send_body: bool) -> None:
        site = self.server.site
        path = urllib.parse.urlsplit(self.path).path
        self.server.record(path)
        resource = site.resolve(path)
        if resource is None:
            resource = Resource(status=404, body=b"<html><body>Not Found</body></html>")
        delay = resource.delay_s + site.options.latency_s
        if delay and self.server.stopping.wait(delay):
            return  # server is shutting down
        if resource.stream:
            self._stream(resource.stream, send_body)
            return
        self.send_response(resource.status)
        self.send_header("Content-Type", resource.content_type)
        self.send_header("Content-Length", str(len(resource.body)))
        for name, value in resource.headers:
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(resource.body)

    def _stream(self, kind: str, send_body: bool) -> None:
        """Bodies that lie about or never end: the crawler must stop reading, not the server."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Connection", "close")
        if kind == "huge":
            self.send_header("Content-Length", str(LARGE_CONTENT_LENGTH))
        self.end_headers()
        if not send_body:
            return
        chunk = b"<p>" + b"x" * 65_530 + b"</p>\n"
        limit = 1 if kind == "huge" else 2_000  # at most ~130 MB, in case a client never stops
        try:
            for _ in range(limit):
                if self.server.stopping.is_set():
                    break
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


class LoopbackWebServer(ThreadingHTTPServer):
    """The test web's HTTP server; `start()` runs it in a daemon thread, `stop()` ends it."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, site: Site, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        super().__init__((host, port), _Handler)
        self.site = site
        self.verbose = verbose
        self.stopping = threading.Event()
        self.requests: list[str] = []  # every path asked for, in order (tests check what was fetched)
        self.request_times: list[float] = []  # time.monotonic() of each request, same order
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up early (timeouts, byte caps) are expected here, not errors of the site.
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        print(f"testweb: error serving {client_address}: {error!r}", file=sys.stderr)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)
            self.request_times.append(time.monotonic())

    def start(self) -> LoopbackWebServer:
        self._thread = threading.Thread(target=self.serve_forever, name="testweb", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()

    def __enter__(self) -> LoopbackWebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(site: Site, host: str = "127.0.0.1", port: int = 0, verbose: bool = False) -> LoopbackWebServer:
    """Bind a server for `site` (port 0: any free port); call `.start()` to run it in a thread."""
    return LoopbackWebServer(site, host, port, verbose)


# --- command line -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.testweb",
        description="Serve a generated web site with known content and known junk on 127.0.0.1.",
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="port to listen on; 0 picks a free one (default: 8765)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)"
    )
    parser.add_argument(
        "--pages", type=int, default=40, help="number of gallery pages (default: 40, ~280 images)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every choice on the site (default: 0)")
    parser.add_argument("--wit", type=Path, help="write the site as a WIT-format TSV here")
    parser.add_argument(
        "--truth", type=Path, help="write the truth JSON (class and junk of every image URL) here"
    )
    parser.add_argument(
        "--world",
        choices=("shapes", "corpus"),
        default="shapes",
        help="what the gallery pages show: generated coloured shapes (default), or the real emoji/icon corpus "
        "of `python -m testbed.corpus fetch` (testbed/corpus_web.py; the held-out style and concepts are not served)",
    )
    parser.add_argument(
        "--corpus", type=Path, help="also serve a folder of real pictures (see the module docstring)"
    )
    parser.add_argument(
        "--corpus-limit", type=int, default=400, help="at most this many corpus pictures (default: 400)"
    )
    parser.add_argument(
        "--image-size", type=int, default=128, help="typical side of the pictures in px (default: 128)"
    )
    parser.add_argument(
        "--junk-fraction", type=float, default=0.22, help="share of junk pictures (default: 0.22)"
    )
    parser.add_argument(
        "--line-drawing-fraction",
        type=float,
        default=0.2,
        help="share of pictures drawn as a pen outline rather than a filled shape (default: 0.2)",
    )
    parser.add_argument(
        "--slow-delay", type=float, default=3.0, help="seconds the slow response waits (default: 3)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to every response (default: 0)"
    )
    parser.add_argument(
        "--hostile", action="store_true", help="also serve the crawler torture pages under /hostile/"
    )
    parser.add_argument(
        "--no-serve", action="store_true", help="write --wit/--truth and exit without serving"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a TCP port (0-65535)", file=sys.stderr)
        return 2
    if not 0.0 <= args.junk_fraction <= 0.9:
        print(f"error: --junk-fraction {args.junk_fraction} must be between 0 and 0.9", file=sys.stderr)
        return 2
    if not 0.0 <= args.line_drawing_fraction <= 1.0:
        print(
            f"error: --line-drawing-fraction {args.line_drawing_fraction} must be between 0 and 1",
            file=sys.stderr,
        )
        return 2
    world = None
    if args.world == "corpus":
        from common.errors import UserError
        from testbed.corpus import load_corpus
        from testbed.corpus_web import CorpusWorld

        try:
            world = CorpusWorld(load_corpus())
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    options = SiteOptions(
        world=world,
        image_size=args.image_size,
        junk_fraction=args.junk_fraction,
        line_drawing_fraction=args.line_drawing_fraction,
        slow_delay_s=args.slow_delay,
        latency_s=args.latency,
        hostile=args.hostile,
        corpus=args.corpus,
        corpus_limit=args.corpus_limit,
    )
    try:
        site = build_site(args.pages, args.seed, options)
        server = serve(site, args.host, args.port, verbose=args.verbose)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"error: cannot listen on {args.host}:{args.port} ({exc.strerror}); pick another --port",
            file=sys.stderr,
        )
        return 2
    base_url = server.base_url
    if args.wit:
        rows = site.write_wit(args.wit, base_url)
        print(f"wrote {rows} WIT rows to {args.wit}")
    if args.truth:
        site.write_truth(args.truth, base_url)
        print(f"wrote truth for {len(site.images)} images to {args.truth}")
    if args.no_serve:
        server.server_close()
        return 0
    junk = sum(1 for e in site.images if e.junk)
    print(
        f"serving {len(site.pages)} pages, {len(site.images)} images ({junk} junk) at {base_url}/ ; Ctrl-C stops"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
