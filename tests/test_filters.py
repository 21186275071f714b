"""Text and image filters: each named function, each reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.config import BuildConfig
from curation.filters import (
    IMAGE_FILTERS,
    TEXT_FILTERS,
    detect_language,
    download_status,
    first_reject,
    reason_name,
)
from testbed.shapes import CAPTION_TEMPLATES, CLASSES
from testbed.testweb import FOREIGN_LANGUAGES, foreign_caption

CFG = BuildConfig(out=Path("unused"), languages=["en"])


def text_reason(caption: str | None, cfg: BuildConfig = CFG) -> str | None:
    result = first_reject({"caption": caption}, cfg, TEXT_FILTERS)
    return reason_name(result[1]) if result else None


@pytest.mark.parametrize(
    "caption, reason",
    [
        ("", "empty_caption"),
        ("   ", "empty_caption"),
        (None, "empty_caption"),
        ("image", "boilerplate"),
        ("Photo", "boilerplate"),
        ("picture 3", "boilerplate"),
        ("IMG_2041.JPG", "boilerplate"),
        ("DSC01234", "boilerplate"),
        ("my_holiday-photo (2).jpeg", "boilerplate"),
        ("https://example.org/pic.png", "boilerplate"),
        ("12345 - 678", "boilerplate"),
        ("circle", "too_few_words"),
        ("a b", "too_short"),
        ("word " * 400, "too_long"),
        ("Ein roter Kreis auf einem hellen Hintergrund, von Hand gezeichnet", "language"),
        ("a red circle on a white background", None),
        ("The Eiffel tower at night, seen from the river", None),
    ],
)
def test_text_filters(caption, reason):
    assert text_reason(caption) == reason


def test_language_allow_list_can_be_lifted():
    german = "Ein roter Kreis auf einem hellen Hintergrund, von Hand gezeichnet"
    assert text_reason(german, BuildConfig(out=Path("x"), languages=["any"])) is None
    assert text_reason(german, BuildConfig(out=Path("x"), languages=["de", "en"])) is None


def test_every_clean_shape_caption_is_kept_and_foreign_ones_dropped():
    # Short English captions are where language id is weakest: none may be dropped.
    for cls in CLASSES:
        color, shape = cls.split()
        for template in CAPTION_TEMPLATES:
            caption = template.format(c=color, s=shape)
            assert text_reason(caption) is None, caption
    rng = np.random.default_rng(0)
    for language in FOREIGN_LANGUAGES:
        for cls in CLASSES[:12]:
            caption = foreign_caption(cls, language, rng)
            assert text_reason(caption) == "language", caption
            assert detect_language(caption)[0] == language


@pytest.mark.parametrize(
    "status, message, reason",
    [
        ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", "noai"),
        ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
        ("failed_to_download", "HTTP Error 500: Internal Server Error", "http_error"),
        (
            "failed_to_download",
            "HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.",
            "redirect_loop",
        ),
        ("failed_to_download", "<urlopen error timed out>", "timeout"),
        ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "unreachable"),
        ("failed_to_resize", "Image decoding error: SVG is not a raster image", "undecodable"),
        ("failed_to_resize", "decompression bomb: 30000x30000 pixels > 100000000", "decompression_bomb"),
        ("failed_to_resize", "OpenCV(4.14.0) ... pixels <= CV_IO_MAX_IMAGE_PIXELS", "decompression_bomb"),
        ("success", None, None),
    ],
)
def test_download_status_reasons(status, message, reason):
    got = download_status({"status": status, "error_message": message}, CFG)
    assert (reason_name(got) if got else None) == reason


def jpg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "size, data, reason",
    [
        ((128, 96), None, None),
        ((20, 20), None, "too_small"),
        ((400, 60), None, "aspect_ratio"),  # a banner is a banner, even with a small side
        ((128, 128), b"not a jpeg", "undecodable"),
    ],
)
def test_image_filters(size, data, reason):
    row = {
        "status": "success",
        "jpg": data if data is not None else jpg(64, 64),
        "original_width": size[0],
        "original_height": size[1],
    }
    got = first_reject(row, CFG, IMAGE_FILTERS)
    assert (reason_name(got[1]) if got else None) == reason
