"""`python -m apps.search {index,serve}`: CLIP search over a dataset version, with a web page.

python -m apps.search index runs/demo/data --out runs/search --checkpoint runs/demo/train
python -m apps.search serve runs/search --port 8000          # then open http://127.0.0.1:8000/
python -m apps.search serve runs/search --videos runs/demo/video/index
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

from apps.cli import add_model_arguments, model_choice, set_threads
from common.errors import run_cli

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5GiB', '1000000' -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 4G, 512M or a number of bytes")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_kmgt".index(unit.lower() or "_"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.search",
        description="Search a dataset's pictures and captions with CLIP: build an index, then serve it "
        "(an HTTP API and a web page) on this machine.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{index,serve}")

    index = sub.add_parser(
        "index",
        help="embed a dataset version into a search index (resumable; only new shards are embedded)",
        description="Embed every picture and caption of a dataset (a `python -m curation build` output) "
        "with a CLIP, group near-duplicates, and write faiss indexes. Rerun on a new version of the "
        "dataset: only shards not embedded yet are embedded.",
    )
    index.add_argument("dataset", type=Path, help="dataset directory (shards/ + manifest.json)")
    index.add_argument("--out", type=Path, required=True, help="index directory to write (or update)")
    add_model_arguments(index)
    index.add_argument("--batch-size", type=int, default=64, help="pairs embedded per batch")
    index.add_argument(
        "--max-memory",
        type=parse_size,
        default="4G",
        help="memory the two faiss indexes may take (e.g. 4G): decides flat, IVF-flat, IVF-SQ8 or IVF-PQ",
    )
    index.add_argument(
        "--index-type", help="faiss factory string instead of the automatic choice, e.g. HNSW32"
    )
    index.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="recall@10 against exact search that an inverted file's nprobe is tuned for at index time "
        "(measured on 200 of the index's own rows and, for pictures, their captions; default 0.95)",
    )
    index.add_argument("--no-progress", action="store_true", help="no progress bar")

    serve = sub.add_parser(
        "serve",
        help="serve an index: /knn, /metadata, /health, /metrics and the web page",
        description="Serve a search index over HTTP (FastAPI + uvicorn). Open http://HOST:PORT/ for the page. "
        "Queries are embedded by the CLIP the index recorded unless --checkpoint/--model name another "
        "with the same weights.",
    )
    serve.add_argument("index", type=Path, help="index directory written by `index`")
    serve.add_argument(
        "--videos", type=Path, help="a `python -m apps.clip4clip index` directory to search too"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000, help="TCP port")
    serve.add_argument(
        "--nprobe",
        type=int,
        help="inverted lists scanned per query (IVF indexes; more = better recall; default: the nprobe "
        "`index` tuned for its --target-recall, recorded in index.json)",
    )
    serve.add_argument(
        "--max-upload", type=parse_size, default="8M", help="largest picture upload (default 8M)"
    )
    serve.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="network image_url queries may reach despite being private or loopback, e.g. 127.0.0.0/8 (repeatable)",
    )
    add_model_arguments(serve)  # serve's default is the CLIP the index recorded, not the demo's
    return parser


def _set_threads(threads: int) -> None:
    import faiss

    set_threads(threads)  # torch, checked
    faiss.omp_set_num_threads(threads)


def run_index(ns: argparse.Namespace) -> None:
    from apps.search.index import IndexSettings, SearchIndexError, build_index

    _set_threads(ns.threads)
    if ns.batch_size < 1:
        raise SearchIndexError(f"--batch-size {ns.batch_size}: at least 1")
    if not 0 < ns.target_recall <= 1:
        raise SearchIndexError(f"--target-recall {ns.target_recall}: a fraction, e.g. 0.95")
    clip = model_choice(ns).load()
    settings = IndexSettings(
        batch_size=ns.batch_size,
        max_memory=ns.max_memory,
        index_type=ns.index_type,
        target_recall=ns.target_recall,
        progress=not ns.no_progress,
    )
    report = build_index(ns.dataset, ns.out, clip, settings)
    print(
        f"indexed {report.rows:,} pairs of {ns.dataset} into {report.index_dir} "
        f"({len(report.embedded_shards)} shards embedded, {len(report.reused_shards)} reused, "
        f"{report.rejected} rows rejected, {report.duplicate_groups} near-duplicate groups, "
        f"faiss {report.index_types['image']}, {report.bytes / 1e6:.1f} MB)"
    )
    for name, kind in report.faiss.items():
        if kind["type"] != "Flat":
            short = kind["recall_at_10"] < kind["target_recall"]
            print(
                f"{name} index: nprobe {kind['nprobe']} reaches recall@10 {kind['recall_at_10']:.3f} "
                f"against exact search (target {kind['target_recall']})"
                + (
                    ": below it even scanning every list; the codes lose too much, try --index-type "
                    "IVF<lists>,Flat or Flat"
                    if short
                    else ""
                )
            )
    print(f"serve it: python -m apps.search serve {report.index_dir} --port 8000")


def run_serve(ns: argparse.Namespace) -> None:
    import uvicorn

    from apps.search.index import SearchIndexError, read_index_meta
    from apps.search.query import QueryEncoder, url_policy
    from apps.search.service import ServiceState, create_app
    from apps.search.store import SearchIndex

    _set_threads(ns.threads)
    meta = read_index_meta(ns.index)
    clip = None
    choice = model_choice(ns)
    named = choice.checkpoint is not None or choice.model is not None
    if meta["clip"] is not None or named:
        recorded = (meta["clip"] or {}).get("checkpoint")
        if not named:
            if recorded is None or not Path(recorded).is_file():
                raise SearchIndexError(
                    f"{ns.index} was built with {recorded or 'a CLIP without a checkpoint file'}, which is "
                    "not here: pass --checkpoint with the same model"
                )
            choice = replace(choice, checkpoint=Path(recorded))
        clip = choice.load()
        if meta["clip"] is not None:
            from apps.clip4clip.index import check_same_clip

            check_same_clip(ns.index, meta["clip"], clip)
    videos = None
    if ns.videos is not None:
        if clip is None:
            raise SearchIndexError("--videos needs a CLIP to embed text queries: pass --checkpoint")
        from apps.clip4clip.search import open_index

        videos = open_index(ns.videos, clip)
    encoder = QueryEncoder(
        clip, max_upload=ns.max_upload, url_policy=url_policy(tuple(ns.allow_network), ns.max_upload)
    )
    state = ServiceState(SearchIndex(ns.index, nprobe=ns.nprobe, threads=ns.threads), encoder, videos)
    app = create_app(state)
    print(f"serving {ns.index} ({state.index.count:,} pairs) on http://{ns.host}:{ns.port}/", flush=True)
    uvicorn.run(app, host=ns.host, port=ns.port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return run_cli(lambda: run_index(ns) if ns.command == "index" else run_serve(ns))


if __name__ == "__main__":
    sys.exit(main())
