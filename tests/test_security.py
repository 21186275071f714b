"""The download path against a hostile loopback web (testbed/evilweb.py): 127.0.0.1 is allowed, 127.0.0.2 is not.

Every test allows `127.0.0.1/32` only; the second host on 127.0.0.2 (loopback too, so reachable without
setup) plays the address a hostile page wants us to reach: it must never see a request.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from common.atomic import OutputBusyError
from curation.build import build_dataset
from curation.config import BuildConfig
from curation.crawl import CrawlConfig, crawl, parse_page
from curation.download import DownloadOptions, run_img2dataset
from curation.fetch import FetchFailed, FetchPolicy, fetch, robots_tag_directives
from curation.report import markdown_cell
from testbed.evilweb import RebindingResolver, serve_evil_web
from testbed.testweb import WIT_COLUMNS

ALLOWED = ("127.0.0.1/32",)
OTHER = "127.0.0.2"


@pytest.fixture(scope="module")
def evil():
    with serve_evil_web() as web:
        yield web


def _policy(**overrides) -> FetchPolicy:
    return FetchPolicy(**{"allow_networks": ALLOWED, "timeout_s": 2.0, **overrides})


# --- the fetch on its own --------------------------------------------------------------------------------


def test_fetch_downloads_a_plain_image_with_our_user_agent(evil):
    fetched = fetch(evil.url("/img/plain.jpg"), _policy())
    assert fetched.status == 200 and fetched.body[:2] == b"\xff\xd8"
    assert evil.hits("127.0.0.1", "/robots.txt"), "the image host's robots.txt was not asked"


@pytest.mark.parametrize(
    ("path", "kind", "words"),
    [
        (f"/redirect?to=http://{OTHER}:{{port}}/img/x.jpg", "refused", "loopback address 127.0.0.2"),
        ("/redirect?to=ftp://127.0.0.1/x.jpg", "redirect", "scheme 'ftp'"),
        ("/redirect?to=file:///etc/passwd", "redirect", "scheme 'file'"),
        ("/redirect?to=http://169.254.169.254/latest/meta-data/", "refused", "never allowed"),
        ("/xrt/none/a.jpg", "x_robots_tag", "X-Robots-Tag: none"),
        ("/xrt/token/a.jpg", "x_robots_tag", "X-Robots-Tag: noai"),
        ("/private/a.jpg", "robots", "robots.txt disallows"),
    ],
)
def test_fetch_refuses_with_a_reason(evil, path, kind, words):
    with pytest.raises(FetchFailed, match=words) as info:
        fetch(evil.url(path.format(port=evil.port)), _policy())
    assert info.value.kind == kind
    assert not evil.hits(OTHER), "a request reached the host outside the allowance"
    assert not evil.hits("127.0.0.1", "/private/")


def test_directives_scoped_to_another_agent_do_not_apply(evil):
    assert fetch(evil.url("/xrt/other/a.jpg"), _policy()).status == 200
    assert robots_tag_directives(["otherbot: noai", "unavailable_after: 1 Jan 2030"]) == {
        "unavailable_after: 1 jan 2030"
    }


def test_a_body_without_length_is_cut_at_the_cap_and_a_drip_at_the_deadline(evil):
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="exceeds max_image_bytes 20,000,000") as big:
        fetch(evil.url("/big"), _policy(max_bytes=20_000_000))
    assert big.value.kind == "too_large" and time.monotonic() - started < 5  # 200 MB were on offer
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="within 1.5 s") as drip:
        fetch(evil.url("/drip"), _policy(timeout_s=1.5))
    assert drip.value.kind == "deadline" and 1.4 < time.monotonic() - started < 3.0


def test_a_rebinding_name_is_fetched_at_the_checked_address_only(evil):
    # The name answers 127.0.0.1 (allowed) first and 127.0.0.2 on every later lookup.
    resolver = RebindingResolver({"evil.test": ["127.0.0.1", OTHER]})
    policy = _policy(resolver=resolver, respect_robots=False)
    before = len(evil.hits("127.0.0.1"))
    assert fetch(f"http://evil.test:{evil.port}/img/rebound.jpg", policy).status == 200
    assert evil.hits("127.0.0.1")[before:] == ["/img/rebound.jpg"]
    assert evil.host_headers["127.0.0.1"][-1] == f"evil.test:{evil.port}"  # Host kept, address pinned
    with pytest.raises(FetchFailed, match="evil.test resolves to loopback address 127.0.0.2"):
        fetch(f"http://evil.test:{evil.port}/redirect?to=/img/second.jpg", policy)
    assert not evil.hits(OTHER)


def test_img2dataset_workers_use_the_guarded_fetch(evil, tmp_path):
    """The policy travels into img2dataset's spawned worker, resolver included (rebinding there too)."""
    import pyarrow as pa

    urls = [f"http://evil.test:{evil.port}/img/w{i}.jpg" for i in range(3)]
    candidates = tmp_path / "c.parquet"
    pq.write_table(
        pa.table({"url": urls, "caption": ["a shape"] * 3, "key_candidate": ["1", "2", "3"]}), candidates
    )
    resolver = RebindingResolver({"evil.test": ["127.0.0.1", "127.0.0.1", OTHER]})
    options = DownloadOptions(processes=1, threads=1, image_size=32, fetch=_policy(resolver=resolver))
    table = run_img2dataset(candidates, tmp_path / "dl", options)
    rows = sorted(table.select(["url", "status", "error_message"]).to_pylist(), key=lambda r: r["url"])
    # lookup 1: robots.txt, lookup 2: the first image, then the name points at 127.0.0.2: refused.
    assert [r["status"] for r in rows].count("success") == 1
    assert all("127.0.0.2" in r["error_message"] for r in rows if r["status"] != "success")
    assert not evil.hits(OTHER)


