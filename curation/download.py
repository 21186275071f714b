"""Download one chunk of candidates with img2dataset (its Reader, Downloader, Resizer and distributors).

One call per chunk: the chunk is the unit of retry and resume. We wire img2dataset's own
classes the way `img2dataset.download()` does, with two differences that matter here:

* every image is fetched by our guarded fetch (curation/fetch.py: address checked after DNS and
  pinned, every redirect hop checked, robots.txt and X-Robots-Tag honoured, a byte cap while
  reading, one deadline per download), installed in the worker in place of img2dataset's
  urllib `download_image` by `GuardedDownloader`;
* the resizer is `StrictResizer`, which refuses decompression bombs from the header alone
  (before OpenCV allocates the pixels) and truncated JPEG/PNG files (OpenCV decodes those
  silently with a grey bottom), each with a specific error message;
* no LoggerProcess (an extra spawned process and wandb import per call): the per-shard stats
  JSON that img2dataset writes is read back instead.

Everything else (threads, resizing, sha256, parquet writer, the multiprocessing / pyspark / ray
distributors) is img2dataset's.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError

# img2dataset imports albumentations (phones home for updates) and wandb; keep both offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import img2dataset.downloader  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from img2dataset.distributor import (  # noqa: E402
    multiprocessing_distributor,
    pyspark_distributor,
    ray_distributor,
)
from img2dataset.downloader import Downloader  # noqa: E402
from img2dataset.reader import Reader  # noqa: E402
from img2dataset.resizer import Resizer  # noqa: E402
from img2dataset.writer import ParquetSampleWriter  # noqa: E402
from PIL import Image  # noqa: E402

from curation.fetch import FetchPolicy, download_image  # noqa: E402
from curation.schema import WIT_TEXT_COLUMNS  # noqa: E402

# Columns carried from the candidate list through img2dataset into its output.
CARRIED_COLUMNS = (
    "key_candidate",
    *WIT_TEXT_COLUMNS,
    "text_source",
    "source",
    "caption_language",
)
DISTRIBUTORS = {
    "multiprocessing": multiprocessing_distributor,
    "pyspark": pyspark_distributor,
    "ray": ray_distributor,
}


class DownloadError(UserError, RuntimeError):
    """img2dataset did not produce a row for every candidate of the chunk (the chunk is retried)."""


@dataclass(frozen=True)
class DownloadOptions:
    """What img2dataset needs for one chunk (taken from BuildConfig by the build stage)."""

    image_size: int = 224
    resize_mode: str = "center_crop"
    processes: int = 2
    threads: int = 16
    retries: int = 0
    distributor: str = "multiprocessing"
    max_image_pixels: int = 100_000_000
    fetch: FetchPolicy = FetchPolicy()  # addresses, redirects, bytes, deadline, opt-outs


def _sniff(head: bytes) -> str:
    lowered = head[:512].lstrip().lower()
    if lowered.startswith((b"<svg", b"<?xml")) or b"<svg" in lowered:
        return "SVG is not a raster image"
    if lowered.startswith((b"<!doctype html", b"<html")) or b"<body" in lowered:
        return "HTML served as an image"
    return "bytes are not a known image format"


class StrictResizer(Resizer):
    """img2dataset's Resizer, after checks OpenCV does not make (pickled into the worker processes)."""

    def __init__(self, max_image_pixels: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_image_pixels = max_image_pixels

    def __call__(self, img_stream, blurring_bbox_list=None):
        failed = (None, None, None, None, None)
        img_stream.seek(0)
        data = img_stream.getvalue() if isinstance(img_stream, io.BytesIO) else img_stream.read()
        try:
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height, fmt = im.width, im.height, im.format
        except Exception:  # noqa: BLE001 - any failure to identify is a reject reason
            return (*failed, f"Image decoding error: {_sniff(data)}")
        if width * height > self.max_image_pixels:
            return (*failed, f"decompression bomb: {width}x{height} pixels > {self.max_image_pixels}")
        tail = data.rstrip(b"\x00\r\n\t ")[-64:]
        if fmt == "JPEG" and not tail.endswith(b"\xff\xd9"):
            return (*failed, "Image decoding error: truncated JPEG (no end-of-image marker)")
        if fmt == "PNG" and b"IEND" not in tail:
            return (*failed, "Image decoding error: truncated PNG (no IEND chunk)")
        img_stream.seek(0)
        return super().__call__(img_stream, blurring_bbox_list)


class GuardedDownloader(Downloader):
    """img2dataset's Downloader whose threads fetch with curation.fetch instead of urllib.

    img2dataset's download threads call the module function `img2dataset.downloader.download_image`
    with `self.timeout`: in the worker (whatever the distributor: this object is pickled there) the
    function is replaced by ours and the timeout slot carries the whole FetchPolicy.
    """

    def __init__(self, policy: FetchPolicy, **kwargs) -> None:
        super().__init__(timeout=policy, user_agent_token=policy.user_agent_token, **kwargs)

    def __call__(self, row):
        img2dataset.downloader.download_image = download_image
        return super().__call__(row)


def _set_opencv_pixel_limit(limit: int) -> None:
    # Workers are spawned and inherit the environment: OpenCV then refuses larger images instead of
    # allocating them (a second guard behind StrictResizer's header check). Set, never restored:
    # chunks may run in parallel threads and all want it.
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(max(limit, 1))


def run_img2dataset(candidates: Path, output_folder: Path, options: DownloadOptions) -> pa.Table:
    """Download every row of the `candidates` parquet (url, caption, CARRIED_COLUMNS) into one table.

    The output folder is wiped first: a half-finished earlier attempt is simply redone.
    Returns img2dataset's rows (success or failure, one per candidate).
    """
    if output_folder.exists():
        shutil.rmtree(output_folder)
    output_folder.mkdir(parents=True)
    tmp = output_folder / "_tmp"
    tmp.mkdir()
    columns = pq.read_schema(candidates).names
    carried = [c for c in CARRIED_COLUMNS if c in columns]
    rows = pq.read_metadata(candidates).num_rows
    if rows == 0:
        return pa.table({})
    # Split the chunk over the processes: img2dataset parallelises across its shards.
    per_shard = max(1, -(-rows // options.processes))
    reader = Reader(
        str(candidates),
        "parquet",
        "url",
        "caption",
        None,
        None,
        carried,
        per_shard,
        set(),
        str(tmp),
        0,
    )
    resizer = StrictResizer(
        max_image_pixels=options.max_image_pixels,
        image_size=options.image_size,
        resize_mode=options.resize_mode,
        resize_only_if_bigger=False,
        upscale_interpolation="lanczos",
        downscale_interpolation="area",
        encode_quality=95,
        encode_format="jpg",
        skip_reencode=False,
        disable_all_reencoding=False,
        min_image_size=0,
        max_image_area=float("inf"),
        max_aspect_ratio=float("inf"),
        blurrer=None,
    )
    downloader = GuardedDownloader(
        options.fetch,
        sample_writer_class=ParquetSampleWriter,
        resizer=resizer,
        thread_count=options.threads,
        save_caption=True,
        extract_exif=True,
        output_folder=str(output_folder),
        column_list=reader.column_list,
        number_sample_per_shard=per_shard,
        oom_shard_count=5,
        compute_hash="sha256",
        verify_hash_type=None,
        encode_format="jpg",
        retries=options.retries,
        disallowed_header_directives=None,  # the policy's directives are checked by our fetch
        blurring_bbox_col=None,
    )
    distribute = DISTRIBUTORS[options.distributor]
    _set_opencv_pixel_limit(options.max_image_pixels * 2)
    distribute(min(options.processes, -(-rows // per_shard)), downloader, reader, 1000, 1)
    shutil.rmtree(tmp, ignore_errors=True)
    parts = sorted(output_folder.glob("*.parquet"))
    tables = [pq.read_table(p) for p in parts]
    table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    if table.num_rows != rows:
        raise DownloadError(
            f"{candidates}: img2dataset returned {table.num_rows} of {rows} rows "
            f"(a shard failed; see its output above); rerun to retry this chunk"
        )
    return table
