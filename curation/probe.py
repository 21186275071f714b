"""Is a chunk's image host up? One request per host before a chunk is spent on it.

img2dataset never raises for HTTP errors: a host that answers 503 for a minute would leave a
whole chunk of failed rows, recorded as done. A flow checks first and retries the chunk later.
The probe asks for the host's robots.txt (always fetchable, small, and fetched by the download
anyway) through the guarded fetch: same address checks, redirect checks, byte cap and deadline.
"""

from __future__ import annotations

from pathlib import Path

from curation.fetch import FetchFailed, FetchPolicy, fetch

# Answers that mean "the server is temporarily unable": worth waiting for, not worth recording
# as every row of the chunk failing.
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
PROBE_HOSTS = 8  # hosts checked per chunk (a chunk of a web crawl has few)


class HostUnavailableError(RuntimeError):
    """A host of the chunk answers 429/5xx-unavailable or refuses connections: retry the chunk later."""


def unavailable_hosts(chunk_path: Path, policy: FetchPolicy, limit: int = PROBE_HOSTS) -> list[str]:
    """One guarded request to each host of the chunk (its robots.txt); the hosts that are down."""
    from urllib.parse import urlsplit

    import pyarrow.parquet as pq

    origins: dict[str, str] = {}
    for batch in pq.ParquetFile(chunk_path).iter_batches(columns=["url"], batch_size=4096):
        for url in batch.column(0).to_pylist():
            parts = urlsplit(url or "")
            if parts.scheme in ("http", "https") and parts.netloc:
                origins.setdefault(parts.netloc, f"{parts.scheme}://{parts.netloc}/robots.txt")
        if len(origins) >= limit:
            break
    down = []
    for host, url in list(origins.items())[:limit]:
        try:
            fetched = fetch(url, policy, check_robots=False, read_body=False, honour_headers=False)
        except FetchFailed as exc:
            if exc.kind == "connect":
                down.append(f"{host} ({exc})")
            continue  # refused, slow or odd: the download records that per image, no reason to wait
        if fetched.status in RETRYABLE_STATUS:
            down.append(f"{host} (HTTP {fetched.status})")
    return down
