"""`curation build` end to end on the loopback web: truth figures, accounting, resume, hostile images.

One module-scoped build (one img2dataset call) serves most tests: img2dataset costs 10-20 s per
call on these machines.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curation import shards
from curation.build import BuildError, build_dataset, collect_candidates, download_chunk, reused_chunk
from curation.clipscore import as_embedder
from curation.config import BuildConfig
from curation.wit import WIT_COLUMNS
from models import load_clip
from testbed.shapes import render_shape_image
from testbed.truth import REASONS, score
from testbed.web import serve_testweb
from tests.test_wit import wit_line, write_lines

FAST = {"processes": 1, "threads": 8, "image_size": 64, "timeout": 5}


# --- a second server: pictures that are hard to decode ---------------------------------------------------


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def hostile_images() -> dict[str, tuple[str, bytes]]:
    rng = np.random.default_rng(1)
    shape = render_shape_image("red circle", rng, 96)
    cmyk = io.BytesIO()
    shape.convert("CMYK").save(cmyk, "JPEG")
    palette = shape.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    gif = io.BytesIO()
    frames = [render_shape_image("blue star", rng, 96) for _ in range(3)]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    sixteen = Image.fromarray(np.asarray(shape.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    bomb = _png(Image.new("1", (12_000, 12_000)))  # 144 M pixels in ~20 KB
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><circle cx="48" cy="48" r="40"/></svg>'
    return {
        "/cmyk.jpg": ("image/jpeg", cmyk.getvalue()),
        "/palette.png": ("image/png", _png(palette)),
        "/animated.gif": ("image/gif", gif.getvalue()),
        "/sixteen.png": ("image/png", _png(sixteen)),
        "/bomb.png": ("image/png", bomb),
        "/drawing.png": ("image/png", svg),  # SVG served as a PNG
    }


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, tuple[str, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        entry = self.files.get(self.path)
        if entry is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", entry[0])
        self.send_header("Content-Length", str(len(entry[1])))
        self.end_headers()
        self.wfile.write(entry[1])

    def log_message(self, *args) -> None:
        pass


HOSTILE_CAPTIONS = {
    "/cmyk.jpg": "a red circle printed in CMYK",
    "/palette.png": "a red circle with a transparent background",
    "/animated.gif": "an animated blue star that blinks",
    "/sixteen.png": "a grey circle stored with sixteen bits",
    "/bomb.png": "a black square that is very large",
    "/drawing.png": "a black circle drawn as vector graphics",
}


def write_hostile_wit(path: Path, base: str) -> Path:
    def line(url: str, caption: str) -> str:
        row = dict.fromkeys(WIT_COLUMNS, "")
        row.update(
            language="en", page_url=base + "/page.html", image_url=url, caption_reference_description=caption
        )
        return "\t".join(row[c] for c in WIT_COLUMNS)

    lines = [line(base + p, c) for p, c in HOSTILE_CAPTIONS.items()]
    lines += [
        line("file:///etc/passwd", "a file on this machine"),
        line("ftp://127.0.0.1/a.png", "an image over ftp"),
        line("javascript:alert(1)", "a script instead of a picture"),
        line("http://user:secret@127.0.0.1/a.png", "an image behind a password"),
        "too\tfew\tfields",
        line(base + "/cmyk.jpg", "x" * 2_000_000),  # a 2 MB caption (the reader's cap is 1 MB)
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\x00\x01\x02garbage\xff\xfe\n")
    return path


# --- the shared build ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    _Handler.files = hostile_images()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with serve_testweb(pages=8, seed=0, slow_delay_s=1.0) as web:
            wit = web.write_wit(root / "site.tsv")
            hostile = write_hostile_wit(root / "hostile.tsv", f"http://127.0.0.1:{server.server_address[1]}")
            cfg = BuildConfig(
                out=root / "dataset",
                source=[f"wit:{wit}", f"wit:{hostile}"],
                allow_networks=["127.0.0.1/32"],
                **FAST,
            )
            torch.manual_seed(0)
            embedder = as_embedder(load_clip(model="clip-tiny"))  # random weights: scores only
            summary = build_dataset(cfg, embedder)
            requests_after_build = len(web.requests)
            yield {
                "cfg": cfg,
                "summary": summary,
                "web": web,
                "truth": web.truth,
                "wit_rows": len(web.site.wit_rows(web.base_url)),
                "requests": requests_after_build,
                "embedder": embedder,
            }
    finally:
        server.shutdown()
        server.server_close()


def test_truth_figures_on_the_loopback_web(built):
    figures = score(built["cfg"].out, built["truth"])
    print(
        f"\njunk rejected for the right reason: {figures['junk_rejected_right']}/{figures['junk']} "
        f"({figures['junk_rejected_pct']:.1f} %); clean kept: {figures['clean_kept']}/{figures['clean']} "
        f"({figures['clean_kept_pct']:.1f} %); mismatched captions caught without a trained CLIP: "
        f"{figures['mismatched_caught']}/{figures['mismatched']}"
    )
    assert figures["junk"] >= 10 and figures["clean"] >= 30
    assert figures["junk_rejected_pct"] >= 99.0, figures["misses"]
    assert figures["clean_kept_pct"] >= 98.0, figures["misses"]


def test_every_input_row_is_kept_or_rejected_once(built):
    out = built["cfg"].out
    kept = shards.read_table(
        out, columns=["key", "url", "caption", "jpg", "phash", "clip_score", "text_source"]
    )
    rejects = shards.read_table(out, columns=["key", "reject_stage", "reject_reason"], kind="rejects")
    keys = kept["key"].to_pylist() + rejects["key"].to_pylist()
    hostile_lines = len(HOSTILE_CAPTIONS) + 6 + 1  # + the garbage line
    assert len(keys) == len(set(keys)) == built["wit_rows"] + hostile_lines
    assert built["summary"].kept == kept.num_rows and built["summary"].rejected == rejects.num_rows
    assert all(
        r and s for r, s in zip(rejects["reject_reason"].to_pylist(), rejects["reject_stage"].to_pylist())
    )
    # kept rows are complete records: decodable 64 px pictures, a pHash, a CLIP score, the caption's field
    for row in kept.slice(0, 5).to_pylist():
        assert Image.open(io.BytesIO(row["jpg"])).size == (64, 64)
        assert len(row["phash"]) == 16 and -1.0 <= row["clip_score"] <= 1.0
        assert row["text_source"].startswith("caption_")
    manifest = shards.load_manifest(out)
    assert manifest.counts["kept"] == kept.num_rows and manifest.extra["build"]["complete"]
    by_stage = manifest.counts["by_stage"]
    assert {"read", "text", "download", "image", "dedup"} <= set(by_stage)


def test_hostile_pictures_and_rows(built):
    out = built["cfg"].out
    kept_urls = set(shards.read_table(out, columns=["url"])["url"].to_pylist())
    rejects = shards.read_table(out, columns=["url", "reject_reason"], kind="rejects").to_pylist()
    reason = {r["url"]: r["reject_reason"].split(":")[0] for r in rejects if r["url"]}
    by_path = {u.rsplit("/", 1)[-1]: u for u in kept_urls | set(reason) if u.startswith("http://127.0.0.1")}
    assert reason[by_path["bomb.png"]] == "decompression_bomb"
    assert reason[by_path["drawing.png"]] == "undecodable"
    for name in ("animated.gif", "sixteen.png"):
        assert by_path[name] in kept_urls, (name, reason.get(by_path[name]))
    # the CMYK and the palette file are the same red circle: one is kept, the other is its duplicate
    pair = [by_path["cmyk.jpg"], by_path["palette.png"]]
    assert sorted(u in kept_urls for u in pair) == [False, True]
    assert [reason[u] for u in pair if u not in kept_urls] == ["near_duplicate"]
    assert reason["file:///etc/passwd"] == "bad_scheme"
    assert reason["ftp://127.0.0.1/a.png"] == "bad_scheme"
    assert reason["javascript:alert(1)"] == "bad_scheme"
    assert reason["http://user:secret@127.0.0.1/a.png"] == "credentials_in_url"
    names = [r["reject_reason"].split(":")[0] for r in rejects]
    assert {"wrong_field_count", "line_too_long", "binary_garbage"} <= set(names)


def test_report_and_contact_sheet(built):
    summary = built["summary"]
    text = summary.report.read_text()
    assert "| stage | reason | rows |" in text
    for stage, reasons in summary.counts.items():
        for name, n in reasons.items():
            assert f"| {stage} | {name} | {n} |" in text
    sheet = Image.open(summary.contact_sheet)
    assert sheet.width > 500 and sheet.height > 300


def test_rerun_resumes_without_downloading_again(built):
    cfg, web = built["cfg"], built["web"]
    before = shards.read_table(cfg.out, columns=["key"])["key"].to_pylist()
    again = build_dataset(cfg, built["embedder"])
    assert again.skipped and again.kept == built["summary"].kept
    assert len(web.requests) == built["requests"]  # nothing fetched twice
    assert shards.read_table(cfg.out, columns=["key"])["key"].to_pylist() == before


def test_reuse_downloads_filters_again_without_fetching(built, tmp_path):
    """Round 2 of the demo: the same sources filtered by CLIP score, the chunks copied from round 1."""
    web = built["web"]
    # round 1 of its own: a rerun of the shared build (another test) starts a new increment, which
    # clears that build's work folder and the chunks in it
    cfg = BuildConfig(**{**built["cfg"].__dict__, "out": tmp_path / "round1"})
    build_dataset(cfg, built["embedder"])
    fetched = len(web.requests)
    again = BuildConfig(
        **{
            **cfg.__dict__,
            "out": tmp_path / "refiltered",
            "reuse_downloads": [cfg.out],
            "clip_top_fraction": 0.5,
        }
    )
    summary = build_dataset(again, built["embedder"])
    assert len(web.requests) == fetched  # nothing fetched again
    markers = sorted((again.out / "work" / "staged").glob("chunk-*.json"))
    assert markers and all(json.loads(m.read_text())["reused_from"] == str(cfg.out) for m in markers)
    first = set(shards.read_table(cfg.out, columns=["key"])["key"].to_pylist())
    kept = set(shards.read_table(again.out, columns=["key"])["key"].to_pylist())
    assert kept < first and summary.counts["clip"]["low_clip_score"] == len(first) - len(kept)

    # a chunk is reused only when its candidate rows and its download settings are the same
    for changes in ({"image_size": 48}, {"caption_policy": ["caption_alt_text_description"]}):
        other = BuildConfig(**{**again.__dict__, "out": tmp_path / next(iter(changes)), **changes})
        chunks = collect_candidates(other).chunks
        assert chunks and all(reused_chunk(other, c) is None for c in chunks), changes
    assert all(reused_chunk(again, c) is not None for c in collect_candidates(again).chunks)
    typo = BuildConfig(**{**again.__dict__, "out": tmp_path / "typo", "reuse_downloads": [tmp_path / "nope"]})
    with pytest.raises(BuildError, match="--reuse-downloads .*nope: not a build directory"):
        build_dataset(typo)

    # an earlier chunk that goes away between the check and the copy (that build started a new
    # increment) is downloaded instead
    gone = BuildConfig(**{**again.__dict__, "out": tmp_path / "gone"})
    chunk = collect_candidates(gone).chunks[0]
    staged = reused_chunk(gone, chunk)
    Path(f"{staged}.rejects.parquet").unlink()
    result = download_chunk(gone, chunk)
    assert result.reused_from is None and result.rows == chunk.rows and len(web.requests) > fetched


def test_changed_settings_are_refused_on_resume(built):
    from common.settings import ConfigError

    changed = BuildConfig(**{**built["cfg"].__dict__, "min_side": 10})
    with pytest.raises(ConfigError, match="min_side"):
        build_dataset(changed)


def test_private_addresses_refused_without_allow_networks(tmp_path):
    rows = []
    for url in ("http://127.0.0.1:9/a.png", "http://10.0.0.7/b.png", "http://169.254.169.254/c.png"):
        row = dict.fromkeys(WIT_COLUMNS, "")
        row.update(image_url=url, caption_reference_description="a red circle on white paper")
        rows.append("\t".join(row[c] for c in WIT_COLUMNS))
    wit = tmp_path / "private.tsv"
    wit.write_text("\n".join(rows) + "\n")
    candidates = collect_candidates(BuildConfig(out=tmp_path / "ds", source=[f"wit:{wit}"]))
    assert candidates.candidates == 0 and candidates.counts == {"read/refused_address": 3}
    reasons = pq.read_table(tmp_path / "ds/work/candidates/rejects-00000.parquet")[
        "reject_reason"
    ].to_pylist()
    assert "--allow-networks 127.0.0.1/32" in reasons[0] and "--allow-networks 10.0.0.7/32" in reasons[1]
    assert "never allowed" in reasons[2]  # the metadata address: no hint, no way to open it
    # even a build that opens every network keeps link-local / metadata shut
    everything = BuildConfig(out=tmp_path / "all", source=[f"wit:{wit}"], allow_networks=["0.0.0.0/0"])
    assert collect_candidates(everything).counts == {"read/refused_address": 1}


def test_truth_file_matches_the_served_site(built, tmp_path):
    # the scoring helper and the site agree on what is in the WIT file
    truth = built["truth"]
    assert sum(1 for t in truth["images"].values() if t["in_wit"]) == built["wit_rows"]
    # The file `--truth` writes reads back as the truth the tests score against.
    written = built["web"].write_truth(tmp_path / "truth.json")
    assert json.loads(written.read_text(encoding="utf-8")) == truth
    # Every junk kind in the WIT file has an expected reject, and the scorer knows its stage and reason.
    kinds = {k for t in truth["images"].values() if t["in_wit"] and t["expected_reject"] for k in t["junk"]}
    judged = {k for k in kinds if truth["expected_rejects"].get(k)}
    assert judged and judged <= set(REASONS), judged - set(REASONS)


# --- the command line, killed and resumed ------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def cli(args: list[str], kill_when=None, timeout: float = 300) -> subprocess.CompletedProcess | None:
    """Run `python -m curation ...`; with `kill_when` (a callable polled every 50 ms), SIGKILL the
    whole process group (img2dataset's workers too) as soon as it returns True."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "curation", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if kill_when is None:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not kill_when() and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:  # ended on its own: return what it said
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    return None


def build_args(out: Path, wit: Path, networks: str, chunk_size: int) -> list[str]:
    """`python -m curation build` arguments for a WIT TSV with the FAST settings."""
    args = ["build", "--out", str(out), "--source", f"wit:{wit}", "--allow-networks", networks]
    args += ["--chunk-size", str(chunk_size)]
    for name, value in FAST.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return args


def kill_after(args: list[str], delays) -> int:
    """Run the CLI once per delay, SIGKILLing it (whole process group) that many seconds in; returns
    how many runs were killed (a run that finished first was not)."""
    kills = 0
    for delay in delays:
        deadline = time.monotonic() + float(delay)
        kills += cli(args, kill_when=lambda d=deadline: time.monotonic() >= d) is None
    return kills


def all_keys(out: Path) -> tuple[list[str], list[str]]:
    kept = shards.read_table(out, columns=["key"])["key"].to_pylist()
    rejected = shards.read_table(out, columns=["key"], kind="rejects")["key"].to_pylist()
    return kept, rejected


def test_cli_killed_between_chunks_then_resumed_equals_uninterrupted(built, tmp_path):
    cfg = built["cfg"]
    out = tmp_path / "killed"
    args = ["build", "--out", str(out), "--allow-networks", "127.0.0.1/32", "--chunk-size", "40"]
    for spec in cfg.source:
        args += ["--source", spec]
    for name, value in FAST.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    first_chunk = out / "work" / "staged" / "chunk-00000.json"
    killed = cli(args, kill_when=first_chunk.exists)
    assert killed is None, killed.stderr[-2000:]  # it was running, not failed
    assert first_chunk.exists() and not (out / "report.md").exists()  # killed mid-build
    done = cli(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kept" in done.stdout
    kept, rejected = all_keys(out)
    ref_kept, ref_rejected = all_keys(cfg.out)
    assert len(kept) + len(rejected) == len(set(kept) | set(rejected))  # no duplicates
    assert sorted(kept) == sorted(ref_kept) and sorted(rejected) == sorted(ref_rejected)


def test_cli_help_and_one_line_errors(tmp_path):
    shown = cli(["build", "--help"])
    assert shown.returncode == 0 and "--source" in shown.stdout and "--clip-top-fraction" in shown.stdout
    for args, message in [
        (["build", "--source", "http://x", "--out", str(tmp_path / "a")], "expected wit:PATH"),
        (
            ["build", "--source", f"wit:{tmp_path}/missing.tsv", "--out", str(tmp_path / "b")],
            "no such WIT file",
        ),
        (["build", "--source", "wit:x.tsv"], "`out`"),
        (
            [
                "build",
                "--source",
                "wit:x.tsv",
                "--out",
                "o",
                "--min-clip-score",
                "0.3",
                "--clip-top-fraction",
                "0.5",
            ],
            "not both",
        ),
        (["build", "--source", "wit:x.tsv", "--out", "o", "--chunk-size", "many"], "not an integer"),
    ]:
        failed = cli(args)
        assert failed.returncode == 2, (args, failed.stderr)
        last = failed.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last and "Traceback" not in failed.stderr


def test_crawl_source_end_to_end(tmp_path):
    with serve_testweb(pages=6, seed=1, slow_delay_s=1.0) as web:
        cfg = BuildConfig(
            out=tmp_path / "crawled",
            source=[f"crawl:{web.base_url}/"],
            allow_networks=["127.0.0.1/32"],
            **FAST,
        )
        summary = build_dataset(cfg)
        figures = score(cfg.out, web.truth, in_wit_only=False)  # robots-disallowed pages count as rejected
    assert "crawl" in summary.counts and any("robots" in r for r in summary.counts["crawl"])
    assert figures["junk"] >= 10 and figures["junk_rejected_pct"] >= 99.0, figures["misses"]
    assert figures["clean_kept_pct"] >= 98.0, figures["misses"]
    sources = set(shards.read_table(cfg.out, columns=["source"])["source"].to_pylist())
    assert sources == {f"crawl:{web.base_url}/"}


def test_page_numbers_leave_the_page_titles(tmp_path):
    """A listing's page number is not kept in the page title, from a crawl or a WIT TSV (curation.wit.page_fields);
    the candidate rows carry the titles into the shards."""
    rng = np.random.default_rng(2)
    page = (
        "<html lang='en'><head><title>Red circles - Page 2 of 3</title></head><body><figure>"
        "<img src='/circle.png' alt='a red circle'><figcaption>A red circle drawn on white paper</figcaption>"
        "</figure></body></html>"
    )

    class Site(_Handler):
        files = {
            "/": ("text/html; charset=utf-8", page.encode()),
            "/circle.png": ("image/png", _png(render_shape_image("red circle", rng, 96))),
            "/star.png": ("image/png", _png(render_shape_image("blue star", rng, 96))),
        }

    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    row = wit_line(
        page_url=base + "/stars.html",
        page_title="Blue stars (part 4)",
        image_url=base + "/star.png",
        caption_reference_description="A blue star drawn on white paper",
    )
    wit = write_lines(tmp_path / "stars.tsv", [row.encode()])
    try:
        cfg = BuildConfig(
            out=tmp_path / "titled",
            source=[f"crawl:{base}/", f"wit:{wit}"],
            allow_networks=["127.0.0.1/32"],
            **FAST,
        )
        chunks = collect_candidates(cfg).chunks  # the rows img2dataset would be given
    finally:
        server.shutdown()
    titles = [
        t for c in chunks for t in pq.read_table(c.path, columns=["page_title"])["page_title"].to_pylist()
    ]
    assert sorted(titles) == ["Blue stars", "Red circles"]


def test_toml_config_gives_the_same_settings_as_flags(tmp_path):
    from common.settings import ConfigError, load_config

    toml = tmp_path / "build.toml"
    toml.write_text(
        'out = "data/web"\nsource = ["wit:a.tsv", "crawl:http://127.0.0.1:8765/"]\n'
        'languages = ["en", "de"]\nmin_side = 48\nclip_top_fraction = 0.7\n'
    )
    cfg = load_config(BuildConfig, toml, ["chunk_size=100"])
    assert cfg == BuildConfig(
        out=Path("data/web"),
        source=["wit:a.tsv", "crawl:http://127.0.0.1:8765/"],
        languages=["en", "de"],
        min_side=48,
        clip_top_fraction=0.7,
        chunk_size=100,
    )
    toml.write_text('out = "x"\nmin_sides = 3\n')
    with pytest.raises(ConfigError, match="unknown setting.*min_sides"):
        load_config(BuildConfig, toml)
    failed = cli(["build", "--config", str(toml)])
    assert failed.returncode == 2 and "min_sides" in failed.stderr.strip().splitlines()[-1]
