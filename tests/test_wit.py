"""WIT TSV reader: streamed, gzip, and every hostile line becomes a reject with a reason."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest

from curation.config import DEFAULT_CAPTION_POLICY
from curation.wit import (
    MAX_LINE_BYTES,
    WIT_COLUMNS,
    WitFormatError,
    check_url,
    read_wit,
    wit_candidate,
    without_pagination,
)


def wit_line(**values: str) -> str:
    row = {name: "" for name in WIT_COLUMNS}
    row.update(
        language="en",
        page_url="https://en.wikipedia.org/wiki/Circle",
        image_url="https://upload.wikimedia.org/a/red_circle.jpg",
        page_title="Circle",
        caption_reference_description="A red circle on white paper",
    )
    row.update(values)
    return "\t".join(row[name] for name in WIT_COLUMNS)


def write_lines(path: Path, lines: list[bytes], header: bool = True) -> Path:
    body = b"\n".join(([("\t".join(WIT_COLUMNS)).encode()] if header else []) + lines) + b"\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(body))
    else:
        path.write_bytes(body)
    return path


def parse(path: Path) -> list:
    return [r for r in read_wit(path) if r.reason != "header"]


def test_good_rows_plain_and_gzip_with_caption_policy(tmp_path):
    lines = [
        wit_line().encode(),
        wit_line(
            caption_reference_description="", caption_alt_text_description="A blue star drawn in ink"
        ).encode(),
        wit_line(
            caption_reference_description="", caption_attribution_description="English: A green heart"
        ).encode(),
    ]
    for name in ("site.tsv", "site.tsv.gz"):
        rows = parse(write_lines(tmp_path / name, lines))
        assert [r.reason for r in rows] == [None, None, None]
        picked = [wit_candidate(r.fields, DEFAULT_CAPTION_POLICY)[0] for r in rows]
        assert [p["text_source"] for p in picked] == list(DEFAULT_CAPTION_POLICY)
        assert picked[1]["caption"] == "A blue star drawn in ink"
        assert picked[0]["url"] == "https://upload.wikimedia.org/a/red_circle.jpg"
    # another policy: alt text first
    rows = parse(tmp_path / "site.tsv")
    record, reason = wit_candidate(rows[0].fields, ["caption_alt_text_description", "page_title"])
    assert (record["caption"], record["text_source"], reason) == ("Circle", "page_title", None)


@pytest.mark.parametrize(
    ("title", "kept"),
    [
        ("Animals and nature: animal mammal (part 30)", "Animals and nature: animal mammal"),
        ("Gallery - Page 2 of 9", "Gallery"),
        ("Fotos | Seite 4", "Fotos"),
        ("Mammals, p. 12", "Mammals"),
        ("Birds [page 3]", "Birds"),
        ("Aves \u2013 p\u00e1gina 2", "Aves"),
        # numbers that are not page numbers, and a title that is nothing but one
        ("Apollo 11", "Apollo 11"),
        ("Top 10 birds", "Top 10 birds"),
        ("Part 2: The Return", "Part 2: The Return"),
        ("Chapter 3", "Chapter 3"),
        ("Page 2", "Page 2"),
        ("", ""),
        (None, None),
    ],
)
def test_page_numbers_leave_page_titles(title, kept):
    assert without_pagination(title) == kept


def test_page_title_without_its_number_in_the_record_and_the_caption():
    fields = dict.fromkeys(WIT_COLUMNS, "")
    fields.update(image_url="https://example.org/a.png", page_title="Circles (part 3)")
    record, reason = wit_candidate(fields, ["page_title"])
    assert (record["page_title"], record["caption"], reason) == ("Circles", "Circles", None)
    # a megabyte of spaces before a page number: the search looks at the end only
    started = time.perf_counter()
    assert without_pagination("Circles" + " " * 1_000_000 + "(part 3)") == "Circles"
    assert time.perf_counter() - started < 1.0


def test_hostile_lines_are_rejected_with_reasons(tmp_path):
    lines = [
        b"short\trow\tonly",
        (wit_line() + "\textra\ttabs").encode(),
        bytes(b for b in range(256) if b != 10) * 4,  # binary garbage on one line
        wit_line(caption_reference_description="caf\xe9").encode("latin-1"),  # not UTF-8
        wit_line(caption_reference_description="x" * (10 * 1024 * 1024)).encode(),  # a 10 MB caption
        wit_line().encode(),  # still read after all of the above
    ]
    rows = parse(write_lines(tmp_path / "hostile.tsv", lines))
    reasons = [r.reason.split(":")[0] if r.reason else None for r in rows]
    assert reasons == [
        "wrong_field_count",
        "wrong_field_count",
        "binary_garbage",
        "undecodable_text",
        "line_too_long",
        None,
    ], [r.reason for r in rows]
    assert all(r.line_number == i + 2 for i, r in enumerate(rows))  # line numbers point into the file
    too_long = rows[4]
    assert len(too_long.excerpt) <= 200 and str(MAX_LINE_BYTES) in too_long.reason


@pytest.mark.parametrize(
    "url, reason",
    [
        ("file:///etc/passwd", "bad_scheme"),
        ("ftp://example.org/a.jpg", "bad_scheme"),
        ("javascript:alert(1)", "bad_scheme"),
        ("https://user:secret@example.org/a.jpg", "credentials_in_url"),
        ("https://user@example.org/a.jpg", "credentials_in_url"),
        ("http://exa mple.org/a.jpg", "bad_url"),
        ("http:///a.jpg", "bad_url"),
        ("http://example.org:99999/a.jpg", "bad_url"),
        ("", "bad_url"),
        ("https://upload.wikimedia.org/a/b.jpg", None),
        ("http://127.0.0.1:8000/media/a.png", None),
        ("http://[::1]:8000/a.png", None),
    ],
)
def test_check_url(url, reason):
    got = check_url(url)
    assert (got.split(":")[0] if got else None) == reason


def test_random_binary_block_does_not_stop_the_reader(tmp_path):
    garbage = np.random.default_rng(0).integers(0, 256, size=100_000, dtype=np.uint8).tobytes()
    rows = parse(write_lines(tmp_path / "garbage.tsv", [wit_line().encode(), garbage, wit_line().encode()]))
    assert rows[0].reason is None and rows[-1].reason is None
    assert len(rows) > 3 and all(r.reason for r in rows[1:-1])  # every garbage line has a reason


def test_bad_urls_and_missing_captions_in_a_file(tmp_path):
    lines = [
        wit_line(image_url="file:///etc/passwd").encode(),
        wit_line(image_url="https://u:p@example.org/x.jpg").encode(),
        wit_line(caption_reference_description="").encode(),
    ]
    rows = parse(write_lines(tmp_path / "urls.tsv", lines, header=False))
    reasons = [wit_candidate(r.fields, DEFAULT_CAPTION_POLICY)[1].split(":")[0] for r in rows]
    assert reasons == ["bad_scheme", "credentials_in_url", "no_caption"]


def test_truncated_gzip_keeps_rows_read_so_far(tmp_path):
    body = gzip.compress(("\n".join(wit_line() for _ in range(2000)) + "\n").encode())
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(body[: len(body) // 2])
    rows = list(read_wit(path))
    assert rows[-1].reason.startswith("truncated_file")
    assert len(rows) > 10 and all(r.reason is None for r in rows[:-1])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(WitFormatError, match="no such WIT file"):
        list(read_wit(tmp_path / "nope.tsv"))