# --- the whole build: WIT and crawl sources ----------------------------------------------------------------


def _write_wit(path: Path, urls: list[str]) -> Path:
    lines = ["\t".join(WIT_COLUMNS)]
    for i, url in enumerate(urls):
        row = dict.fromkeys(WIT_COLUMNS, "")
        row.update(language="en", page_url=url, image_url=url, page_title="Evil",
                   caption_reference_description=f"a drawing of a shape, picture number {i}")  # fmt: skip
        lines.append("\t".join(row[c] for c in WIT_COLUMNS))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_build_refuses_hostile_images_from_wit_and_crawl(evil, tmp_path):
    other = f"http://{OTHER}:{evil.port}"
    hostile = {
        "redirect_other": evil.url(f"/redirect?to={other}/img/wit-other.jpg"),
        "redirect_ftp": evil.url("/redirect?to=ftp://127.0.0.1/x.jpg"),
        "redirect_file": evil.url("/redirect?to=file:///etc/passwd"),
        "big": evil.url("/big"),
        "drip": evil.url("/drip"),
        "xrt_none": evil.url("/xrt/none/wit.jpg"),
        "xrt_token": evil.url("/xrt/token/wit.jpg"),
        "robots": evil.url("/private/wit.jpg"),
    }
    fine = [evil.url("/img/wit-1.jpg"), evil.url("/img/wit-2.jpg"), evil.url("/xrt/other/wit.jpg")]
    wit = _write_wit(tmp_path / "evil.tsv", fine + list(hostile.values()))
    evil.page_images[:] = ["/img/page-1.jpg", f"/redirect?to={other}/img/page-other.jpg"]
    cfg = BuildConfig(out=tmp_path / "ds", source=[f"wit:{wit}", f"crawl:{evil.url('/page.html')}"],
                      allow_networks=list(ALLOWED), timeout=2, processes=1, threads=12, image_size=64)  # fmt: skip
    started = time.monotonic()
    summary = build_dataset(cfg)
    assert time.monotonic() - started < 60, "a hostile image held the chunk"
    kept = set(pq.read_table(cfg.out / "shards").column("url").to_pylist())
    assert kept == set(fine) | {evil.url("/img/page-1.jpg")}
    rejects = {r["url"]: r["reject_reason"] for r in pq.read_table(cfg.out / "rejects").to_pylist()}
    expected = {"redirect_other": "refused_address", "redirect_ftp": "refused_redirect",
                "redirect_file": "refused_redirect", "big": "too_large", "drip": "timeout",
                "xrt_none": "noai", "xrt_token": "noai", "robots": "robots_txt"}  # fmt: skip
    for name, reason in expected.items():
        assert rejects[hostile[name]].startswith(reason + ":"), (name, rejects[hostile[name]])
    assert rejects[evil.url(f"/redirect?to={other}/img/page-other.jpg")].startswith("refused_address:")
    assert not evil.hits(OTHER), "a request reached 127.0.0.2"
    assert not evil.hits("127.0.0.1", "/private/"), "a robots-disallowed image was requested"
    assert summary.kept == len(kept)
    report = (cfg.out / "report.md").read_text()
    assert "| download | robots_txt | 1 |" in report and "| download | too_large | 1 |" in report


