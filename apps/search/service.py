"""The HTTP service (FastAPI): `/knn`, `/metadata`, `/image/ID`, `/health`, `/metrics`, and the web page.

    GET  /knn?text=a+red+circle&index=image&k=20&offset=0&hide_duplicates=true&min_score=0.2
    GET  /knn?id=17            (more like this)        GET /knn?image_url=https://...
    POST /knn?k=20             body: the bytes of a picture (any image type)
    POST /knn                  body: JSON {"text"|"id"|"image_url"|"vector": ..., "k": ..., ...}
    ...&format=parquet|json    the same results as a file to download

Every bad request gets HTTP 400 (413 for a body over the upload limit) and a JSON
`{"error": "one line that names the input and the fix"}`; the server never answers a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool

from apps.search.index import MODALITIES, SearchIndexError
from apps.search.query import QueryEncoder, QueryError
from apps.search.store import SearchIndex

STATIC = Path(__file__).parent / "static"
MAX_VIDEO_RESULTS = 8
QUERY_FIELDS = ("text", "id", "image_url", "vector")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class ServiceState:
    index: SearchIndex
    encoder: QueryEncoder
    videos: Any = None  # an apps.clip4clip VideoIndex, or None

    def __post_init__(self) -> None:
        self.video_rows = {v["path"]: i for i, v in enumerate(self.videos.videos)} if self.videos else {}


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise BadRequest(f"{name}={value!r}: use true or false")


def _number(value: Any, name: str, kind=int):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name}={value!r}: not a {'whole number' if kind is int else 'number'}") from None


def _video_hits(state: ServiceState, text: str) -> list[dict]:
    from apps.clip4clip.search import search as video_search

    with state.encoder.lock:  # the same CLIP embeds the query: one call through the model at a time
        hits = video_search(state.videos, text, k=min(MAX_VIDEO_RESULTS, len(state.videos.videos)))
    found = []
    for hit in hits:
        row = state.video_rows[hit.path]
        found.append(
            {
                "rank": hit.rank,
                "score": hit.score,
                "name": Path(hit.path).name,
                "duration": hit.duration,
                "frames": [{"time": t, "image": f"/video/{row}/frame/{j}"} for j, t in enumerate(hit.times)],
            }
        )
    return found


def _quick(state: ServiceState, params: dict, body: bytes | None) -> bool:
    """A query by vector or id (no CLIP, no network) on a quick index: answered on the event loop.

    Handing it to a worker thread and back costs two thread wake-ups, which on 2 busy cores take
    longer than the search (docs/search.md); everything slower (CLIP, a URL, a big page, exact search
    over many rows) still runs in the thread pool, so the loop keeps serving other requests.
    """
    if body or not any(params.get(f) not in (None, "") for f in ("vector", "id")):
        return False
    if any(params.get(f) not in (None, "") for f in ("text", "image_url", "min_score")):
        return False  # several queries (refused in the pool like any other), or a filter that may widen
    if str(params.get("hide_duplicates", "")).lower() not in ("", "0", "false", "no", "off"):
        return False  # the candidate list until the page is full: not bounded in advance
    try:
        wanted = int(params.get("k", 20)) + int(params.get("offset", 0))
    except (TypeError, ValueError):
        return False
    return state.index.quick(str(params.get("index") or "image"), wanted)


def answer(state: ServiceState, params: dict, body: bytes | None) -> dict:
    """The results of one /knn request (see the module doc for the parameters)."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    index = state.index
    given = [f for f in QUERY_FIELDS if params.get(f) not in (None, "")]
    if body:
        given.append("upload")
    if not given:
        raise BadRequest("empty query: send text=..., id=..., image_url=..., or a picture as the POST body")
    if len(given) > 1:
        raise BadRequest(f"one query at a time: got {', '.join(given)}")
    modality = str(params.get("index") or "image")
    if modality not in MODALITIES:
        raise BadRequest(f"index={modality!r}: choose image (pictures) or text (captions)")
    k = _number(params.get("k", 20), "k")
    offset = _number(params.get("offset", 0), "offset")
    hide = _flag(params.get("hide_duplicates", False), "hide_duplicates")
    min_score = params.get("min_score")
    min_score = None if min_score in (None, "") else _number(min_score, "min_score", float)
    source = given[0]
    if source == "text":
        vector = state.encoder.text(str(params["text"]))
    elif source == "id":
        vector = index.vector(_number(params["id"], "id"), modality)
    elif source == "image_url":
        vector = state.encoder.image_url(str(params["image_url"]))
    elif source == "vector":
        values = params["vector"]
        try:  # numpy checks the items in C (a Python loop over 512 of them cost 0.1 ms a query)
            vector = np.asarray(values) if isinstance(values, list) else None
        except ValueError:  # ragged nesting
            vector = None
        if vector is None or vector.ndim != 1 or vector.dtype.kind not in "iuf":
            raise BadRequest(f"vector: a JSON list of {index.dim} numbers")
        with np.errstate(over="ignore"):  # too large for float32: infinite, refused by knn as not finite
            vector = vector.astype(np.float32)
    else:
        vector = state.encoder.image(body)
    hits = index.knn(vector, modality, k, offset, hide, min_score)
    rows = index.rows([h.id for h in hits])
    results = [
        {**row, "score": hit.score, "rank": offset + i + 1, "image": f"/image/{hit.id}"}
        for i, (hit, row) in enumerate(zip(hits, rows))
    ]
    reply = {
        "query": {source: _echo(source, params, body)},
        "index": modality,
        "k": k,
        "offset": offset,
        "hide_duplicates": hide,
        "min_score": min_score,
        "results": results,
        "more": len(results) == k,
    }
    if (
        source == "text"
        and state.videos is not None
        and offset == 0
        and _flag(params.get("videos", True), "videos")
    ):
        reply["videos"] = _video_hits(state, str(params["text"]))
    reply["took_ms"] = round(1000 * (time.perf_counter() - started), 3)
    reply["cpu_ms"] = round(
        1000 * (time.thread_time() - cpu_started), 3
    )  # this thread's CPU: load-independent
    return reply


