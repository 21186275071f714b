"""Stage 1 (source): crawl HTML pages from seed URLs and list every <img> with the texts WIT keeps.

    python -m curation.crawl --seed https://example.org/ --out candidates.parquet --max-pages 200

One row per image per page: `url` (the image), `page_url`, `page_title`, `section_title` (the nearest
heading above it), `caption_reference_description` (its <figcaption>), `caption_alt_text_description`
(`alt`), `caption_attribution_description` (`title`), `context_page_description` (the nearest
paragraph), `language` (<html lang>). Pages refused or failed go to `<out>.rejects.parquet`
(url, page_url, reject_stage, reject_reason).

Bounded everywhere: pages, depth, frontier size, bytes per response (a Content-Length over the cap is
refused before reading), seconds per request, redirects. Redirects are followed here, not by httpx,
so the address guard (curation/netguard.py) checks every hop, and the request goes to the address
that was checked (Host header and TLS SNI keep the name), so a second DNS answer cannot point it
elsewhere (DNS rebinding). Private and loopback addresses are refused unless `--allow-networks CIDR`
(e.g. 127.0.0.0/8) opens them; link-local and metadata addresses never. robots.txt is honoured (and its
Crawl-delay), as are `X-Robots-Tag` (plain or scoped to our agent token) / `<meta name=robots>` nofollow
and noai / noimageai / noindex / noimageindex / none. Pages are parsed by libxml2 (lxml), whose cost
grows linearly with the page; images listed per page and new image hosts per page are capped.

Resumable: each finished page is appended to a journal (`<out>.state/journal.jsonl`); a crawl that
was killed resumes from it without fetching finished pages again. `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import collections
import contextlib
import hashlib
import json
import os
import re
import sys
import time
import urllib.parse
import urllib.robotparser
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import lxml.etree
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from common.atomic import atomic_path, output_lock
from common.errors import UserError, one_line
from common.settings import ConfigError, add_arguments, from_namespace
from curation.fetch import AGENT_TOKEN, NOAI_DIRECTIVES, robots_rules, robots_tag_directives
from curation.fetch import USER_AGENT as FETCH_USER_AGENT
from curation.netguard import UrlRefused, check_url_async, parse_networks, split_url
from curation.schema import WIT_TEXT_COLUMNS, with_version
from curation.shards import write_parquet_atomic

USER_AGENT = FETCH_USER_AGENT
ROBOTS_AGENT = AGENT_TOKEN
CANDIDATE_COLUMNS = ["url", *WIT_TEXT_COLUMNS]
REJECT_COLUMNS = ["url", "page_url", "reject_stage", "reject_reason"]
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
JOURNAL_VERSION = 1
MAX_CRAWL_DELAY_S = 30.0  # a robots.txt Crawl-delay above this would stall the run: cap it
_NOAI = set(NOAI_DIRECTIVES)  # directives that keep a page out of a dataset


@dataclass(frozen=True)
class CrawlConfig:
    # One name for the field and the flag (--seed URL ...), as every other setting: a list of start URLs.
    seed: list[str] = field(default_factory=list, metadata={"help": "start URL(s)"})
    out: Path = field(
        default=Path("candidates.parquet"), metadata={"help": "candidate list to write (Parquet)"}
    )
    allow_networks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "CIDR allowed despite being private or loopback, e.g. 127.0.0.0/8 (repeatable); "
            "link-local and metadata addresses stay refused"
        },
    )
    allowed_hosts: list[str] = field(
        default_factory=list,
        metadata={"help": "hosts whose pages are followed (default: the seeds' hosts; * = any)"},
    )
    max_pages: int = field(default=200, metadata={"help": "page fetches at most"})
    max_depth: int = field(default=3, metadata={"help": "link hops from a seed at most"})
    max_frontier: int = field(
        default=10_000, metadata={"help": "URLs waiting in memory at most; more wait on disk (memory bound)"}
    )
    max_bytes: int = field(default=5_000_000, metadata={"help": "bytes per response at most"})
    max_redirects: int = field(default=5, metadata={"help": "redirect hops per request at most"})
    max_images_per_page: int = field(default=1000, metadata={"help": "image candidates per page at most"})
    max_new_hosts_per_page: int = field(
        default=20, metadata={"help": "image hosts a page may introduce at most (each costs a robots.txt)"}
    )
    timeout_s: float = field(default=10.0, metadata={"help": "seconds per request, all of it"})
    concurrency: int = field(default=8, metadata={"help": "requests in flight at most"})
    per_host_concurrency: int = field(default=2, metadata={"help": "requests in flight per host at most"})
    delay_s: float = field(
        default=0.0, metadata={"help": "seconds between requests to one host (politeness)"}
    )
    user_agent: str = field(default=USER_AGENT, metadata={"help": "User-Agent header"})
    respect_robots: bool = field(default=True, metadata={"help": "honour robots.txt"})
    fresh: bool = field(default=False, metadata={"help": "ignore a previous crawl's state and start over"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if not self.seed:
            raise ConfigError("no seed URL: pass --seed URL (http or https)")
        for seed in self.seed:
            try:
                split_url(seed)
            except UrlRefused as exc:
                raise ConfigError(f"seed {exc}") from exc
        for name in ("max_pages", "max_frontier", "max_bytes", "concurrency", "per_host_concurrency",
                     "max_images_per_page", "max_new_hosts_per_page"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be at least 1")
        for name in ("max_depth", "max_redirects", "delay_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must not be negative")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s={self.timeout_s}: must be positive")
        try:
            parse_networks(self.allow_networks)
        except UrlRefused as exc:
            raise ConfigError(str(exc)) from exc

    @property
    def state_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".state")

    @property
    def rejects_path(self) -> Path:
        return self.out.with_name(self.out.stem + ".rejects.parquet")


@dataclass(frozen=True)
class CrawlReject:
    url: str
    reason: str
    page_url: str | None = None  # the page that linked to it


@dataclass(frozen=True)
class CrawlResult:
    out: Path
    rejects_path: Path
    candidates: int
    pages_fetched: int
    resumed_pages: int
    rejects: list[CrawlReject]
    stats: dict[str, int]
    elapsed_s: float


class FetchError(Exception):
    """A request that did not give a usable response; the message is the reject reason."""


# --- URLs ---------------------------------------------------------------------------------------------


def _remove_dot_segments(path: str) -> str:
    output: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(output) > 1:
                output.pop()
        elif segment != ".":
            output.append(segment)
    result = "/".join(output)
    if path.endswith(("/.", "/..")):
        result += "/"
    return result if result.startswith("/") else "/" + result


def normalize_url(url: str, base: str | None = None) -> str | None:
    """Absolute http(s) URL without fragment, host lower-cased, default port dropped; None if not http(s).

    >>> normalize_url("../b/c.html#top", "HTTP://Example.ORG:80/a/x.html")
    'http://example.org/b/c.html'
    """
    url = url.strip()
    if not url:
        return None
    try:
        joined = urllib.parse.urljoin(base, url) if base else url
        parts = urllib.parse.urlsplit(joined)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != (80 if scheme == "http" else 443):
        host = f"{host}:{port}"
    path = _remove_dot_segments(parts.path or "/")
    return urllib.parse.urlunsplit((scheme, host, path, parts.query, ""))


def host_of(url: str) -> str:
    """The netloc used for per-host limits and allowed hosts: 'example.org' or '127.0.0.1:8765'."""
    return urllib.parse.urlsplit(url).netloc.lower()


# --- decoding and extraction --------------------------------------------------------------------------

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_\-:.]+)""", re.IGNORECASE)


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    # WHATWG: these labels mean windows-1252 in a browser (it is a superset of Latin-1).
    if label in ("iso-8859-1", "iso8859-1", "latin1", "latin-1", "us-ascii", "ascii", "l1"):
        return "cp1252"
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_html(body: bytes, content_type: str | None) -> tuple[str, str]:
    """(text, encoding used): BOM, then the header's charset, then <meta charset>, then UTF-8, then cp1252."""
    for bom, name in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if body.startswith(bom):
            return body[len(bom) :].decode(name, errors="replace"), name
    header_charset = None
    if content_type:
        match = re.search(r"charset\s*=\s*([^\s;]+)", content_type, re.IGNORECASE)
        header_charset = _codec(match.group(1)) if match else None
    meta = _META_CHARSET.search(body[:4096])
    for name in (header_charset, _codec(meta.group(1).decode("ascii", "replace")) if meta else None):
        if name:
            return body.decode(name, errors="replace"), name
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return body.decode("cp1252", errors="replace"), "cp1252"


