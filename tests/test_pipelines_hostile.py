"""Hostile situations for the flows: a host answering 503, a flow process killed with SIGKILL mid-build."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from curation import download
from curation.config import BuildConfig
from curation.shards import read_table
from pipelines.flows import build_dataset_flow
from pipelines.params import FlowOptions
from testbed.shapes import CLASSES, render_shape_image
from testbed.testweb import WIT_COLUMNS
from testbed.web import serve_testweb

REPO = Path(__file__).resolve().parents[1]


def _jpeg(cls: str, seed: int) -> bytes:
    buf = io.BytesIO()
    render_shape_image(cls, np.random.default_rng(seed), 64).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class FlakyHost(ThreadingHTTPServer):
    """Answers HTTP 503 to its first `failures` requests, then serves shape pictures."""

    daemon_threads = True

    def __init__(self, failures: int, images: dict[str, bytes]):
        self.failures, self.images, self.requests, self.lock = failures, images, [], threading.Lock()
        super().__init__(("127.0.0.1", 0), _FlakyHandler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FlakyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        server: FlakyHost = self.server  # type: ignore[assignment]
        with server.lock:
            server.requests.append(self.path)
            unavailable = len(server.requests) <= server.failures
        body = server.images.get(self.path)
        if unavailable or body is None:
            self.send_response(503 if unavailable else 404)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _write_wit(path: Path, base_url: str, paths: dict[str, str]) -> Path:
    lines = ["\t".join(WIT_COLUMNS)]
    for url_path, cls in paths.items():
        row = dict.fromkeys(WIT_COLUMNS, "")
        row.update(
            language="en",
            page_url=base_url + "/page.html",
            image_url=base_url + url_path,
            page_title="Shapes",
            caption_reference_description=f"a drawing of a {cls}",
            mime_type="image/jpeg",
        )
        lines.append("\t".join(row[c] for c in WIT_COLUMNS))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_download_task_retries_while_the_host_answers_503(tmp_path, monkeypatch):
    calls = []
    real = download.run_img2dataset
    monkeypatch.setattr(download, "run_img2dataset", lambda *a: calls.append(a[0]) or real(*a))
    paths = {f"/img/{i}.jpg": CLASSES[i] for i in range(3)}
    host = FlakyHost(failures=2, images={p: _jpeg(c, i) for i, (p, c) in enumerate(paths.items())})
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        wit = _write_wit(tmp_path / "flaky.tsv", host.base_url, paths)
        cfg = BuildConfig(
            source=[f"wit:{wit}"],
            out=tmp_path / "flaky",
            allow_networks=["127.0.0.1/32"],
            image_size=32,
            processes=1,
            timeout=2,
        )
        result = build_dataset_flow(cfg, FlowOptions(retries=3, retry_delay_seconds=0.2))
    finally:
        host.shutdown()
        host.server_close()
    # Two attempts met 503 (the probe asks robots.txt) and were retried by Prefect; the third downloaded
    # every picture.
    assert host.requests[:2] == ["/robots.txt", "/robots.txt"]
    assert len(calls) == 1, "img2dataset must not be spent on a chunk while its host is unavailable"
    assert result["summary"]["kept"] == 3
    assert sorted(read_table(cfg.out, columns=["url"])["url"].to_pylist()) == sorted(
        host.base_url + p for p in paths
    )


# Counts img2dataset calls of a flow process in a file, then runs the CLI: the real call still happens.
_COUNTING_RUN = """
import sys
from pathlib import Path
from curation import download
real = download.run_img2dataset
def counting(candidates, output_folder, options):
    with open(sys.argv[1], "a") as fh:
        fh.write(Path(candidates).stem + "\\n")
    return real(candidates, output_folder, options)
download.run_img2dataset = counting
from pipelines.__main__ import main
if __name__ == "__main__":
    sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigkill_mid_build_then_rerun_skips_finished_chunks(tmp_path):
    script = tmp_path / "counting_run.py"
    script.write_text(_COUNTING_RUN)
    out = tmp_path / "killed"
    with serve_testweb(pages=3, seed=1, slow_delay_s=0.5) as web:
        wit = web.write_wit(tmp_path / "site.tsv")
        args = [
            "run",
            "build-dataset",
            f"source=wit:{wit}",
            f"out={out}",
            "allow_networks=127.0.0.1/32",
            "chunk_size=8",
        ]
        args += ["image_size=32", "processes=1", "timeout=2"]

        def run(counter: Path) -> subprocess.Popen:
            return subprocess.Popen(
                [sys.executable, str(script), str(counter), *args],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )

        first_calls, second_calls = tmp_path / "first.txt", tmp_path / "second.txt"
        proc = run(first_calls)
        staged = out / "work" / "staged"
        deadline = time.monotonic() + 240
        while not list(staged.glob("chunk-*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        finished = {p.stem for p in staged.glob("chunk-*.json")}
        chunks = len(list((out / "work" / "candidates").glob("chunk-*.parquet")))
        assert finished and chunks > len(finished)

        rerun = run(second_calls)
        assert rerun.wait(timeout=400) == 0
    redone = second_calls.read_text().split()
    assert not set(redone) & finished, "a finished chunk was downloaded again"
    assert len(redone) == chunks - len(finished)
    keys = read_table(out, columns=["key"])["key"].to_pylist()
    assert keys and len(keys) == len(set(keys))
