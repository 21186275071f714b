"""The guarded fetch: the one way an image (or a host probe, or an image host's robots.txt) is downloaded.

    policy = FetchPolicy(allow_networks=("127.0.0.0/8",), max_bytes=20_000_000, timeout_s=10)
    fetched = fetch(url, policy)          # -> Fetched(url, status, headers, body), or raises FetchFailed

img2dataset's own `download_image` (urllib) resolves DNS again after our check, follows redirects to
any address and to ftp://, reads a body of any size, and its timeout is per socket read. This one:

1. checks the scheme and every address the host resolves to (curation/netguard.py), then connects to
   the address it checked (Host header and TLS server name keep the name): a second DNS answer cannot
   point the request elsewhere (DNS rebinding);
2. follows redirects itself, at most `max_redirects`, each hop checked like the first (http/https only);
3. asks the host's robots.txt before every request (cached per origin, the crawler's rules:
   unreachable or 5xx = disallow all, 4xx = allow all) and honours `X-Robots-Tag` directives, plain or
   scoped to our user-agent token (`clip-workbench-crawler: noai`);
4. streams the body with a byte cap enforced while reading (a missing or lying Content-Length does
   not matter), under one deadline for the whole download: connect, TLS, headers, every redirect and
   the body (a server dripping a byte a second is cut at the deadline, not per read).

Synchronous and thread-safe: img2dataset calls it from its download threads (curation/download.py
installs it in place of `img2dataset.downloader.download_image`), the flows' host probe calls it too.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.robotparser
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from curation.netguard import UrlRefused, check_url, split_url

# Our product token: robots.txt groups and scoped X-Robots-Tag directives name it; the User-Agent carries it.
AGENT_TOKEN = "clip-workbench-crawler"
USER_AGENT = f"{AGENT_TOKEN}/0.1 (research image-text crawler; honours robots.txt and X-Robots-Tag)"
# X-Robots-Tag / <meta name=robots> directives that keep an image or a page out of a dataset.
NOAI_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex", "none")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
ROBOTS_MAX_BYTES = 500_000  # RFC 9309 asks parsers to read at least 500 KiB
ROBOTS_CACHE_HOSTS = 10_000
_READ_SIZE = 1 << 16

Resolver = Callable[[str, int], Sequence[str]]


class FetchFailed(Exception):
    """The download was refused or failed; `str()` is the reject reason, `kind` its category."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind  # refused, robots, x_robots_tag, too_large, deadline, redirect, connect, http


@dataclass(frozen=True)
class FetchPolicy:
    """Everything a download is bounded by; picklable (it travels into img2dataset's worker processes)."""

    allow_networks: tuple[str, ...] = ()
    max_bytes: int = 20_000_000
    timeout_s: float = 10.0  # the whole download, redirects and robots.txt included
    max_redirects: int = 5
    user_agent: str = USER_AGENT
    user_agent_token: str = AGENT_TOKEN
    disallowed_directives: tuple[str, ...] = NOAI_DIRECTIVES
    respect_robots: bool = True
    # A picklable callable (host, port) -> addresses; None = the system resolver. Tests inject one.
    resolver: Resolver | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    hops: tuple[str, ...] = ()
    reason: str = ""  # the status line's text, e.g. "Not Found"


# --- opt-out rules (shared with the crawler) ----------------------------------------------------------


def robots_tag_directives(values: Iterable[str], token: str = AGENT_TOKEN) -> set[str]:
    """The X-Robots-Tag directives that apply to us: unscoped ones and those scoped to `token`.

    >>> sorted(robots_tag_directives(["noindex, nofollow", "otherbot: noai", "Clip-Workbench-Crawler: noai"]))
    ['noai', 'nofollow', 'noindex']
    """
    token = token.strip().lower()
    found: set[str] = set()
    for value in values:
        scope, sep, rest = value.partition(":")
        scope = scope.strip().lower()
        # "bot: noai" is scoped; "unavailable_after: 25 Jun 2010" is a directive with an argument.
        if sep and scope and " " not in scope and "," not in scope and scope != "unavailable_after":
            if scope != token:
                continue
            value = rest
        found |= {d.strip().lower() for d in value.split(",") if d.strip()}
    return found


def disallowing_directive(values: Iterable[str], policy: FetchPolicy) -> str | None:
    """The first directive that forbids using the image (e.g. "none"), or None."""
    found = robots_tag_directives(values, policy.user_agent_token)
    for directive in policy.disallowed_directives:
        if directive in found:
            return directive
    return None