@dataclass
class ImageCandidate:
    src: str
    alt: str = ""
    title: str = ""
    figcaption: str = ""
    section_title: str = ""
    context: str = ""


@dataclass
class ParsedPage:
    title: str = ""
    language: str = ""
    base: str | None = None
    links: list[str] = field(default_factory=list)
    images: list[ImageCandidate] = field(default_factory=list)
    robots_meta: set[str] = field(default_factory=set)


def _clean(text: str) -> str:
    return " ".join(text.split())


class _PageParser:
    """One pass over the page: title, lang, headings, paragraphs, figures, images and links.

    The target of lxml's HTML parser (libxml2: linear in the page size; html.parser rescans an
    unfinished tag, so a page of repeated `<a ` cost it seconds per 20 KB).
    """

    _SKIP = {"script", "style", "noscript", "template"}
    _HEADINGS = {"h2", "h3", "h4", "h5", "h6"}

    def __init__(self) -> None:
        self.page = ParsedPage()
        self._skip_depth = 0
        self._capture: str | None = None  # "title", "heading", "p" or "figcaption"
        self._buffer: list[str] = []
        self._paragraph: list[str] | None = None
        self._last_paragraph = ""
        self._needs_context: list[ImageCandidate] = []
        self._heading = ""
        self._figures: list[tuple[list[ImageCandidate], list[str]]] = []

    def start(self, tag: str, attrs) -> None:
        if not isinstance(tag, str):
            return
        tag = tag.lower()
        attr = {str(k).lower(): (v or "") for k, v in attrs.items()}
        if tag in self._SKIP:
            self._skip_depth += 1
            return
        if tag == "html" and attr.get("lang"):
            self.page.language = attr["lang"].strip()
        elif tag == "base" and attr.get("href") and self.page.base is None:
            self.page.base = attr["href"]
        elif tag == "meta" and attr.get("name", "").lower() in ("robots", ROBOTS_AGENT):
            self.page.robots_meta |= {d.strip().lower() for d in attr.get("content", "").split(",")}
        elif tag == "title" and not self.page.title:
            self._capture, self._buffer = "title", []
        elif tag in self._HEADINGS:
            self._capture, self._buffer = "heading", []
        elif tag == "p":
            self._paragraph = []
        elif tag == "figure":
            self._figures.append(([], []))
        elif tag == "figcaption" and self._figures:
            self._capture, self._buffer = "figcaption", []
        elif tag == "a" and attr.get("href"):
            if "nofollow" not in attr.get("rel", "").lower().split():
                self.page.links.append(attr["href"])
        elif tag == "img":
            src = attr.get("src") or attr.get("data-src") or ""
            if not src:
                return
            image = ImageCandidate(
                src=src,
                alt=_clean(attr.get("alt", "")),
                title=_clean(attr.get("title", "")),
                section_title=self._heading,
                context=self._last_paragraph,
            )
            if not image.context:
                self._needs_context.append(image)
            self.page.images.append(image)
            if self._figures:
                self._figures[-1][0].append(image)

    def end(self, tag: str) -> None:
        if not isinstance(tag, str):
            return
        tag = tag.lower()
        if tag in self._SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
            return
        if tag == "title" and self._capture == "title":
            self.page.title = _clean("".join(self._buffer))
            self._capture = None
        elif tag in self._HEADINGS and self._capture == "heading":
            self._heading = _clean("".join(self._buffer))
            self._capture = None
        elif tag == "p" and self._paragraph is not None:
            text = _clean("".join(self._paragraph))
            self._paragraph = None
            if text:
                self._last_paragraph = text
                for image in self._needs_context:  # images before any paragraph take the next one
                    image.context = text
                self._needs_context = []
        elif tag == "figcaption" and self._capture == "figcaption":
            if self._figures:
                self._figures[-1][1].append(_clean("".join(self._buffer)))
            self._capture = None
        elif tag == "figure" and self._figures:
            images, captions = self._figures.pop()
            caption = " ".join(c for c in captions if c)
            for image in images:
                image.figcaption = caption

    def data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._capture is not None:
            self._buffer.append(data)
        if self._paragraph is not None and self._capture is None:
            self._paragraph.append(data)

    def close(self) -> ParsedPage:
        return self.page


