"""pipelines.artifacts: the inlined picture of an image artifact is a small, decodable thumbnail of the file."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from pipelines.artifacts import MAX_INLINE_SIDE, image_data_uri, markdown_table


def test_image_data_uri_is_a_jpeg_thumbnail_of_the_picture(tmp_path):
    # A 1200 x 900 picture, left half red, right half blue, like a contact sheet's big flat areas.
    pixels = np.zeros((900, 1200, 3), np.uint8)
    pixels[:, :600] = (220, 30, 30)
    pixels[:, 600:] = (30, 30, 220)
    path = tmp_path / "sheet.png"
    Image.fromarray(pixels).save(path)

    uri = image_data_uri(path)

    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    data = base64.b64decode(uri[len(prefix) :])
    with Image.open(io.BytesIO(data)) as thumb:
        assert thumb.format == "JPEG"
        assert thumb.size == (MAX_INLINE_SIDE, 480)  # longer side shrunk to 640, aspect kept
        small = np.asarray(thumb.convert("RGB"), dtype=int)
    # The picture survives the encoding: each half keeps its colour within JPEG's error.
    assert np.abs(small[:, :300] - (220, 30, 30)).mean() < 8
    assert np.abs(small[:, 340:] - (30, 30, 220)).mean() < 8
    # Small enough to keep in the Prefect database with every run.
    assert len(uri) < 60_000


def test_markdown_table_escapes_cells():
    table = markdown_table([{"reason": "a|b", "n": 0.123456}])
    assert table.splitlines()[2] == "| a\\|b | 0.1235 |"
