"""apps.search over HTTP: a real FastAPI + uvicorn server on loopback, a small dataset, a tiny CLIP.

Answers are checked where they are certain by construction: a picture's own embedding (more like
this, or the same picture uploaded) finds that picture first; a caption typed as a query finds
its row first in the caption index.
"""

from __future__ import annotations

import io
import json
import threading

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from apps.search.store import MAX_K
from testbed.web import serve_testweb
from tests.searchdata import (
    COPIED,
    SCRIPT_CAPTION,
    UNICODE_CAPTION,
    build_search_world,
    jpeg_of,
    png_bytes,
    serve_search,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoint):
    return build_search_world(tmp_path_factory.mktemp("search"), tiny_checkpoint, videos=True)


@pytest.fixture(scope="module")
def server(world):
    with serve_search(world, allowed_networks=("127.0.0.0/8",)) as base_url:
        yield base_url


def knn(base: str, **params) -> dict:
    reply = httpx.get(f"{base}/knn", params=params, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_more_like_this_and_captions_find_their_own_row(world, server):
    for key in ("000000010", "000000031", "unicode"):
        row = world.id_of(key)
        hits = knn(server, id=row, k=5)["results"]
        assert (
            hits[0]["id"] == row
            and hits[0]["key"] == key
            and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        )
    hits = knn(server, text=UNICODE_CAPTION, index="text", k=3)["results"]
    assert hits[0]["key"] == "unicode" and hits[0]["caption"] == UNICODE_CAPTION


def test_eight_clients_four_hundred_queries_in_parallel(world, server):
    n = 58 + COPIED + 2  # indexed rows (the broken picture is a reject)
    errors, wrong = [], []

    def client(worker: int) -> None:
        with httpx.Client(base_url=server, timeout=60) as http:
            for i in range(50):
                row = (worker * 50 + i) % n
                params = {"id": row, "k": 10} if i % 2 else {"id": row, "k": 10, "index": "text"}
                try:
                    reply = http.get("/knn", params=params)
                    results = reply.json()["results"]
                    # Exact copies score 1.0 too: the row itself must be among the perfect scores.
                    perfect = [h["id"] for h in results if h["score"] > 1 - 1e-4]
                    if reply.status_code != 200 or row not in perfect or len(results) != 10:
                        wrong.append((row, reply.status_code))
                except Exception as exc:  # noqa: BLE001 - every failure is collected and shown
                    errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not wrong, (errors[:3], wrong[:3])
    metrics = httpx.get(f"{server}/metrics").text
    served = [
        line
        for line in metrics.splitlines()
        if line.startswith('search_requests_total{endpoint="/knn",status="200"}')
    ]
    assert served and float(served[0].split()[-1]) >= 400


def test_uploaded_picture_finds_itself_and_duplicates_can_be_hidden(world, server):
    jpg = jpeg_of(world.rows, "000000001")  # row 1 has an exact copy ("copy-1")
    reply = httpx.post(f"{server}/knn", params={"k": 5}, content=jpg, headers={"content-type": "image/jpeg"})
    assert reply.status_code == 200, reply.text
    top = reply.json()["results"][:2]
    assert {h["key"] for h in top} == {"000000001", "copy-1"} and top[0]["dup_group"] == top[1]["dup_group"]
    assert top[0]["dup_count"] == 2
    hidden = httpx.post(f"{server}/knn", params={"k": 5, "hide_duplicates": "true"}, content=jpg).json()[
        "results"
    ]
    groups = [h["dup_group"] for h in hidden]
    assert len(set(groups)) == len(groups) and hidden[0]["key"] in {"000000001", "copy-1"}
    assert {"000000001", "copy-1"} - {h["key"] for h in hidden}  # one of the two copies is gone


def test_filters_paging_metadata_and_downloads(world, server):
    everything = knn(server, id=5, k=50)["results"]
    page2 = knn(server, id=5, k=10, offset=10)["results"]
    assert [h["id"] for h in page2] == [h["id"] for h in everything[10:20]]
    assert [h["rank"] for h in page2] == list(range(11, 21))
    cut = float(np.median([h["clip_score"] for h in everything]))
    kept = knn(server, id=5, k=50, min_score=cut)["results"]
    assert kept and all(h["clip_score"] >= cut for h in kept)
    # The filter widens the search until the page is full: the filtered top 50 starts the same way.
    expected = [h["id"] for h in everything if h["clip_score"] >= cut]
    assert [h["id"] for h in kept][: len(expected)] == expected and len(kept) > len(expected)
    meta = httpx.get(f"{server}/metadata", params={"ids": "0,3"}).json()["metadata"]
    assert [m["id"] for m in meta] == [0, 3] and meta[0]["key"] == world.rows[0]["key"]
    image = httpx.get(f"{server}/image/0")
    assert image.headers["content-type"] == "image/jpeg" and image.content == world.rows[0]["jpg"]
    table = pq.read_table(
        io.BytesIO(httpx.get(f"{server}/knn", params={"id": 5, "k": 7, "format": "parquet"}).content)
    )
    assert table.num_rows == 7 and table["id"].to_pylist() == [h["id"] for h in everything[:7]]
    saved = json.loads(httpx.get(f"{server}/knn", params={"id": 5, "k": 7, "format": "json"}).content)
    assert [h["id"] for h in saved["results"]] == [h["id"] for h in everything[:7]]


def test_hostile_requests_get_one_line_errors(world, server):
    def error(reply: httpx.Response, status: int, words: str) -> None:
        assert reply.status_code == status, reply.text
        message = reply.json()["error"]
        assert words in message and "\n" not in message and "Traceback" not in message

    error(httpx.get(f"{server}/knn", params={"text": "   "}), 400, "empty query")
    error(httpx.get(f"{server}/knn"), 400, "empty query")
    error(httpx.get(f"{server}/knn", params={"text": "x", "k": 100_000}), 400, f"{MAX_K:,}")
    error(httpx.get(f"{server}/knn", params={"text": "x", "k": "many"}), 400, "k='many'")
    error(httpx.get(f"{server}/knn", params={"id": 10**9}), 400, "not in the index")
    error(httpx.get(f"{server}/knn", params={"text": "x", "index": "audio"}), 400, "index='audio'")
    error(httpx.post(f"{server}/knn", content=b"%PDF-1.4 not a picture"), 400, "not a picture")
    ten_mb = np.random.default_rng(0).integers(0, 256, 10 * 1024 * 1024, dtype=np.uint8).tobytes()
    error(httpx.post(f"{server}/knn", content=ten_mb, timeout=60), 413, "at most")
    error(
        httpx.post(f"{server}/knn", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "JSON",
    )
    error(httpx.get(f"{server}/knn", params={"text": "x", "id": 1}), 400, "one query at a time")
    # Unicode, emoji and markup are plain words to the service; the caption comes back unchanged.
    assert knn(server, text="赤い三角形 🔺 <b>ß</b>", k=3)["results"]
    hits = knn(server, text=SCRIPT_CAPTION, index="text", k=1)["results"]
    assert hits[0]["key"] == "script" and hits[0]["caption"] == SCRIPT_CAPTION
    ok = httpx.post(f"{server}/knn", json={"text": "a red circle", "k": 2}).json()
    assert len(ok["results"]) == 2
    assert len(httpx.post(f"{server}/knn", params={"k": 2}, content=png_bytes()).json()["results"]) == 2


def test_image_url_goes_through_the_address_guard(world, server):
    with serve_testweb(pages=3, seed=0) as web:
        picture = next(
            u for u, info in web.truth["images"].items() if not info["junk"] and info["status"] == 200
        )
        by_url = knn(server, image_url=picture, k=5)["results"]
        same = httpx.post(f"{server}/knn", params={"k": 5}, content=httpx.get(picture).content).json()[
            "results"
        ]
        assert [h["id"] for h in by_url] == [h["id"] for h in same]
        assert any(path.endswith(picture.rsplit("/", 1)[1]) for path in web.requests)
    refused = httpx.get(f"{server}/knn", params={"image_url": "http://10.1.2.3/x.jpg"}).json()["error"]
    assert "private address 10.1.2.3" in refused
    assert (
        "scheme 'file'"
        in httpx.get(f"{server}/knn", params={"image_url": "file:///etc/passwd"}).json()["error"]
    )


def test_videos_come_with_text_queries_as_frame_strips(world, server):
    reply = knn(server, text="a red circle moves left", k=3)
    assert reply["videos"] and len(reply["videos"]) == 4
    video = reply["videos"][0]
    assert video["frames"] and all("time" in f for f in video["frames"])
    frame = httpx.get(server + video["frames"][0]["image"])
    assert frame.status_code == 200 and frame.content[:2] == b"\xff\xd8"
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["rows"] == 64 and health["videos"] == 4