def parse_page(text: str) -> ParsedPage:
    """Extract title, language, links and image candidates (with their texts) from HTML."""
    target = _PageParser()
    if not text.strip():
        return target.page
    parser = lxml.etree.HTMLParser(target=target, recover=True, no_network=True, huge_tree=False)
    try:
        parser.feed(text)
        return parser.close()
    except lxml.etree.LxmlError:
        return target.page  # what was read before libxml2 gave up


# --- state: the journal -----------------------------------------------------------------------------


class SpillingFrontier:
    """A FIFO of (url, depth, referrer) that keeps at most `memory` entries in memory and the rest in a file.

    Order is kept: once anything waits on disk, new entries go to the disk too, and the memory part
    is refilled from the file as it drains. The file is rebuilt on resume (the journal replays links).
    """

    def __init__(self, memory: int, path: Path) -> None:
        self.memory = memory
        self.path = path
        self._queue: collections.deque[tuple[str, int, str | None]] = collections.deque()
        self._writer = None
        self._reader = None
        self._on_disk = 0
        self.spilled = 0  # entries that went through the disk

    def append(self, item: tuple[str, int, str | None]) -> None:
        if not self._on_disk and len(self._queue) < self.memory:
            self._queue.append(item)
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._reader = open(self.path, encoding="utf-8")  # noqa: SIM115
        self._writer.write(json.dumps(item) + "\n")
        self._on_disk += 1
        self.spilled += 1

    def popleft(self) -> tuple[str, int, str | None]:
        if not self._queue and self._on_disk:
            self._refill()
        return self._queue.popleft()

    def _refill(self) -> None:
        assert self._writer is not None and self._reader is not None
        self._writer.flush()
        while self._on_disk and len(self._queue) < self.memory:
            url, depth, referrer = json.loads(self._reader.readline())
            self._queue.append((url, depth, referrer))
            self._on_disk -= 1

    @property
    def in_memory(self) -> int:
        return len(self._queue)

    def __len__(self) -> int:
        return len(self._queue) + self._on_disk

    def __bool__(self) -> bool:
        return len(self) > 0

    def close(self) -> None:
        for handle in (self._writer, self._reader):
            if handle is not None:
                handle.close()
        self._writer = self._reader = None
        self.path.unlink(missing_ok=True)