def robots_rules(url: str, status: int | None, body: bytes) -> urllib.robotparser.RobotFileParser:
    """robots.txt rules from its response (status None = unreachable): RFC 9309, as the crawler reads them."""
    parser = urllib.robotparser.RobotFileParser(url)
    if status is None or status >= 500:
        parser.disallow_all = True  # unreachable or server error: assume "do not crawl"
    elif status >= 400:
        parser.allow_all = True  # no robots.txt: everything allowed
    else:
        parser.parse(body.decode("utf-8", errors="replace").splitlines())
    return parser


# --- the deadline -----------------------------------------------------------------------------------------


class _Deadline:
    """One deadline for a whole download: a timer shuts the live socket down when it passes.

    A socket timeout only bounds one read; a server sending a byte a second never trips it. The
    timer makes a blocked read return at once, whatever phase (TLS, headers, body) it is in.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0 or self.expired:
            raise self.failure()
        return left

    def failure(self) -> FetchFailed:
        return FetchFailed("deadline", f"timed out: download not finished within {self.seconds:g} s")

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# --- connections pinned to the checked address ---------------------------------------------------------


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to `address`; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, address: str, deadline: _Deadline):
        super().__init__(host, port, timeout=deadline.remaining())
        self.address, self.deadline = address, deadline

    def _open_socket(self) -> socket.socket:
        sock = socket.create_connection((self.address, self.port), self.deadline.remaining())
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.deadline.watch(sock)
        return sock

    def connect(self) -> None:
        self.sock = self._open_socket()


class _PinnedHTTPS(_PinnedHTTP):
    """TLS to `address`, verified against the URL's host name (SNI and certificate check use the name)."""

    default_port = 443
    context = ssl.create_default_context()

    def connect(self) -> None:
        self.sock = self.context.wrap_socket(self._open_socket(), server_hostname=self.host)


def _request(url: str, address: str, policy: FetchPolicy, deadline: _Deadline):
    scheme, host, port = split_url(url)
    parts = urllib.parse.urlsplit(url)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")) or "/"
    connection_class = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    connection = connection_class(host, port, address, deadline)
    connection.putrequest("GET", target, skip_accept_encoding=True)
    connection.putheader("User-Agent", policy.user_agent)
    connection.putheader("Accept", "image/*,*/*;q=0.8")
    connection.putheader("Connection", "close")
    connection.endheaders()
    return connection, connection.getresponse()


def _open(url: str, addresses: list[str], policy: FetchPolicy, deadline: _Deadline):
    """Connect to the checked addresses in the resolver's order until one answers."""
    last: Exception | None = None
    for address in addresses:
        try:
            return _request(url, address, policy, deadline)
        except ConnectionRefusedError as exc:  # e.g. ::1 first for a server on 127.0.0.1 only
            last = exc
    raise FetchFailed("connect", f"connection refused: {url} ({last})")


def _read_capped(response: http.client.HTTPResponse, max_bytes: int, deadline: _Deadline) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise FetchFailed(
            "too_large", f"Content-Length {int(declared):,} exceeds max_image_bytes {max_bytes:,}"
        )
    chunks, size = [], 0
    while True:
        deadline.remaining()
        chunk = response.read1(_READ_SIZE)  # returns what one read gives: a drip is seen byte by byte
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise FetchFailed("too_large", f"body exceeds max_image_bytes {max_bytes:,} (stopped reading)")
        chunks.append(chunk)
    if deadline.expired:
        raise deadline.failure()
    return b"".join(chunks)


# --- robots.txt of image hosts ----------------------------------------------------------------------------


class _RobotsCache:
    """robots.txt per origin and policy, fetched once per process (LRU bounded), with the guarded fetch."""

    def __init__(self, capacity: int = ROBOTS_CACHE_HOSTS):
        self.capacity = capacity
        self.rules: OrderedDict[tuple, urllib.robotparser.RobotFileParser] = OrderedDict()
        self.lock = threading.Lock()
        self.fetching: dict[tuple, threading.Lock] = {}

    def allows(self, url: str, policy: FetchPolicy) -> bool:
        parts = urllib.parse.urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        key = (origin, policy.allow_networks, policy.user_agent)
        with self.lock:
            rules = self.rules.get(key)
            per_origin = self.fetching.setdefault(key, threading.Lock())
        if rules is None:
            with per_origin:  # one fetch per origin, however many threads ask at once
                with self.lock:
                    rules = self.rules.get(key)
                if rules is None:
                    rules = self._fetch(origin, policy)
                    with self.lock:
                        self.rules[key] = rules
                        self.fetching.pop(key, None)
                        while len(self.rules) > self.capacity:
                            self.rules.popitem(last=False)
        return rules.can_fetch(policy.user_agent_token, url)

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    @staticmethod
    def _fetch(origin: str, policy: FetchPolicy) -> urllib.robotparser.RobotFileParser:
        url = origin + "/robots.txt"
        try:
            fetched = fetch(url, policy, check_robots=False, max_bytes=ROBOTS_MAX_BYTES, honour_headers=False)
        except FetchFailed:
            return robots_rules(url, None, b"")  # refused, unreachable, too big or too slow: disallow all
        return robots_rules(url, fetched.status, fetched.body)


