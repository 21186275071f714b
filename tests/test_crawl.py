"""The crawler against the loopback web, and the address guard as a pure function.

Traffic goes to 127.0.0.1 only: addresses like 10.0.0.1 are judged, never connected to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from common.settings import ConfigError
from curation.crawl import CANDIDATE_COLUMNS, CrawlConfig, crawl, decode_html, main, normalize_url, parse_page
from curation.netguard import UrlRefused, address_allowed, check_url, is_public_address
from curation.schema import RECORD_SCHEMA
from testbed.web import serve_testweb

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = ["127.0.0.0/8"]
SLOW_DELAY = 4.0

# --- the address guard -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.254", "192.168.1.1", "169.254.169.254", "127.0.0.1",
     "127.8.9.10", "::1", "fc00::1", "fd12:3456::1", "fe80::1", "224.0.0.251", "ff02::1", "0.0.0.0", "::",
     "100.64.0.1", "240.0.0.1", "255.255.255.255", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "2002:a00:1::1"],
)  # fmt: skip
def test_guard_refuses_non_public_addresses(address):
    assert not is_public_address(address)
    assert address_allowed(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "172.32.0.1", "93.184.216.34", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8"])  # fmt: skip
def test_guard_accepts_public_addresses(address):
    assert is_public_address(address)
    assert address_allowed(address) is None


def test_guard_allowances():
    # allowed networks open private and loopback addresses; never link-local, metadata, multicast,
    # unspecified or reserved ones, even inside an allowed network
    everything = ["0.0.0.0/0", "::/0"]
    for ok in ["10.0.0.1", "192.168.0.7", "127.0.0.1", "::1", "fc00::1", "100.64.0.1"]:
        assert address_allowed(ok, allowed_networks=everything) is None
    for never in ["224.0.0.1", "0.0.0.0", "::", "240.0.0.1", "ff02::1", "169.254.169.254", "169.254.1.1",
                  "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254"]:  # fmt: skip
        assert "never allowed" in address_allowed(never, allowed_networks=everything + ["169.254.0.0/16"])
    assert "metadata" in address_allowed("fd00:ec2::254", allowed_networks=["fd00::/8"])
    # a named network opens just that network
    assert address_allowed("127.0.0.1", allowed_networks=LOOPBACK) is None
    assert "private" in address_allowed("10.0.0.1", allowed_networks=LOOPBACK)


def test_check_url_resolves_then_judges():
    hosts = {"intranet.example": ["10.1.2.3"], "mixed.example": ["93.184.216.34", "192.168.0.1"],
             "public.example": ["93.184.216.34"], "nowhere.example": []}  # fmt: skip

    def resolver(host, port):
        return hosts[host]

    assert check_url("https://public.example/a", resolver=resolver) == ["93.184.216.34"]
    with pytest.raises(UrlRefused, match="private address 10.1.2.3"):
        check_url("http://intranet.example/", resolver=resolver)
    with pytest.raises(UrlRefused, match="192.168.0.1"):  # one bad address spoils the name
        check_url("http://mixed.example/", resolver=resolver)
    with pytest.raises(UrlRefused, match="no address"):
        check_url("http://nowhere.example/", resolver=resolver)
    assert check_url("http://intranet.example/", ["10.0.0.0/8"], resolver=resolver) == ["10.1.2.3"]
    for url, reason in [("ftp://example.org/x", "scheme"), ("file:///etc/passwd", "scheme"), ("http:///x", "no host"),
                        ("http://[::1]:80/", "loopback"), ("http://169.254.169.254/latest", "link-local"),
                        ("http://localhost/", "loopback"), ("http://0x7f000001/", "loopback")]:  # fmt: skip
        with pytest.raises(UrlRefused, match=reason):
            check_url(url)


# --- URLs, decoding, extraction ----------------------------------------------------------------------------


def test_normalize_url():
    base = "HTTP://Example.ORG:80/a/b/page.html?x=1"
    assert normalize_url("c.html#frag", base) == "http://example.org/a/b/c.html"
    assert normalize_url("../d/./e.html", base) == "http://example.org/a/d/e.html"
    assert normalize_url("/../../f", base) == "http://example.org/f"
    assert normalize_url("//cdn.example.org:443/i.png", "https://x.org/") == "https://cdn.example.org/i.png"
    assert normalize_url("http://x.org:8080") == "http://x.org:8080/"
    assert normalize_url("?page=2", base) == "http://example.org/a/b/page.html?page=2"
    for bad in ["mailto:a@b.org", "javascript:void(0)", "data:image/png;base64,AAAA", "", "http://[bad"]:
        assert normalize_url(bad, base) is None


def test_decode_html_by_declared_charset_and_fallback():
    text = "<p>Café – “quoted” €</p>"
    assert decode_html(text.encode("cp1252"), "text/html; charset=windows-1252")[0] == text
    assert decode_html("<p>été</p>".encode("latin-1"), "text/html; charset=ISO-8859-1")[0] == "<p>été</p>"
    meta = '<meta charset="windows-1252">' + text
    assert decode_html(meta.encode("cp1252"), "text/html")[0] == meta
    assert decode_html(b"\xef\xbb\xbf<p>\xc3\xa9</p>", None) == ("<p>é</p>", "utf-8")
    assert decode_html(text.encode("utf-8"), None) == (text, "utf-8")
    # undeclared and not UTF-8: the web's usual fallback, no crash, no lost text
    assert decode_html(text.encode("cp1252"), "text/html") == (text, "cp1252")
    assert decode_html(b"<p>\xff\xfe\xfa</p>", "text/html; charset=unknown-thing")[1] == "cp1252"


def test_parse_page_extracts_wit_fields():
    page = parse_page(
        """<html lang="de-AT"><head><title> Das  Album </title><base href="/media/">
        <script>var x = "<img src='no.png'>";</script></head><body>
        <img src="top.png" alt="before any paragraph">
        <h2>Erster Teil</h2><p>Ein Absatz über Formen.</p>
        <figure><img src="a.png" alt="rotes Herz" title="von Anna"><figcaption>Ein <b>rotes</b> Herz</figcaption></figure>
        <h3>Zweiter Teil</h3><p>Noch ein Absatz.</p><p><img data-src="b.jpg"></p>
        <a href="next.html">weiter</a> <a href="ads.html" rel="nofollow sponsored">ad</a>
        </body></html>"""
    )
    assert page.title == "Das Album" and page.language == "de-AT" and page.base == "/media/"
    assert page.links == ["next.html"]
    first, heart, second = page.images
    assert first.src == "top.png" and first.context == "Ein Absatz über Formen." and first.section_title == ""
    assert (heart.src, heart.alt, heart.title, heart.figcaption) == (
        "a.png",
        "rotes Herz",
        "von Anna",
        "Ein rotes Herz",
    )
    assert heart.section_title == "Erster Teil" and heart.context == "Ein Absatz über Formen."
    assert (
        second.src == "b.jpg"
        and second.section_title == "Zweiter Teil"
        and second.context == "Noch ein Absatz."
    )


# --- crawling the loopback web ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web():
    with serve_testweb(pages=12, seed=0, slow_delay_s=SLOW_DELAY, hostile=True) as running:
        yield running


def _config(tmp_path: Path, seeds: list[str], **overrides) -> CrawlConfig:
    values = dict(seed=seeds, out=tmp_path / "candidates.parquet", allow_networks=LOOPBACK, max_pages=100,
                  max_depth=5, progress=False)  # fmt: skip
    values.update(overrides)
    return CrawlConfig(**values)


def _expected_candidates(web) -> set[str]:
    return {url for url, truth in web.truth["images"].items() if truth["in_wit"]}


def test_crawl_finds_every_image_with_its_texts(web, tmp_path):
    before = len(web.requests)
    result = crawl(_config(tmp_path, [web.base_url + "/"]))
    table = pq.read_table(result.out)
    assert table.column_names == CANDIDATE_COLUMNS
    assert all(RECORD_SCHEMA.get_field_index(c) >= 0 for c in CANDIDATE_COLUMNS)  # names of the record schema
    rows = table.to_pylist()
    assert {r["url"] for r in rows} == _expected_candidates(web) and len(rows) == result.candidates
    for row in rows:
        truth = web.truth["images"][row["url"]]
        assert row["page_url"] == truth["page_url"]
        assert row["caption_reference_description"] == truth["caption_reference_description"]
        assert row["caption_alt_text_description"] == truth["caption_alt_text_description"]
        assert row["caption_attribution_description"] == truth["caption_attribution_description"]
        assert row["section_title"] == truth["section_title"]
        assert row["context_page_description"] and row["page_title"] and row["language"] == "en"
    # robots.txt honoured: the private page and its pictures were never requested
    requested = web.requests[before:]
    assert "/robots.txt" in requested and not any(p.startswith("/private/") for p in requested)
    assert len(requested) == len(set(requested)), "a page was fetched twice"
    reasons = {r.url.removeprefix(web.base_url): r.reason for r in result.rejects}
    assert reasons["/private/album.html"].startswith("robots.txt")
    assert reasons["/missing.html"] == "HTTP 404" and reasons["/error.html"] == "HTTP 500"
    rejects = pq.read_table(result.rejects_path).to_pylist()
    assert {r["url"] for r in rejects} == {r.url for r in result.rejects}
    assert {r["reject_stage"] for r in rejects} == {"crawl"}
    # a finished crawl run again fetches nothing
    again = crawl(_config(tmp_path, [web.base_url + "/"]))
    assert again.resumed_pages == result.pages_fetched + 1 and again.candidates == result.candidates
    assert not [p for p in web.requests[before + len(requested) :] if p != "/robots.txt"]


def test_host_names_are_pinned_to_the_checked_address(web, tmp_path):
    """A named host is fetched at the address the guard approved (no second DNS answer), Host header kept."""
    port = web.base_url.rsplit(":", 1)[1]
    page = f"http://localhost:{port}/gallery/p000.html"
    result = crawl(_config(tmp_path, [page], max_depth=0, allow_networks=["127.0.0.0/8", "::1/128"]))
    assert result.pages_fetched == 1 and result.candidates > 0
    rows = pq.read_table(result.out).to_pylist()
    assert {r["page_url"] for r in rows} == {page} and all(
        r["url"].startswith("http://localhost:") for r in rows
    )


def test_depth_and_page_limits(web, tmp_path):
    page = web.base_url + "/gallery/p000.html"
    shallow = crawl(_config(tmp_path / "d0", [page], max_depth=0))
    assert shallow.pages_fetched == 1
    assert {r["page_url"] for r in pq.read_table(shallow.out).to_pylist()} == {page}
    capped = crawl(_config(tmp_path / "p3", [web.base_url + "/"], max_pages=3))
    assert capped.pages_fetched == 3


def test_hostile_pages_are_rejected_quickly(web, tmp_path):
    hostile = web.truth["hostile"]
    seeds = [
        hostile[k]
        for k in ("huge", "endless", "redirect_loop", "redirect_private", "slow", "latin1", "cp1252_meta")
    ]
    started = time.monotonic()
    result = crawl(_config(tmp_path, seeds, max_depth=0, max_bytes=1_000_000, timeout_s=1.5))
    elapsed = time.monotonic() - started
    assert elapsed < SLOW_DELAY + 2, "a hostile page held the crawl"
    reasons = {r.url: r.reason for r in result.rejects}
    assert reasons[hostile["huge"]].startswith("Content-Length 2,147,483,648 exceeds")
    assert reasons[hostile["endless"]].startswith("body exceeds max_bytes")
    assert reasons[hostile["redirect_loop"]].startswith("redirect loop")
    assert reasons[hostile["slow"]].startswith("timed out")
    # the redirect to 10.0.0.1 is refused by the guard before any connection (it would time out otherwise)
    assert reasons[hostile["redirect_private"]].startswith("refused") and "private address 10.0.0.1" in reasons[
        hostile["redirect_private"]]  # fmt: skip
    rows = {r["page_url"]: r for r in pq.read_table(result.out).to_pylist()}
    latin1, cp1252 = rows[hostile["latin1"]], rows[hostile["cp1252_meta"]]
    assert latin1["page_title"] == "Galerie d'été: café et crème" and latin1["language"] == "fr"
    assert latin1["caption_reference_description"] == "Un cercle rouge dessiné à la main, été"
    assert cp1252["page_title"] == "\u201cPrice list\u201d \u20ac5" and cp1252["caption_reference_description"] == (
        "Red circle for \u20ac5")  # fmt: skip


def test_pages_that_opt_out_give_no_candidates(web, tmp_path):
    hostile = web.truth["hostile"]
    before = len(web.requests)
    result = crawl(_config(tmp_path, [hostile["noai_meta"], hostile["noai_header"]], max_depth=2))
    assert result.pages_fetched == 2 and result.candidates == 0
    assert not [p for p in web.requests[before:] if p.startswith("/hostile/leaf/")], (
        "nofollow was not honoured"
    )


def test_page_with_10000_links_keeps_limits(web, tmp_path):
    result = crawl(_config(tmp_path, [web.truth["hostile"]["many_links"]], max_pages=12, max_frontier=50))
    assert result.pages_fetched == 12
    assert result.stats["frontier_peak"] <= 50 and result.stats["urls_seen"] <= 50 + 12
    assert result.stats["links_dropped_frontier_full"] > 9_000


def test_guard_refuses_loopback_seed_without_allowance(web, tmp_path):
    before = len(web.requests)
    result = crawl(_config(tmp_path, [web.base_url + "/"], allow_networks=[]))
    assert result.pages_fetched == 0 and result.candidates == 0
    assert "loopback address 127.0.0.1" in result.rejects[0].reason
    assert len(web.requests) == before, "the guard let a request through"


def test_politeness_delay_per_host(web, tmp_path):
    before = len(web.requests)
    crawl(_config(tmp_path, [web.base_url + "/"], max_pages=4, delay_s=0.3, per_host_concurrency=1))
    times = web.server.request_times[before:]
    assert len(times) >= 4
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.2, gaps  # 0.3 s asked; without the delay the gaps are a few ms


def test_killed_crawl_resumes_without_refetching(web, tmp_path):
    out = tmp_path / "resume" / "candidates.parquet"
    journal = out.with_name(out.name + ".state") / "journal.jsonl"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO)}
    before = len(web.requests)
    process = subprocess.Popen(
        [sys.executable, "-m", "curation.crawl", "--seed", web.base_url + "/", "--out", str(out),
         "--allow-networks", "127.0.0.0/8", "--delay-s", "0.4", "--per-host-concurrency", "1", "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal.exists() and len(journal.read_text().splitlines()) >= 5:
                break
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=10)
        process.stderr.close()
    assert not out.exists(), "the crawl finished before it was killed: make it slower"
    finished = {json.loads(line)["url"] for line in journal.read_text().splitlines()[1:]}
    assert len(finished) >= 4
    time.sleep(0.2)
    killed_at = len(web.requests)
    assert killed_at > before

    result = crawl(_config(tmp_path / "resume", [web.base_url + "/"]))
    assert result.resumed_pages >= 4
    refetched = {web.base_url + p for p in web.requests[killed_at:]} & finished
    assert not refetched, f"finished pages fetched again: {refetched}"
    assert {r["url"] for r in pq.read_table(out).to_pylist()} == _expected_candidates(web)


def test_cli_errors_are_one_line(web, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--max-pages" in capsys.readouterr().out
    assert main(["--seed", "ftp://example.org/", "--out", str(tmp_path / "c.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scheme 'ftp' is not http or https" in err
    assert main(["--out", str(tmp_path / "c.parquet")]) == 2
    assert "--seed" in capsys.readouterr().err
    assert main(["--seed", web.base_url + "/", "--out", str(tmp_path / "c.parquet"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loopback address" in err and "--allow-networks 127.0.0.1/32" in err
    with pytest.raises(ConfigError, match="max_pages=0"):
        _config(tmp_path, [web.base_url], max_pages=0)