def _echo(source: str, params: dict, body: bytes | None):
    """What the reply repeats of the query: the words, id or URL; sizes for pictures and vectors."""
    if source == "upload":
        return f"{len(body):,} bytes"
    if source == "vector":
        return f"{len(params['vector'])} numbers"
    return params.get(source)


def results_parquet(reply: dict) -> bytes:
    columns = ["rank", "score", "id", "key", "caption", "url", "clip_score", "width", "height", "dup_group"]
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in reply["results"]])
    if not reply["results"]:
        table = pa.table({c: pa.array([], pa.string()) for c in columns})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


class Measure:
    """Counts and times every request by endpoint (plain ASGI: cheaper than an HTTP middleware)."""

    def __init__(self, app, requests: Counter, latency: Histogram):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = "/" + scope["path"].split("/")[1]  # /knn, /image, /static, ...: ids stay out of labels
            self.requests.labels(endpoint, str(status[0])).inc()
            self.latency.labels(endpoint).observe(time.perf_counter() - start)


def create_app(state: ServiceState) -> FastAPI:
    app = FastAPI(title="CLIP search", docs_url="/docs", redoc_url=None)
    registry = CollectorRegistry()
    requests = Counter("search_requests", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram(
        "search_request_seconds",
        "time to answer, by endpoint",
        ["endpoint"],
        buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        registry=registry,
    )
    Gauge("search_index_rows", "pairs in the served index", registry=registry).set(state.index.count)

    app.add_middleware(Measure, requests=requests, latency=latency)

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def read_body(request: Request) -> bytes:
        limit = state.encoder.max_upload
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BadRequest(
                f"upload of {int(declared):,} bytes: at most {limit:,} (send a smaller picture)", 413
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"upload of more than {limit:,} bytes: send a smaller picture", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def knn(request: Request) -> Response:
        params: dict[str, Any] = dict(request.query_params)
        try:
            body = None
            if request.method == "POST":
                body = await read_body(request)
                if request.headers.get("content-type", "").startswith("application/json"):
                    try:
                        payload = json.loads(body or b"{}")
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        raise BadRequest(f"request body is not valid JSON ({exc})") from None
                    if not isinstance(payload, dict):
                        raise BadRequest('request body: a JSON object such as {"text": "a red circle"}')
                    params.update(payload)
                    body = None
            if _quick(state, params, body):
                reply = answer(state, params, body)
            else:
                reply = await run_in_threadpool(answer, state, params, body)
        except BadRequest as exc:
            return error(str(exc), exc.status)
        except (QueryError, SearchIndexError) as exc:
            return error(str(exc))
        kind = params.get("format", "")
        if kind == "parquet":
            return Response(
                results_parquet(reply),
                media_type="application/vnd.apache.parquet",
                headers={"Content-Disposition": 'attachment; filename="results.parquet"'},
            )
        if kind == "json":
            return Response(
                json.dumps(reply, ensure_ascii=False, indent=1),
                media_type="application/json",
                headers={"Content-Disposition": 'attachment; filename="results.json"'},
            )
        if kind:
            return error(f"format={kind!r}: json or parquet")
        return JSONResponse(reply)

    app.add_api_route("/knn", knn, methods=["GET", "POST"])

    @app.get("/metadata")
    def metadata(ids: str = "") -> Response:
        try:
            wanted = [int(x) for x in ids.split(",") if x.strip()]
            return JSONResponse({"metadata": state.index.rows(wanted)})
        except ValueError as exc:
            return error(f"ids={ids!r}: comma-separated row ids ({exc})")

    @app.get("/image/{row}")
    def image(row: int) -> Response:
        try:
            data = state.index.image_bytes(row)
        except SearchIndexError as exc:
            return error(str(exc), 404)
        if data is None:
            return error(f"row {row} has no picture in this index", 404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/video/{row}/frame/{frame}")
    def video_frame(row: int, frame: int) -> Response:
        videos = state.videos.videos if state.videos else []
        if not 0 <= row < len(videos) or not 0 <= frame < len(videos[row]["thumbnails"]):
            return error(f"no frame {frame} of video {row}", 404)
        return Response(videos[row]["thumbnails"][frame], media_type="image/jpeg")

    @app.get("/health")
    def health() -> dict:
        meta = state.index.meta
        return {
            "status": "ok",
            "rows": state.index.count,
            "dim": state.index.dim,
            "faiss": meta["faiss"],
            "clip": (meta["clip"] or {}).get("model_name"),
            "text_queries": state.encoder.clip is not None,
            "videos": len(state.videos.videos) if state.videos else 0,
        }

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


@contextlib.contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` with uvicorn from a thread; yields the base URL (port 0: a free port)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the search server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{host}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
