"""Read a WIT-format TSV (the 17 columns of the public release), streamed, gzip accepted.

Every line becomes either a candidate (url + caption chosen by the caption policy) or a
reject with a reason; nothing is dropped silently. Memory stays at one line, and a line is
capped (`max_line_bytes`) so a 10 MB caption or a file without newlines cannot blow it up.
"""

from __future__ import annotations

import gzip
import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from common.errors import UserError
from curation.schema import WIT_COLUMNS, WIT_TEXT_COLUMNS

# The WIT text columns that ride along into the record schema.
KEPT_COLUMNS = WIT_TEXT_COLUMNS
READ_STAGE = "read"
MAX_LINE_BYTES = 1 << 20  # real WIT rows are a few KB; 1 MB leaves room for long context paragraphs
MAX_URL_CHARS = 2048
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HOST = re.compile(r"^[A-Za-z0-9.\-_~%]+$|^\[[0-9A-Fa-f:.]+\]$")
# The page number of a listing spread over pages, at the end of its title: "Birds (part 3)", "Gallery -
# Page 2 of 9", "Fotos | Seite 4", "Mammals, p. 12". It names no picture on the page; left in, the pictures
# of one topic carry as many titles as the topic has pages, and a CLIP trained on the titles is asked to
# tell page 2's birds from page 3's (docs/corpus.md "Page numbers in page titles").
_PAGINATION = re.compile(
    r"\s*[-–—|:,·]?\s*[(\[]?\s*"
    r"\b(?:part|page|seite|teil|página|pagina|parte|partie|deel|pg\.?|p\.)\s*\d+"
    r"(?:\s*(?:of|/|von|de|di|sur|van)\s*\d+)?\s*[)\]]?\s*$",
    re.IGNORECASE,
)
_PAGINATION_TAIL = 64


class WitFormatError(UserError, ValueError):
    """The file is not a WIT TSV at all (missing, or its header is not the 17 WIT columns)."""


@dataclass(frozen=True)
class WitRow:
    """One line of the TSV: `fields` when it parsed, else `reason` (and `excerpt` of the raw line)."""

    line_number: int
    fields: dict[str, str] | None
    reason: str | None = None
    excerpt: str | None = None


def check_url(url: str) -> str | None:
    """None when `url` is an http(s) URL we may hand to a downloader, else a reason."""
    if not url:
        return "bad_url: empty"
    if len(url) > MAX_URL_CHARS:
        return f"bad_url: longer than {MAX_URL_CHARS} characters"
    if _CONTROL.search(url) or any(c.isspace() for c in url):
        return "bad_url: contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        return f"bad_url: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return f"bad_scheme: {scheme or 'none'}:// is not http(s)"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "credentials_in_url: user:password@ in the URL"
    host = parts.hostname or ""
    if not host or not _HOST.match(parts.netloc.rsplit(":", 1)[0] if port else parts.netloc):
        return f"bad_url: invalid host {parts.netloc[:60]!r}"
    if host.startswith("[") or ":" in host:
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return f"bad_url: invalid host {host[:60]!r}"
    return None


def _open_binary(path: Path) -> BinaryIO:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _read_lines(fh: BinaryIO, max_line_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """(line without newline, too_long) for each line; an over-long line is skipped in pieces."""
    while True:
        line = fh.readline(max_line_bytes + 1)
        if not line:
            return
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            head = line[:200]
            while line and not line.endswith(b"\n"):  # discard the rest without holding it
                line = fh.readline(max_line_bytes)
            yield head, True
            continue
        yield line.rstrip(b"\r\n"), False


def read_wit(path: Path | str, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[WitRow]:
    """Stream the rows of a WIT TSV (plain or gzip, with or without the header line)."""
    path = Path(path)
    if not path.is_file():
        raise WitFormatError(f"{path}: no such WIT file (give wit:PATH.tsv or wit:PATH.tsv.gz)")
    try:
        fh = _open_binary(path)
    except OSError as exc:
        raise WitFormatError(f"{path}: cannot open ({exc})") from exc
    with fh:
        try:
            for number, (raw, too_long) in enumerate(_read_lines(fh, max_line_bytes), start=1):
                yield _parse_line(number, raw, too_long, max_line_bytes)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            # A truncated gzip: keep what was read, report the rest as one reject.
            yield WitRow(0, None, f"truncated_file: {exc}", None)


def _excerpt(raw: bytes) -> str:
    return raw[:200].decode("utf-8", errors="replace")


def _parse_line(number: int, raw: bytes, too_long: bool, max_line_bytes: int) -> WitRow:
    if too_long:
        return WitRow(number, None, f"line_too_long: more than {max_line_bytes} bytes", _excerpt(raw))
    if not raw.strip():
        return WitRow(number, None, "empty_line: no fields", None)
    if _CONTROL_BYTES.search(raw):  # text never holds these; a binary blob nearly always does
        return WitRow(number, None, "binary_garbage: control bytes in the line", _excerpt(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return WitRow(number, None, f"undecodable_text: not UTF-8 at byte {exc.start}", _excerpt(raw))
    values = text.split("\t")
    if len(values) != len(WIT_COLUMNS):
        return WitRow(
            number,
            None,
            f"wrong_field_count: {len(values)} tab-separated fields, expected {len(WIT_COLUMNS)}",
            _excerpt(raw),
        )
    fields = dict(zip(WIT_COLUMNS, values))
    if number == 1 and values == list(WIT_COLUMNS):
        return WitRow(number, None, "header", None)
    return WitRow(number, fields)


def without_pagination(title: str | None) -> str | None:
    """The page title without a page number at its end ("Birds (part 3)" -> "Birds"); a title that is
    nothing but a page number ("Page 2") stays as it is."""
    if not title:
        return title
    # Only the end is searched: a page number is short, and the pattern's leading spaces would make a
    # search over a long run of spaces (a hostile title of a megabyte) quadratic.
    head, tail = title[:-_PAGINATION_TAIL], title[-_PAGINATION_TAIL:]
    return (head + _PAGINATION.sub("", tail)).strip() or title


def page_fields(fields: dict[str, str | None]) -> dict[str, str | None]:
    """A page's text fields as the dataset keeps them: the page title without its page number."""
    return {**fields, "page_title": without_pagination(fields.get("page_title"))}


def choose_caption(fields: dict[str, str], policy: Sequence[str]) -> tuple[str | None, str | None]:
    """(caption, field it came from): the first non-empty field of the policy."""
    for name in policy:
        value = (fields.get(name) or "").strip()
        if value:
            return value, name
    return None, None


def wit_candidate(fields: dict[str, str], policy: Sequence[str]) -> tuple[dict, str | None]:
    """A candidate record for one parsed row, and the reason it is rejected (None if kept)."""
    url = fields["image_url"].strip()
    fields = page_fields(fields)
    caption, text_source = choose_caption(fields, policy)
    record = {name: (fields.get(name) or None) for name in KEPT_COLUMNS}
    record.update(url=url, caption=caption, text_source=text_source)
    reason = check_url(url)
    if reason is None and caption is None:
        reason = f"no_caption: none of {', '.join(policy)}"
    return record, reason