ROBOTS = _RobotsCache()


# --- the fetch ---------------------------------------------------------------------------------------------


def fetch(
    url: str,
    policy: FetchPolicy,
    *,
    check_robots: bool = True,
    max_bytes: int | None = None,
    read_body: bool = True,
    honour_headers: bool = True,
) -> Fetched:
    """GET `url` within `policy`: every hop checked, one deadline, capped body; FetchFailed says why not.

    A non-200 final answer is returned (status and headers, empty body), not raised: the caller decides.
    `read_body=False` stops after the headers (the host probe).
    """
    deadline = _Deadline(policy.timeout_s)
    try:
        return _fetch(
            url, policy, deadline, check_robots, max_bytes or policy.max_bytes, read_body, honour_headers
        )
    except OSError as exc:  # connection reset, TLS failure, DNS... after the deadline, say deadline
        if deadline.expired:
            raise deadline.failure() from exc
        kind = "connect" if isinstance(exc, ConnectionError | socket.timeout) else "http"
        raise FetchFailed(kind, f"{type(exc).__name__}: {exc}") from exc
    except http.client.HTTPException as exc:
        if deadline.expired:
            raise deadline.failure() from exc
        raise FetchFailed("http", f"bad HTTP answer ({type(exc).__name__}: {exc})") from exc
    finally:
        deadline.cancel()


def _fetch(
    url: str,
    policy: FetchPolicy,
    deadline: _Deadline,
    check_robots: bool,
    max_bytes: int,
    read_body: bool,
    honour_headers: bool,
) -> Fetched:
    hops = [url]
    current = url
    for _ in range(policy.max_redirects + 1):
        try:
            addresses = check_url(current, policy.allow_networks, policy.resolver)
        except UrlRefused as exc:
            raise FetchFailed("refused", f"refused: {exc}") from exc
        if check_robots and policy.respect_robots and not ROBOTS.allows(current, policy):
            raise FetchFailed("robots", f"robots.txt disallows {current}")
        deadline.remaining()
        connection, response = _open(current, addresses, policy, deadline)
        try:
            status = response.status
            if status in REDIRECT_STATUSES:
                location = response.getheader("Location")
                if not location:
                    raise FetchFailed("redirect", f"HTTP {status} without a Location header")
                target = urllib.parse.urljoin(current, location.strip())
                try:
                    split_url(target)
                except UrlRefused as exc:
                    raise FetchFailed("redirect", f"redirect refused: {exc}") from exc
                if target in hops:
                    raise FetchFailed("redirect", f"redirect loop: {' -> '.join(hops + [target])}")
                hops.append(target)
                current = target
                continue
            if honour_headers:
                directive = disallowing_directive(response.headers.get_all("X-Robots-Tag") or [], policy)
                if directive:
                    raise FetchFailed("x_robots_tag", f"X-Robots-Tag: {directive} (use of image disallowed)")
            body = b""
            if read_body and status == 200:
                body = _read_capped(response, max_bytes, deadline)
            return Fetched(current, status, response.headers, body, tuple(hops), response.reason or "")
        finally:
            response.close()
            connection.close()
    raise FetchFailed("redirect", f"more than {policy.max_redirects} redirects: {' -> '.join(hops)}")


# --- img2dataset's download_image, guarded ------------------------------------------------------------------


def download_image(row, timeout, user_agent_token=None, disallowed_header_directives=None):
    """img2dataset's `download_image(row, timeout, ...)` signature: (key, BytesIO | None, error | None).

    `timeout` is our FetchPolicy: curation/download.py hands it to img2dataset's Downloader in the
    place of the timeout, the one argument that reaches here unchanged (the policy already holds the
    token and the directives).
    """
    import io

    key, url = row
    policy = timeout if isinstance(timeout, FetchPolicy) else FetchPolicy(timeout_s=float(timeout))
    try:
        fetched = fetch(url, policy)
    except FetchFailed as exc:
        return key, None, str(exc)
    if fetched.status != 200:
        return (
            key,
            None,
            f"HTTP Error {fetched.status}: {fetched.reason}",
        )  # urllib's wording, as img2dataset records it
    return key, io.BytesIO(fetched.body), None
