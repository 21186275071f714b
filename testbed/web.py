"""The loopback test web for any test file: a generated site served from a thread on 127.0.0.1.

    from testbed.web import serve_testweb

    def test_something(tmp_path):
        with serve_testweb(pages=8, seed=0) as web:
            wit = web.write_wit(tmp_path / "site.tsv")        # WIT TSV pointing at the server
            ...                                              # web.base_url, web.truth["images"][url]

No pytest imports: usable from scripts and benchmarks too.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from testbed.testweb import LoopbackWebServer, Site, SiteOptions, build_site, serve


@dataclass
class RunningWeb:
    """A served site: where it is, what it holds (`truth`, see testbed.testweb.Site.truth)."""

    base_url: str
    truth: dict[str, Any]
    site: Site
    server: LoopbackWebServer
    full_site: Site | None = None

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    @property
    def requests(self) -> list[str]:
        """Paths the server was asked for so far, in order."""
        return list(self.server.requests)

    def grow(self, site: Site | None = None) -> None:
        """Serve `site` from now on (default: the whole site that `visible_pages` held back)."""
        site = site or self.full_site
        self.server.site = self.site = site
        self.truth = site.truth(self.base_url)

    def write_wit(self, path: str | Path) -> Path:
        self.site.write_wit(path, self.base_url)
        return Path(path)

    def write_truth(self, path: str | Path) -> Path:
        self.site.write_truth(path, self.base_url)
        return Path(path)


@functools.lru_cache(maxsize=8)
def _cached_site(pages: int, seed: int, options: SiteOptions) -> Site:
    # Sites are deterministic and never changed after building: tests share one per argument set.
    return build_site(pages, seed, options)


@contextlib.contextmanager
def serve_testweb(
    pages: int = 12,
    seed: int = 0,
    options: SiteOptions = SiteOptions(),
    visible_pages: int | None = None,
    **option_overrides: Any,
) -> Iterator[RunningWeb]:
    """Build (or reuse) the site and serve it on 127.0.0.1 at a free port for the `with` block.

    `option_overrides` replace fields of `options`, e.g. `serve_testweb(8, slow_delay_s=0.5, hostile=True)`.
    `visible_pages=K` serves only the first K galleries until `web.grow()` (a web that grows between runs).
    """
    options = replace(options, **option_overrides) if option_overrides else options
    full = _cached_site(pages, seed, options)
    site = full.first_pages(visible_pages) if visible_pages is not None else full
    server = serve(site, "127.0.0.1", 0).start()
    try:
        yield RunningWeb(server.base_url, site.truth(server.base_url), site, server, full)
    finally:
        server.stop()