def _digest(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(), "little")


class CrawlState:
    """Frontier, finished pages, candidates and rejects; every finished page is journaled before it counts.

    Candidates are not held in memory: the journal holds them, and `crawl` streams them from it into
    the Parquet file (memory: an 8-byte digest per candidate, to drop repeats). The frontier keeps
    `max_frontier` URLs in memory and spills the rest to disk.
    """

    def __init__(self, cfg: CrawlConfig):
        self.cfg = cfg
        self.frontier = SpillingFrontier(cfg.max_frontier, cfg.state_dir / "frontier.jsonl")
        self.seen: set[str] = set()
        self.done: set[str] = set()
        self.candidate_keys: set[int] = set()
        self.rejects: list[CrawlReject] = []
        self.pages_fetched = 0
        self.resumed_pages = 0
        self.stats: collections.Counter[str] = collections.Counter()
        self.frontier_peak = 0
        self._journal = None
        hosts = cfg.allowed_hosts or [host_of(normalize_url(s) or s) for s in cfg.seed]
        self.allowed_hosts = {h.lower() for h in hosts}

    def open(self) -> None:
        state_dir = self.cfg.state_dir
        journal = state_dir / "journal.jsonl"
        header = {"type": "config", "version": JOURNAL_VERSION, "seeds": list(self.cfg.seed)}
        if self.cfg.fresh and journal.exists():
            journal.unlink()
        if journal.exists():
            self._replay(journal, header)
        else:
            state_dir.mkdir(parents=True, exist_ok=True)
            with open(journal, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(header) + "\n")
        for seed in self.cfg.seed:
            self.enqueue(normalize_url(seed) or seed, 0, None)
        self._journal = open(journal, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _replay(self, journal: Path, header: dict) -> None:
        with open(journal, encoding="utf-8") as fh:  # line by line: a long crawl's journal is big
            try:
                first = json.loads(fh.readline() or "{}")
            except json.JSONDecodeError:
                first = {}
            if first.get("seeds") != header["seeds"] or first.get("version") != JOURNAL_VERSION:
                raise ConfigError(
                    f"{journal} belongs to a crawl with other seeds or an older format: "
                    f"pass --fresh to start over, or another --out"
                )
            for record in _journal_records(fh):
                self._apply(record)
                self.resumed_pages += 1

    def _apply(self, record: dict) -> None:
        url = record["url"]
        self.done.add(url)
        self.seen.add(url)
        for alias in record.get("aliases", []):
            self.done.add(alias)
            self.seen.add(alias)
        if record.get("fetched"):
            self.pages_fetched += 1
        for reject in record.get("rejects", []):
            self.rejects.append(CrawlReject(reject["url"], reject["reason"], reject.get("page_url")))
        for row in record.get("candidates", []):
            self.candidate_keys.add(_digest(row["url"], row["page_url"]))
        depth = record.get("depth", 0)
        final = record.get("final_url", url)
        for link in record.get("links", []):
            self.enqueue(link, depth + 1, final)

    def enqueue(self, url: str, depth: int, referrer: str | None) -> None:
        if url in self.seen:
            return
        if depth > self.cfg.max_depth:
            self.stats["links_beyond_depth"] += 1
            return
        if not self._host_allowed(url):
            self.stats["links_offsite"] += 1
            return
        if (
            len(self.frontier) >= self.cfg.max_pages
            or len(self.seen) >= self.cfg.max_frontier + self.cfg.max_pages
        ):
            # Memory stays bounded on a page with a million links; the page budget would not reach them anyway.
            self.stats["links_dropped_frontier_full"] += 1
            return
        self.seen.add(url)
        self.frontier.append((url, depth, referrer))
        self.frontier_peak = max(self.frontier_peak, self.frontier.in_memory)

    def _host_allowed(self, url: str) -> bool:
        return "*" in self.allowed_hosts or host_of(url) in self.allowed_hosts

    def record(self, record: dict) -> None:
        """Journal a finished page (flushed before anything else sees it), then apply it."""
        assert self._journal is not None
        self._journal.write(json.dumps(record, ensure_ascii=False) + "\n")
        # flush, not fsync: a killed process loses nothing flushed; a power cut loses the tail, which is
        # then fetched again (an fsync per page cost ~20 ms, more than fetching the page).
        self._journal.flush()
        self._apply(record)

    def close(self) -> None:
        self.frontier.close()
        if self._journal is not None:
            self._journal.flush()
            os.fsync(self._journal.fileno())
            self._journal.close()
            self._journal = None

    def write_candidates(self, path: Path) -> int:
        """Stream every candidate from the journal into a Parquet file (atomically); returns how many."""
        journal = self.cfg.state_dir / "journal.jsonl"
        schema = with_version(pa.schema([pa.field(c, pa.string()) for c in CANDIDATE_COLUMNS]))
        written: set[int] = set()
        batch: list[dict] = []
        count = 0
        with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            with open(journal, encoding="utf-8") as fh:
                fh.readline()  # the header
                for record in _journal_records(fh):
                    for row in record.get("candidates", []):
                        key = _digest(row["url"], row["page_url"])
                        if key in written:
                            continue
                        written.add(key)
                        batch.append(row)
                        if len(batch) >= 4096:
                            writer.write_table(_table(batch, CANDIDATE_COLUMNS).cast(schema))
                            count += len(batch)
                            batch = []
            if batch or not count:
                writer.write_table(_table(batch, CANDIDATE_COLUMNS).cast(schema))
                count += len(batch)
        return count


def _journal_records(lines) -> Iterator[dict]:
    for line in lines:
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a killed crawl may be cut short: that page is fetched again


# --- fetching -------------------------------------------------------------------------------------------


@dataclass
class _Host:
    semaphore: asyncio.Semaphore
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_request: float = 0.0
    delay_s: float = 0.0


@dataclass
class _Response:
    url: str  # after redirects
    status: int
    headers: httpx.Headers
    body: bytes
    hops: list[str]


class Fetcher:
    """Guarded GETs: every hop checked by the address guard, bounded in time, bytes and redirects."""

    def __init__(self, cfg: CrawlConfig, client: httpx.AsyncClient):
        self.cfg = cfg
        self.client = client
        self.hosts: dict[str, _Host] = {}
        self.robots: dict[str, asyncio.Task] = {}

    def _host(self, url: str) -> _Host:
        key = host_of(url)
        if key not in self.hosts:
            self.hosts[key] = _Host(
                asyncio.Semaphore(self.cfg.per_host_concurrency), delay_s=self.cfg.delay_s
            )
        return self.hosts[key]

    async def _polite(self, host: _Host) -> None:
        async with host.lock:
            now = time.monotonic()
            wait = host.next_request - now
            host.next_request = max(now, host.next_request) + host.delay_s
        if wait > 0:
            await asyncio.sleep(wait)

    async def get(
        self, url: str, accept_html: bool = True, known: Callable[[str], bool] | None = None
    ) -> _Response:
        """GET `url`; a redirect to a URL that `known` says is crawled already stops there (status 0)."""
        hops = [url]
        current = url
        for _ in range(self.cfg.max_redirects + 1):
            try:
                addresses = await check_url_async(current, self.cfg.allow_networks)
            except UrlRefused as exc:
                raise FetchError(f"refused: {exc}") from exc
            host = self._host(current)
            async with host.semaphore:
                await self._polite(host)  # inside the slot: the delay separates requests as they go out
                try:
                    async with asyncio.timeout(self.cfg.timeout_s):
                        status, headers, body = await self._any_address(current, addresses, accept_html)
                except TimeoutError as exc:
                    raise FetchError(f"timed out after {self.cfg.timeout_s:g} s") from exc
                except httpx.HTTPError as exc:
                    raise FetchError(f"{type(exc).__name__}: {exc}".strip()) from exc
            if status in REDIRECT_STATUSES and "location" in headers:
                target = normalize_url(headers["location"], current)
                if target is None:
                    raise FetchError(f"redirect to a non-http(s) URL {headers['location']!r}")
                if target in hops:
                    raise FetchError(f"redirect loop: {' -> '.join(hops + [target])}")
                hops.append(target)
                current = target
                if known is not None and known(target):
                    return _Response(current, 0, headers, b"", hops)
                continue
            return _Response(current, status, headers, body, hops)
        raise FetchError(f"more than {self.cfg.max_redirects} redirects: {' -> '.join(hops)}")

    async def _any_address(
        self, url: str, addresses: list[str], accept_html: bool
    ) -> tuple[int, httpx.Headers, bytes]:
        """Try the checked addresses in the resolver's order until one accepts the connection."""
        for address in addresses[:-1]:
            try:
                return await self._one(url, address, accept_html)
            except httpx.ConnectError:
                continue  # e.g. ::1 first for a server listening on 127.0.0.1 only
        return await self._one(url, addresses[-1], accept_html)

    async def _one(self, url: str, address: str, accept_html: bool) -> tuple[int, httpx.Headers, bytes]:
        """One request to the address the guard checked, not to a fresh DNS answer (DNS rebinding)."""
        target = httpx.URL(url)
        pinned = target.copy_with(host=address)
        headers = {"Host": target.netloc.decode("ascii")}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        async with self.client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
            if response.status_code in REDIRECT_STATUSES or response.status_code != 200:
                return response.status_code, response.headers, b""
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.cfg.max_bytes:
                raise FetchError(f"Content-Length {int(declared):,} exceeds max_bytes {self.cfg.max_bytes:,}")
            content_type = response.headers.get("content-type", "").lower()
            if (
                accept_html
                and content_type
                and not content_type.startswith(("text/html", "application/xhtml"))
            ):
                raise FetchError(
                    f"not_html: Content-Type {content_type}"
                )  # category first: the rest is the server's
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.cfg.max_bytes:
                    raise FetchError(f"body exceeds max_bytes {self.cfg.max_bytes:,} (stopped reading)")
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)

    def knows_host(self, url: str) -> bool:
        """Whether this host's robots.txt is fetched or being fetched (no new cost to list its images)."""
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}" in self.robots

    async def robots_for(self, url: str) -> urllib.robotparser.RobotFileParser:
        parts = urllib.parse.urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self.robots:
            self.robots[origin] = asyncio.ensure_future(self._fetch_robots(origin))
        return await self.robots[origin]

    async def _fetch_robots(self, origin: str) -> urllib.robotparser.RobotFileParser:
        url = origin + "/robots.txt"
        try:
            response = await self.get(url, accept_html=False)
        except FetchError:
            return robots_rules(url, None, b"")  # RFC 9309: unreachable robots.txt means "do not crawl"
        parser = robots_rules(url, response.status, response.body)  # the image downloads' rules too
        if 200 <= response.status < 300:
            delay = parser.crawl_delay(ROBOTS_AGENT)
            if delay:
                host = self._host(origin)
                host.delay_s = max(host.delay_s, min(float(delay), MAX_CRAWL_DELAY_S))
        return parser


