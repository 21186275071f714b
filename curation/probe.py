"""Is a chunk's image host up? One request per host before a chunk is spent on it.

img2dataset never raises for HTTP errors: a host that answers 503 for a minute would leave a
whole chunk of failed rows, recorded as done. A flow checks first and retries the chunk later.
"""

from __future__ import annotations

from pathlib import Path

# Answers that mean "the server is temporarily unable": worth waiting for, not worth recording
# as every row of the chunk failing.
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
PROBE_HOSTS = 8  # hosts checked per chunk (a chunk of a web crawl has few)


class HostUnavailableError(RuntimeError):
    """A host of the chunk answers 429/5xx-unavailable or refuses connections: retry the chunk later."""


def unavailable_hosts(chunk_path: Path, timeout: float, limit: int = PROBE_HOSTS) -> list[str]:
    """One request to the first image URL of each host in the chunk; the hosts that are down."""
    from urllib.parse import urlsplit

    import httpx
    import pyarrow.parquet as pq

    first_url: dict[str, str] = {}
    for batch in pq.ParquetFile(chunk_path).iter_batches(columns=["url"], batch_size=4096):
        for url in batch.column(0).to_pylist():
            if url:
                first_url.setdefault(urlsplit(url).netloc, url)
        if len(first_url) >= limit:
            break
    down = []
    for host, url in list(first_url.items())[:limit]:
        try:
            with httpx.stream("GET", url, timeout=timeout, follow_redirects=False) as response:
                if response.status_code in RETRYABLE_STATUS:
                    down.append(f"{host} (HTTP {response.status_code})")
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            down.append(f"{host} ({type(exc).__name__})")
        except httpx.HTTPError:
            pass  # a slow or odd answer for one image is img2dataset's to record, not a reason to wait
    return down
