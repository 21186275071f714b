"""Crawler throughput against a sequential baseline, on the loopback test web.

    .venv/bin/python bench/bench_crawl.py [--pages 40] [--latency 0.05 0.0]

Baseline, measured in the same run on the same site: a sequential crawler (urllib, one request at
a time, same HTML extraction, same robots.txt rule) - what a first script usually is. The site adds
`--latency` seconds to every response to stand in for a network round trip; 0 shows pure overhead
(journal fsync per page, asyncio, the address guard).
"""

from __future__ import annotations

import argparse
import collections
import platform
import sys
import tempfile
import time
import urllib.request
import urllib.robotparser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.crawl import CrawlConfig, crawl, decode_html, normalize_url, parse_page  # noqa: E402
from testbed.testweb import SiteOptions, build_site, serve  # noqa: E402


def sequential_crawl(seed: str, max_pages: int) -> tuple[int, int]:
    """(pages fetched, image candidates): breadth first, one blocking request at a time."""
    robots = urllib.robotparser.RobotFileParser(seed.rstrip("/") + "/robots.txt")
    robots.read()
    host = urllib.parse.urlsplit(seed).netloc
    queue, seen, pages, images = collections.deque([seed]), {seed}, 0, set()
    while queue and pages < max_pages:
        url = queue.popleft()
        if not robots.can_fetch("*", url):
            continue
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body, content_type, final = (
                    response.read(),
                    response.headers.get("content-type"),
                    response.url,
                )
        except OSError:
            pages += 1
            continue
        pages += 1
        page = parse_page(decode_html(body, content_type)[0])
        images |= {(normalize_url(i.src, final), final) for i in page.images}
        for href in page.links:
            link = normalize_url(href, final)
            if link and link not in seen and urllib.parse.urlsplit(link).netloc == host:
                seen.add(link)
                queue.append(link)
    return pages, len(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=40, help="gallery pages on the site (default: 40)")
    parser.add_argument(
        "--latency", type=float, nargs="+", default=[0.2, 0.05, 0.0], help="seconds per response"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="our crawler's requests in flight (default: 8)"
    )
    args = parser.parse_args()
    # pyarrow imports pandas on its first pa.array() call (~1.2 s here): a one-off per process, paid up front
    # so that it is not counted against the crawler (a build process has imported it long before).
    import pandas  # noqa: F401

    print(f"machine: {platform.machine()}, {platform.python_version()}, site of {args.pages} pages\n")
    print(
        "| latency per response | sequential urllib (pages/s) | curation.crawl (pages/s) | ratio | candidates |"
    )
    print("|---:|---:|---:|---:|---:|")
    for latency in args.latency:
        site = build_site(args.pages, 0, SiteOptions(image_size=48, latency_s=latency))
        with serve(site, "127.0.0.1", 0) as server, tempfile.TemporaryDirectory() as tmp:
            seed = server.base_url + "/"
            started = time.perf_counter()
            base_pages, base_images = sequential_crawl(seed, max_pages=10_000)
            base_s = time.perf_counter() - started
            cfg = CrawlConfig(
                seed=[seed],
                out=Path(tmp) / "candidates.parquet",
                allow_networks=["127.0.0.0/8"],
                max_pages=10_000,
                max_depth=10,
                concurrency=args.concurrency,
                per_host_concurrency=args.concurrency,
                progress=False,
            )
            started = time.perf_counter()
            result = crawl(cfg)
            ours_s = time.perf_counter() - started
        base_rate, ours_rate = base_pages / base_s, result.pages_fetched / ours_s
        print(
            f"| {latency * 1000:.0f} ms | {base_rate:.1f} ({base_pages} pages, {base_s:.2f} s) "
            f"| {ours_rate:.1f} ({result.pages_fetched} pages, {ours_s:.2f} s) | {ours_rate / base_rate:.2f}x "
            f"| {result.candidates} vs {base_images} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