# --- the crawl --------------------------------------------------------------------------------------------


async def _visit(
    fetcher: Fetcher,
    cfg: CrawlConfig,
    url: str,
    depth: int,
    referrer: str | None,
    known: Callable[[str], bool],
) -> dict:
    """Fetch one page and return its journal record (links, candidates, rejects)."""
    record: dict = {"type": "page", "url": url, "depth": depth, "fetched": False}

    def rejected(reason: str, fetched: bool) -> dict:
        record.update(fetched=fetched, rejects=[{"url": url, "reason": reason, "page_url": referrer}])
        return record

    try:  # the guard first: a refused host's robots.txt is not fetched either
        await check_url_async(url, cfg.allow_networks)
    except UrlRefused as exc:
        return rejected(f"refused: {exc}", False)
    if cfg.respect_robots:
        robots = await fetcher.robots_for(url)
        if not robots.can_fetch(ROBOTS_AGENT, url):
            return rejected("robots.txt disallows this page", False)
    try:
        response = await fetcher.get(url, known=known)
    except FetchError as exc:
        return rejected(str(exc), not str(exc).startswith("refused"))
    record.update(fetched=True, final_url=response.url, aliases=response.hops[1:-1])
    if response.status == 0:
        record["redirects_to_known"] = response.url
        return record  # the target is crawled (or queued) on its own: fetch it once
    record["aliases"] = response.hops[1:]
    if response.status != 200:
        return rejected(f"HTTP {response.status}", True)
    if response.url != url and cfg.respect_robots:
        robots = await fetcher.robots_for(response.url)
        if not robots.can_fetch(ROBOTS_AGENT, response.url):
            return rejected(f"redirected to {response.url}, which robots.txt disallows", True)
    # Parsing a big page takes a while: in a thread, so that other requests' timers do not fire meanwhile.
    text, _ = decode_html(response.body, response.headers.get("content-type"))
    page = await asyncio.to_thread(parse_page, text)
    directives = page.robots_meta | robots_tag_directives(
        response.headers.get_list("x-robots-tag"), ROBOTS_AGENT
    )
    base = normalize_url(page.base, response.url) if page.base else response.url
    base = base or response.url
    links: dict[str, None] = {}  # ordered set
    if "nofollow" not in directives and "none" not in directives:
        for href in page.links:
            link = normalize_url(href, base)
            if link is not None:
                links[link] = None
    record["links"] = list(links)
    candidates, rejects = [], []
    if not directives & _NOAI:
        language = page.language.split("-")[0].lower() or None
        seen_images: set[str] = set()
        new_hosts: set[str] = set()
        over = collections.Counter()
        for image in page.images:
            image_url = normalize_url(image.src, base)
            if image_url is None:
                continue  # data: URIs and other schemes are not downloadable pictures
            if image_url in seen_images:
                continue
            if len(seen_images) >= cfg.max_images_per_page:
                over["max_images_per_page"] += 1
                continue
            host = host_of(image_url)
            if not fetcher.knows_host(image_url) and host not in new_hosts:
                if len(new_hosts) >= cfg.max_new_hosts_per_page:
                    over["max_new_hosts_per_page"] += 1
                    continue  # each new host costs a DNS lookup and a robots.txt: a page cannot order thousands
                new_hosts.add(host)
            seen_images.add(image_url)
            problem = await _image_problem(fetcher, cfg, image_url)
            if problem:
                rejects.append({"url": image_url, "reason": problem, "page_url": response.url})
                continue
            candidates.append(
                {
                    "url": image_url,
                    "page_url": response.url,
                    "page_title": page.title,
                    "section_title": image.section_title,
                    "caption_reference_description": image.figcaption,
                    "caption_alt_text_description": image.alt,
                    "caption_attribution_description": image.title,
                    "context_page_description": image.context,
                    "language": language,
                }
            )
        for cap, skipped in over.items():
            rejects.append({"url": response.url, "page_url": referrer,
                            "reason": f"page cap: {skipped} more images not listed ({cap}={getattr(cfg, cap)})"})  # fmt: skip
    record["candidates"] = candidates
    record["rejects"] = rejects
    return record


