"""Crawler throughput against a sequential baseline, on the loopback test web.

    .venv/bin/python bench/bench_crawl.py [--pages 40] [--latency 0.2 0.05 0.0] [--repeats 3]

Baseline, measured in the same run on the same site: a sequential crawler (urllib, one request at
a time, same HTML extraction, same robots.txt rule) - what a first script usually is. The site adds
`--latency` seconds to every response to stand in for a network round trip; 0 shows pure overhead
(journal fsync per page, asyncio, the address guard). Ours runs with the crawler's own defaults
(`CrawlConfig`: 8 requests in flight, 2 per host) unless --concurrency / --per-host-concurrency say
otherwise; the two crawlers alternate, `--repeats` times, and the ratio is given with its spread.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
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


def _ours(seed: str, out: Path, concurrency: int, per_host: int) -> tuple[int, int]:
    cfg = CrawlConfig(
        seed=[seed],
        out=out,
        allow_networks=["127.0.0.0/8"],
        max_pages=10_000,
        max_depth=10,
        concurrency=concurrency,
        per_host_concurrency=per_host,
        progress=False,
    )
    result = crawl(cfg)
    return result.pages_fetched, result.candidates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=40, help="gallery pages on the site (default: 40)")
    parser.add_argument(
        "--latency", type=float, nargs="+", default=[0.2, 0.05, 0.0], help="seconds per response"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CrawlConfig.concurrency,
        help=f"our crawler's requests in flight (default: the crawler's own, {CrawlConfig.concurrency})",
    )
    parser.add_argument(
        "--per-host-concurrency",
        type=int,
        default=CrawlConfig.per_host_concurrency,
        help="our crawler's requests in flight per host; the site is one host, so this is the real limit "
        f"(default: the crawler's own, {CrawlConfig.per_host_concurrency})",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each crawler, alternating (default: 3)"
    )
    args = parser.parse_args()
    # pyarrow imports pandas on its first pa.array() call (~1.2 s here): a one-off per process, paid up front
    # so that it is not counted against the crawler (a build process has imported it long before).
    import pandas  # noqa: F401

    command = "python bench/bench_crawl.py " + " ".join(sys.argv[1:])
    print(f"command: {command.strip()}")
    print(
        f"machine: {platform.machine()}, {platform.python_version()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; site of {args.pages} pages; ours: concurrency {args.concurrency}, "
        f"per host {args.per_host_concurrency}, no politeness delay; {args.repeats} runs each, alternating\n"
    )
    print(
        "| latency per response | sequential urllib (pages/s, median) | curation.crawl (pages/s, median) "
        "| ratio median (min-max over runs) | candidates |"
    )
    print("|---:|---:|---:|---:|---:|")
    for latency in args.latency:
        site = build_site(args.pages, 0, SiteOptions(image_size=48, latency_s=latency))
        base_rates, our_rates, ratios = [], [], []
        with serve(site, "127.0.0.1", 0) as server, tempfile.TemporaryDirectory() as tmp:
            seed = server.base_url + "/"
            for run in range(args.repeats):
                timed = {}
                # Alternate which crawler goes first, so a change of machine load hits both.
                order = ("base", "ours") if run % 2 == 0 else ("ours", "base")
                for who in order:
                    started = time.perf_counter()
                    if who == "base":
                        base_pages, base_images = sequential_crawl(seed, max_pages=10_000)
                    else:
                        out = Path(tmp) / f"candidates-{run}.parquet"
                        our_pages, our_images = _ours(seed, out, args.concurrency, args.per_host_concurrency)
                    timed[who] = time.perf_counter() - started
                base_rates.append(base_pages / timed["base"])
                our_rates.append(our_pages / timed["ours"])
                ratios.append(our_rates[-1] / base_rates[-1])
        print(
            f"| {latency * 1000:.0f} ms | {statistics.median(base_rates):.1f} ({base_pages} pages) "
            f"| {statistics.median(our_rates):.1f} ({our_pages} pages) | {statistics.median(ratios):.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {our_images} vs {base_images} |"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
