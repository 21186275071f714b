"""The emoji/icon corpus: pinned npm tarballs, verified and unpacked atomically; concepts; rendering.

The small packages (openmoji, @tabler/icons, emojibase-data: ~12 MB) are fetched from the npm registry
the first time into the corpus cache ($CLIP_CORPUS_DIR or ~/.cache/clip-workbench/corpus) and reused;
a loopback registry stands in for a bad or unreachable one.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from testbed import corpus as corpus_mod
from testbed.corpus import (
    PACKAGES,
    SMALL,
    CorpusError,
    Picture,
    fetch,
    is_cached,
    load_corpus,
    package_dir,
    sri_sha512,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_corpus():
    fetch(SMALL, progress=False)  # a no-op once cached
    return load_corpus(require=SMALL)


def test_concept_table_has_real_named_things(small_corpus):
    concepts = small_corpus.concepts
    cat = concepts["emoji:1F431"]
    assert cat.name == "cat face" and cat.group == "animals & nature" and cat.subgroup == "animal mammal"
    assert "kitten" in cat.tags and cat.localised["de"] == "Katzengesicht" and cat.annotation == "cat face"
    bike = concepts["icon:bike"]
    assert bike.kind == "icon" and bike.group == "vehicles"
    styles = {p.style for p in small_corpus.pictures}
    assert {"openmoji-color", "openmoji-black", "tabler-outline", "tabler-filled"} <= styles
    assert sum(c.kind == "emoji" for c in concepts.values()) > 1800
    assert sum(c.kind == "icon" for c in concepts.values()) > 5000
    assert not any("1F3FB" in cid for cid in concepts)  # skin-tone variants are the same concept


def test_a_slice_renders_to_real_pictures(small_corpus):
    by_style = {s: small_corpus.by_style(s) for s in ("openmoji-color", "openmoji-black", "tabler-outline")}
    ids = sorted(set(by_style["openmoji-color"]))[::20][:100]
    icons = sorted(by_style["tabler-outline"])[::50][:100]
    slice_ = [by_style["openmoji-color"][c] for c in ids] + [by_style["openmoji-black"][c] for c in ids]
    slice_ += [by_style["tabler-outline"][c] for c in icons]
    assert len(slice_) >= 250
    for picture in slice_:
        image = small_corpus.image(picture, 64)
        assert image is not None, small_corpus.failures.get(picture.path)
        pixels = np.asarray(image)
        assert image.size == (64, 64) and pixels.shape == (64, 64, 3)
        assert (pixels < 200).mean() > 0.01, picture  # something is drawn on the white
        assert pixels[0, 0].min() > 200  # on white, not on black transparency
    colour = np.asarray(small_corpus.image(by_style["openmoji-color"]["emoji:1F431"], 64)).astype(int)
    line = np.asarray(small_corpus.image(by_style["openmoji-black"]["emoji:1F431"], 64)).astype(int)
    assert np.abs(colour[..., 0] - colour[..., 2]).max() > 80  # the cat is coloured
    assert np.abs(line[..., 0] - line[..., 2]).max() < 40  # the line art is grey/black


def test_an_svg_that_fails_to_render_is_recorded_and_skipped(small_corpus, tmp_path):
    bad = tmp_path / "packages" / "broken.svg"
    bad.parent.mkdir(parents=True)
    bad.write_text("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 10 10'><path d='M0 0 L")
    corpus = corpus_mod.Corpus(tmp_path, {}, [])
    picture = Picture("emoji:X", "openmoji-color", "packages/broken.svg")
    assert corpus.image(picture, 64) is None
    assert "cairosvg cannot render" in corpus.failures["packages/broken.svg"]
    assert json.loads((tmp_path / "render-failures.json").read_text())["packages/broken.svg"]
    assert corpus.image(picture, 64) is None  # not retried


# --- a loopback registry: integrity, unreachability, half-unpacked folders -----------------------------------


def _tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _Registry(ThreadingHTTPServer):
    def __init__(self, tarball: bytes, integrity: str):
        super().__init__(("127.0.0.1", 0), _RegistryHandler)
        self.tarball, self.integrity = tarball, integrity

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RegistryHandler(BaseHTTPRequestHandler):
    server: _Registry

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.endswith(".tgz"):
            body, kind = self.server.tarball, "application/octet-stream"
        else:  # version metadata, as registry.npmjs.org/NAME/VERSION answers
            meta = {"dist": {"integrity": self.server.integrity, "tarball": self.server.url + "/pkg.tgz"}}
            body, kind = json.dumps(meta).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def registry():
    servers = []

    def start(tarball: bytes, integrity: str) -> _Registry:
        server = _Registry(tarball, integrity)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_tarball_that_does_not_match_its_integrity_is_never_unpacked(registry, tmp_path):
    package = PACKAGES["emojibase-data"]
    served = _tarball({"en/data.json": b"[]", "en/messages.json": b"{}"})  # not the published bytes
    server = registry(served, package.integrity)  # the metadata is right, the bytes are not
    with pytest.raises(CorpusError, match="integrity mismatch") as err:
        fetch(["emojibase-data"], tmp_path, registry=server.url, method="http", progress=False)
    assert "\n" not in str(err.value) and "python -m testbed.corpus fetch" in str(err.value)
    assert not is_cached(package, tmp_path)
    packages = tmp_path / "packages"
    assert not packages.exists() or not list(packages.iterdir())  # nothing half-unpacked left either


def test_registry_metadata_with_another_integrity_is_refused(registry, tmp_path):
    served = _tarball({"en/data.json": b"[]"})
    server = registry(served, sri_sha512(served))  # self-consistent, but not what we pinned
    with pytest.raises(CorpusError, match="not the pinned"):
        fetch(["emojibase-data"], tmp_path, registry=server.url, method="http", progress=False)
    assert not is_cached(PACKAGES["emojibase-data"], tmp_path)


def test_an_unreachable_registry_names_the_command_to_retry(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_CORPUS_DIR", str(tmp_path))
    monkeypatch.setenv("CLIP_CORPUS_REGISTRY", "http://127.0.0.1:9")  # discard port: nothing listens
    done = subprocess.run(
        [sys.executable, "-m", "testbed.corpus", "fetch", "--small", "--method", "http"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "unreachable" in lines[0] and "python -m testbed.corpus fetch --small" in lines[0]


def test_half_unpacked_folders_are_never_trusted_and_are_cleaned(small_corpus, tmp_path):
    package = PACKAGES["emojibase-data"]
    good = package_dir(package, small_corpus.cache)
    final = package_dir(package, tmp_path)
    # a folder with the files but no completion mark (as a crash mid-unpack before the rename would leave)
    final.mkdir(parents=True)
    (final / "package").symlink_to(good / "package")
    assert not is_cached(package, tmp_path)
    leftover = tmp_path / "packages" / f".{final.name}.partial-x1"
    leftover.mkdir()
    with pytest.raises(CorpusError, match="lacks emojibase-data"):
        load_corpus(tmp_path, require=["emojibase-data"])
    assert corpus_mod.remove_partial(tmp_path) == [leftover] and not leftover.exists()


def test_a_real_fetch_unpacks_only_what_is_used(small_corpus):
    root = package_dir(PACKAGES["emojibase-data"], small_corpus.cache) / "package"
    assert (root / "en" / "data.json").is_file() and (root / "de" / "data.json").is_file()
    assert not (root / "ja").exists()  # languages we do not use are not unpacked
    assert (root.parent / ".integrity").read_text().strip() == PACKAGES["emojibase-data"].integrity


def test_info_cli_reports_the_cache(small_corpus, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "testbed.corpus", "info", "--table", str(tmp_path / "t.jsonl")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[: done.stdout.rindex("}") + 1])
    assert all(summary["packages"][name] for name in SMALL)
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert any(r["concept"] == "icon:bike" and r["style"] == "tabler-outline" for r in rows)