async def _image_problem(fetcher: Fetcher, cfg: CrawlConfig, image_url: str) -> str | None:
    """Why the downloader must not be given this image URL (its address, or robots.txt), or None."""
    try:
        await check_url_async(image_url, cfg.allow_networks)
    except UrlRefused as exc:
        return f"refused: {exc}"
    if cfg.respect_robots:
        robots = await fetcher.robots_for(image_url)
        if not robots.can_fetch(ROBOTS_AGENT, image_url):
            return "robots.txt disallows this image"
    return None


async def _run(cfg: CrawlConfig, state: CrawlState) -> None:
    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    timeout = httpx.Timeout(cfg.timeout_s)
    headers = {"User-Agent": cfg.user_agent, "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"}
    async with httpx.AsyncClient(
        follow_redirects=False, timeout=timeout, limits=limits, headers=headers, trust_env=False
    ) as client:
        fetcher = Fetcher(cfg, client)
        pending: set[asyncio.Task] = set()
        started = state.pages_fetched
        bar = tqdm(
            total=cfg.max_pages, initial=started, desc="crawl pages", unit="page", disable=not cfg.progress
        )
        try:
            while state.frontier or pending:
                while state.frontier and len(pending) < cfg.concurrency and started < cfg.max_pages:
                    url, depth, referrer = state.frontier.popleft()
                    if url in state.done:
                        continue
                    started += 1
                    pending.add(
                        asyncio.create_task(
                            _visit(fetcher, cfg, url, depth, referrer, state.seen.__contains__)
                        )
                    )
                if not pending:
                    break
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    record = task.result()
                    if not record["fetched"]:
                        started -= 1  # refused before any request: does not use the page budget
                    state.record(record)
                    bar.update(1 if record["fetched"] else 0)
                    bar.set_postfix(candidates=len(state.candidate_keys), rejects=len(state.rejects))
        finally:
            for task in pending:
                task.cancel()
            bar.close()
    state.stats["links_left_in_frontier"] = len(state.frontier)


