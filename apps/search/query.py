"""Turn what a user sends (words, a picture, a picture's URL) into a query vector.

The CLIP is the one the index was built with. Pictures are checked before they reach it: size
limit, decodable, not a decompression bomb. A picture by URL is fetched by curation's guarded
fetch (`curation.fetch`): every hop (redirects included) passes the address guard
(`curation.netguard`), the connection goes to the address that was checked, the body is capped,
one deadline covers it all, and robots.txt / X-Robots-Tag opt-outs are honoured.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from apps.search.embed import encode_images, encode_texts
from common.errors import UserError
from curation.fetch import FetchFailed, FetchPolicy, fetch
from curation.netguard import UrlRefused

MAX_QUERY_CHARS = 1_000
MAX_PIXELS = 40_000_000  # a decoded picture larger than this is refused (decompression bombs)


class QueryError(UserError, ValueError):
    """The query cannot be answered as sent; the message says what to send instead."""


def url_policy(
    allow_networks: tuple[str, ...] = (), max_bytes: int = 8 << 20, timeout_s: float = 10.0
) -> FetchPolicy:
    """The guarded fetch's bounds for a picture URL (private addresses only in `allow_networks`)."""
    return FetchPolicy(allow_networks=tuple(allow_networks), max_bytes=max_bytes, timeout_s=timeout_s)


@dataclass
class QueryEncoder:
    """Embeds queries with the index's CLIP; one query at a time through the model, texts cached."""

    clip: object | None
    max_upload: int = 8 << 20
    url_policy: FetchPolicy = field(default_factory=url_policy)
    cache_size: int = 4096

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _need_clip(self, what: str):
        if self.clip is None:
            raise QueryError(
                f"this index has no CLIP (built from vectors): {what} needs one; query by id or vector"
            )
        return self.clip

    def text(self, query: str) -> np.ndarray:
        query = (query or "").strip()
        if not query:
            raise QueryError('empty query: type a few words, e.g. "a red circle", or search by image')
        if len(query) > MAX_QUERY_CHARS:
            raise QueryError(f"query of {len(query):,} characters: at most {MAX_QUERY_CHARS:,}")
        clip = self._need_clip("a text query")
        with self.lock:
            cached = self._cache.get(query)
            if cached is not None:
                self._cache.move_to_end(query)
                return cached
            vector = encode_texts(clip, [query])[0]
            self._cache[query] = vector
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return vector

    def image(self, data: bytes, source: str = "upload") -> np.ndarray:
        if not data:
            raise QueryError(f"{source}: empty; send the bytes of a JPEG, PNG, GIF or WebP picture")
        if len(data) > self.max_upload:
            raise QueryError(f"{source}: {len(data):,} bytes, more than the {self.max_upload:,} allowed")
        picture = decode_picture(data, source)
        clip = self._need_clip("an image query")
        with self.lock:
            return encode_images(clip, [picture])[0]

    def image_url(self, url: str) -> np.ndarray:
        return self.image(fetch_picture(url, self.url_policy), source=url)


def decode_picture(data: bytes, source: str) -> Image.Image:
    """The picture in `data`, RGB, or QueryError naming `source` and what is wrong."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise QueryError(
                    f"{source}: {im.width}x{im.height} pixels is more than the {MAX_PIXELS:,} allowed; send a smaller picture"
                )
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        if isinstance(exc, QueryError):
            raise
        raise QueryError(
            f"{source}: not a picture this server can read ({type(exc).__name__}); send a JPEG, PNG, GIF or WebP"
        ) from None


def fetch_picture(url: str, policy: FetchPolicy) -> bytes:
    """GET a picture through curation's guarded fetch (see module doc), or QueryError."""
    try:
        fetched = fetch(url, policy)
    except (FetchFailed, UrlRefused) as exc:
        raise QueryError(f"{url}: {exc}") from None
    if fetched.status != 200:
        raise QueryError(f"{url}: the server answered HTTP {fetched.status} {fetched.reason}".rstrip())
    return fetched.body