def test_a_second_build_on_a_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from common.atomic import output_lock\n"
         f"with output_lock({str(out)!r}, 'curation build'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match="curation build"):
            build_dataset(BuildConfig(out=out, source=["wit:nowhere.tsv"]))
        from curation.__main__ import main

        assert main(["build", "--out", str(out), "--source", "wit:nowhere.tsv"]) == 2
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


# --- pages -------------------------------------------------------------------------------------------------


def test_parsing_is_linear_on_a_page_of_unfinished_tags():
    started = time.process_time()
    parse_page("<a " * (5_000_000 // 3))
    assert time.process_time() - started < 2.0


def test_a_page_with_100000_images_on_10000_hosts_stays_within_the_caps(evil, tmp_path):
    # 100,000 images, ten per host: 127.1.0.1, 127.1.1.1, ... (loopback, none of them allowed but the page's)
    evil.page_images[:] = [f"http://127.{1 + i // 10 // 250}.{i // 10 % 250}.1:{evil.port}/img/{i}.jpg"
                           for i in range(100_000)]  # fmt: skip
    hosts = {src.split("/")[2] for src in evil.page_images}
    assert len(hosts) >= 10_000
    robots_before = len(evil.hits("127.0.0.1", "/robots.txt"))
    cfg = CrawlConfig(seed=[evil.url("/page.html")], out=tmp_path / "c.parquet", allow_networks=list(ALLOWED),
                      max_bytes=50_000_000, max_depth=0, progress=False, max_images_per_page=500,
                      max_new_hosts_per_page=20)  # fmt: skip
    started = time.monotonic()
    result = crawl(cfg)
    assert time.monotonic() - started < 30
    rows = pq.read_table(result.out).to_pylist()
    image_rejects = [r for r in result.rejects if r.url != evil.url("/page.html")]
    listed = {r["url"] for r in rows} | {r.url for r in image_rejects}
    assert len(listed) <= 500
    assert len({u.split("/")[2] for u in listed}) <= 20
    caps = [r.reason for r in result.rejects if r.reason.startswith("page cap")]
    assert any("max_new_hosts_per_page=20" in c for c in caps)
    assert len(evil.hits("127.0.0.1", "/robots.txt")) - robots_before <= 1


# --- smaller holes -----------------------------------------------------------------------------------------


def test_server_text_cannot_shape_the_report():
    cell = markdown_cell("not_html: Content-Type x|y\n<script>alert(1)</script> [a](javascript:b)")
    assert "|" not in cell.replace("\\|", "") and "<" not in cell and "\n" not in cell and "\\[a\\]" in cell


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height pixels in a few bytes (its pixel data is never needed)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    )
    return path


def test_a_long_thin_picture_is_refused_before_its_square_canvas_exists(tmp_path, capsys):
    import tracemalloc

    from apps.clipasso.__main__ import main
    from apps.clipasso.picture import PictureError, load_picture
    from apps.clipasso.svg import SvgError, svg_to_sketch

    png = _png_header_only(tmp_path / "strip.png", 40000, 1250)  # 50 M pixels, a 40000^2 canvas once padded
    tracemalloc.start()
    try:
        with pytest.raises(PictureError, match="40000 x 40000 square canvas"):
            load_picture(png, 224)
        assert tracemalloc.get_traced_memory()[1] < 50_000_000
    finally:
        tracemalloc.stop()
    assert main([str(png), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "square canvas" in err
    svg = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100000 100000"><path d="M 0 0 C 1 1 2 2 3 3"/></svg>'
    with pytest.raises(SvgError, match="give a smaller viewBox"):
        svg_to_sketch(svg)


def test_a_killed_reindex_leaves_the_old_index_usable_and_mixed_files_are_refused(tiny_checkpoint, tmp_path,
                                                                                monkeypatch):  # fmt: skip
    import shutil

    import numpy as np

    from apps.clip4clip import index as index_module
    from apps.clip4clip.index import IndexOptions, VideoIndexError, build_index
    from apps.clip4clip.search import open_index, search
    from apps.clip4clip.video import FrameSampling
    from models import load_clip
    from testbed.videos import SynthConfig, generate_synthetic_set

    clip = load_clip(tiny_checkpoint)
    made = generate_synthetic_set(tmp_path / "set", SynthConfig(n_train=2, n_test_pairs=1, size=32, seed=1))
    options = IndexOptions(sampling=FrameSampling(max_frames=2, fps=None, short_side=32))
    out = tmp_path / "index"
    first = build_index(made.videos_dir, out, clip, options, progress=False)
    assert first.total == 4 and len(search(open_index(out, clip), "a red circle", k=3)) == 3

    # A re-index with new videos dies while writing (after some files): the old index stays whole.
    shutil.copy(next(made.videos_dir.glob("*.mp4")), made.videos_dir / "extra.mp4")

    def killed(*args):
        raise KeyboardInterrupt  # what a kill looks like from inside

    monkeypatch.setattr(index_module.faiss, "write_index", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(made.videos_dir, out, clip, options, progress=False)
    monkeypatch.undo()
    again = open_index(out, clip)
    assert len(again.videos) == 4 and len(search(again, "a red circle", k=5)) == 4
    assert not list(tmp_path.glob(".index.*")), "the half-written index was left beside"

    # The next re-index finishes and swaps in; a folder mixing two builds' files is refused.
    assert build_index(made.videos_dir, out, clip, options, progress=False).total == 5
    np.save(out / "embeddings.npy", np.load(out / "embeddings.npy")[:3])
    with pytest.raises(VideoIndexError, match="inconsistent .*embeddings.npy 3"):
        open_index(out, clip)


def test_training_and_crawl_hold_their_output_lock(tmp_path):
    from common.atomic import output_lock
    from training.config import TrainConfig
    from training.train import train

    run = tmp_path / "run"
    with output_lock(run, "training"):
        with pytest.raises(OutputBusyError, match="training"):
            train(TrainConfig(data=[tmp_path / "none"], out=run))
    crawl_out = tmp_path / "c.parquet"
    cfg = CrawlConfig(
        seed=["http://127.0.0.1:9/"], out=crawl_out, allow_networks=list(ALLOWED), progress=False
    )
    with output_lock(cfg.state_dir, "crawl"):
        with pytest.raises(OutputBusyError, match="crawl"):
            crawl(cfg)


def test_printed_urls_carry_no_credentials(monkeypatch, capsys):
    from pipelines.__main__ import main
    from pipelines.runtime import redact_url

    assert redact_url("https://me:s3cret@prefect.example/api?token=abc&x=1") == (
        "https://***@prefect.example/api?token=***&x=1"
    )
    monkeypatch.setenv("PREFECT_API_URL", "http://admin:hunter2@127.0.0.1:9/api")
    assert main(["run", "evaluate", "checkpoint=x", "zeroshot=y", "out=z.json"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "***@127.0.0.1:9" in err


def test_a_forked_worker_does_not_keep_the_output_lock(tmp_path):
    """DataLoader / img2dataset workers are forked: a killed parent's lock must not live on in them."""
    import os
    import signal

    from common.atomic import output_lock

    ready, started = os.pipe()
    with output_lock(tmp_path / "run", "training"):
        child = os.fork()
        if child == 0:  # the worker: outlives its parent's run
            os.write(started, b"x")  # the fork hooks have run by now
            time.sleep(30)
            os._exit(0)
        assert os.read(ready, 1) == b"x"
    try:
        with output_lock(tmp_path / "run", "training (resumed)"):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