def _table(rows: list[dict], columns: list[str]) -> pa.Table:
    return pa.table({c: pa.array([r.get(c) for r in rows], type=pa.string()) for c in columns})


def crawl(cfg: CrawlConfig) -> CrawlResult:
    """Crawl from `cfg.seed`; write `cfg.out` (candidates) and `cfg.rejects_path` atomically; resume if killed."""
    started = time.monotonic()
    with output_lock(cfg.state_dir, "crawl"):  # one crawl per output: two would interleave one journal
        state = CrawlState(cfg)
        state.open()
        try:
            asyncio.run(_run(cfg, state))
        finally:
            state.close()
        candidates = state.write_candidates(cfg.out)
        reject_rows = [
            {"url": r.url, "page_url": r.page_url, "reject_stage": "crawl", "reject_reason": r.reason}
            for r in state.rejects
        ]
        write_parquet_atomic(_table(reject_rows, REJECT_COLUMNS), cfg.rejects_path)
    stats = dict(state.stats)
    stats["frontier_peak"] = state.frontier_peak
    stats["frontier_spilled"] = state.frontier.spilled
    stats["urls_seen"] = len(state.seen)
    return CrawlResult(
        out=cfg.out,
        rejects_path=cfg.rejects_path,
        candidates=candidates,
        pages_fetched=state.pages_fetched,
        resumed_pages=state.resumed_pages,
        rejects=list(state.rejects),
        stats=stats,
        elapsed_s=time.monotonic() - started,
    )


# --- command line ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m curation.crawl",
        description="Crawl HTML pages from seed URLs and list every image with its WIT-style texts (Parquet).",
    )
    parser.add_argument(
        "--seed",
        dest="seed",
        nargs="+",
        action="extend",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="start URL(s)",
    )
    parser.add_argument("--config", type=Path, help="TOML file with these settings (flags override it)")
    add_arguments(parser, CrawlConfig, exclude=["seed"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = from_namespace(CrawlConfig, argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "config"}),
                             toml_path=args.config)  # fmt: skip
        result = crawl(cfg)
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    reasons = collections.Counter(r.reason.split(":")[0] for r in result.rejects)
    print(
        f"{result.pages_fetched} pages fetched ({result.resumed_pages} resumed), {result.candidates} image candidates "
        f"-> {result.out}; {len(result.rejects)} rejects -> {result.rejects_path} in {result.elapsed_s:.1f} s"
    )
    for reason, count in reasons.most_common(8):
        print(f"  {count:5d}  {reason}")
    if result.pages_fetched == 0 and result.rejects:
        print(f"error: no page could be fetched; first reason: {result.rejects[0].reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
