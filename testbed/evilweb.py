"""A hostile web on loopback: two hosts (127.0.0.1 and 127.0.0.2, same port) that try every trick on a downloader.

    with serve_evil_web() as evil:
        evil.url("/img/ok.jpg")                          # http://127.0.0.1:PORT/img/ok.jpg
        evil.url("/img/ok.jpg", host="127.0.0.2")        # the same path on the second host
        evil.requests["127.0.0.2"]                       # every request that reached the second host

Both addresses work on Linux without setup (all of 127.0.0.0/8 is loopback). Paths:

| path | answer |
|---|---|
| `/img/<name>.jpg` | a distinct shape picture (JPEG) |
| `/redirect?to=URL` | 302 to URL (any scheme) |
| `/big` | 200 MB without Content-Length, streamed until the client hangs up |
| `/drip` | one byte a second, no Content-Length |
| `/xrt/none/<name>.jpg`, `/xrt/token/<name>.jpg`, `/xrt/other/<name>.jpg` | a picture with `X-Robots-Tag: none`, `clip-workbench-crawler: noai`, `otherbot: noai` |
| `/private/<name>.jpg` | a picture that robots.txt disallows |
| `/page.html` | an HTML page listing `page_images` (set by the test) |
| `/robots.txt` | `Disallow: /private/` |

`RebindingResolver` answers a name with one address on the first lookup and another on the next
(DNS rebinding); it is picklable, so it also travels into img2dataset's worker processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import io
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from testbed.shapes import CLASSES, render_shape_image

HOSTS = ("127.0.0.1", "127.0.0.2")
ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
BIG_BYTES = 200_000_000
DRIP_SECONDS = 120


def picture(name: str, size: int = 96) -> bytes:
    """A distinct JPEG per name (seeded by it): pictures never dedup against each other."""
    digest = hashlib.sha256(name.encode()).digest()
    seed = int.from_bytes(digest[:4], "little")
    cls = CLASSES[digest[4] % len(CLASSES)]
    buf = io.BytesIO()
    render_shape_image(cls, np.random.default_rng(seed), size).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@dataclass
class EvilWeb:
    port: int
    requests: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    host_headers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    page_images: list[str] = field(default_factory=list)  # img src values of /page.html
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = HOSTS[0]) -> str:
        return f"http://{host}:{self.port}/{path.lstrip('/')}"

    def hits(self, host: str, prefix: str = "/") -> list[str]:
        with self.lock:
            return [p for p in self.requests[host] if p.startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        web: EvilWeb = self.server.web  # type: ignore[attr-defined]
        host = self.server.server_address[0]
        with web.lock:
            web.requests[host].append(self.path)
            web.host_headers[host].append(self.headers.get("Host", ""))
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path
        jpeg = (("Content-Type", "image/jpeg"),)
        try:
            if path == "/robots.txt":
                self._send(200, ROBOTS_TXT.encode(), (("Content-Type", "text/plain"),))
            elif path == "/redirect":
                target = urllib.parse.parse_qs(parts.query).get("to", ["/"])[0]
                self._send(302, b"", (("Location", target),))
            elif path == "/big":
                self._stream(BIG_BYTES, chunk=1 << 20, pause_s=0.0)
            elif path == "/drip":
                self._stream(DRIP_SECONDS, chunk=1, pause_s=1.0)
            elif path.startswith("/xrt/"):
                _, _, kind, name = path.split("/", 3)
                tag = {"none": "none", "token": "clip-workbench-crawler: noai", "other": "otherbot: noai"}[
                    kind
                ]
                self._send(200, picture(name), (*jpeg, ("X-Robots-Tag", tag)))
            elif path.startswith(("/img/", "/private/")):
                self._send(200, picture(path), jpeg)
            elif path == "/page.html":
                figures = "\n".join(
                    f'<figure><img src="{html.escape(src)}" alt="a drawing number {i}">'
                    f"<figcaption>a drawing of a shape, number {i}</figcaption></figure>"
                    for i, src in enumerate(web.page_images)
                )
                page = (
                    f"<!doctype html><html lang=en><title>Evil gallery</title><body>{figures}</body></html>"
                )
                self._send(200, page.encode(), (("Content-Type", "text/html; charset=utf-8"),))
            else:
                self._send(404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: what the guard is meant to do

    def _stream(self, total: int, chunk: int, pause_s: float) -> None:
        """A 200 answer without Content-Length, written until `total` chunks' worth or the client hangs up."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Connection", "close")
        self.end_headers()
        block = b"\xff" * chunk
        sent = 0
        while sent < total:
            self.wfile.write(block)
            self.wfile.flush()
            sent += chunk if pause_s == 0 else 1
            if pause_s:
                time.sleep(pause_s)
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def serve_evil_web(hosts: Sequence[str] = HOSTS) -> Iterator[EvilWeb]:
    """Serve the hostile web on every address of `hosts`, one port for all (so a name can rebind between them)."""
    for _ in range(20):
        servers: list[_Server] = []
        try:
            first = _Server((hosts[0], 0), _Handler)
            servers.append(first)
            port = first.server_address[1]
            servers += [_Server((h, port), _Handler) for h in hosts[1:]]
            break
        except OSError:  # the port is taken on another address: try another one
            for server in servers:
                server.server_close()
    else:
        raise OSError(f"no free port on all of {hosts}")
    web = EvilWeb(port)
    threads = []
    for server in servers:
        server.web = web  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        threads.append(thread)
    try:
        yield web
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


class RebindingResolver:
    """A DNS that answers `names[host][0]` first, then `names[host][1]`, ... (the last one repeats).

    Picklable (a plain class): each process that unpickles it starts again from the first answer.
    """

    def __init__(self, names: dict[str, list[str]]):
        self.names = names
        self.lookups: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[str]:
        if host not in self.names:
            raise OSError(f"unknown host {host}")
        with self._lock:
            n = self.lookups.get(host, 0)
            self.lookups[host] = n + 1
        answers = self.names[host]
        return [answers[min(n, len(answers) - 1)]]

    def __getstate__(self) -> dict:
        return {"names": self.names, "lookups": dict(self.lookups)}

    def __setstate__(self, state: dict) -> None:
        self.names, self.lookups, self._lock = state["names"], state["lookups"], threading.Lock()
