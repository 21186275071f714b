"""Build a curated dataset: sources -> candidates -> download (img2dataset, per chunk) -> filters -> dedup -> CLIP score.

    cfg = BuildConfig(source=["wit:site.tsv"], out=Path("data/web"))
    build_dataset(cfg)                      # or, one stage at a time (Prefect wraps these):
    collect_candidates(cfg); [download_chunk(cfg, c) for c in plan_chunks(cfg)]; finalize_dataset(cfg)

Resuming: every stage records what it finished under DIR/work and skips it on a rerun.
Candidates are collected once (a `state.json` marks them complete), a chunk is done when its
`staged/chunk-N.json` exists (written after its rows), and final shards are written through
curation.shards (atomic, manifest last). Keys are assigned from the source order, so a resumed
build produces exactly the keys of an uninterrupted one.

Increments: a rerun after a finished build is a new increment over the same `--out`. It reads
the sources again but skips every row an earlier increment read (curation/increments.py), so only
new rows are filtered and downloaded, dedups the new pairs against the whole dataset, and commits
the new shards as the next dataset version (curation/versions.py, a Delta Lake log). A rerun that
finds nothing new commits nothing. Dedup queries the dataset's persisted near-duplicate index
(DIR/index/neardup) with the new rows' hashes and reads old pixels only for the candidates it
names; the kept rows join the index after their version commits (curation/increments.py).

After the downloads, `finalize_dataset` runs dedup (`dedup_new_pairs`), CLIP scoring per chunk
(`score_chunk`) and the writing; the first two cache their results under DIR/work, so a flow can
run them as separate tasks (the chunks' scoring on a Dask cluster) and finalize merges them.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from common.atomic import atomic_path, atomic_write_json, output_lock
from common.errors import UserError
from common.settings import ConfigError
from curation import shards, versions
from curation.config import DOWNLOAD_SETTINGS, BuildConfig, fingerprint, output_settings
from curation.dedup import DEDUP_STAGE, DedupDecision, image_signature
from curation.filters import IMAGE_FILTERS, TEXT_FILTERS, first_reject, reason_name
from curation.increments import (
    PairColumns,
    SeenIndex,
    SeenWriter,
    dataset_candidates,
    dedup_against_dataset,
    index_radii,
    open_dataset_index,
    publish_seen,
    record_version,
    row_digest,
    url_digest,
)
from curation.schema import RECORD_SCHEMA, REJECT_SCHEMA, conform
from curation.wit import (
    KEPT_COLUMNS,
    READ_STAGE,
    WitFormatError,
    check_url,
    choose_caption,
    page_fields,
    read_wit,
    wit_candidate,
)

WORK = "work"
CRAWL_STAGE = "crawl"
CANDIDATE_COLUMNS = (
    "key_candidate",
    "url",
    "caption",
    "text_source",
    "source",
    "caption_language",
    *KEPT_COLUMNS,
)
_CANDIDATE_SCHEMA = pa.schema([pa.field(c, pa.string()) for c in CANDIDATE_COLUMNS])
# Columns of the staged (downloaded + filtered) rows that dedup and the report need, without the pixels.
_DEDUP_COLUMNS = [
    "key",
    "sha256",
    "phash",
    "colour_signature",
    "ahash",
    "caption",
    "text_source",
    "original_width",
    "original_height",
]


# Staged rows carry two working columns besides the record schema (kept as extra columns in the shards).
STAGED_SCHEMA = pa.schema(
    list(RECORD_SCHEMA)
    + [pa.field("caption_language", pa.string()), pa.field("colour_signature", pa.string())]
    + [pa.field("ahash", pa.string())]
)
STAGED_REJECT_SCHEMA = pa.schema(
    list(REJECT_SCHEMA)
    + [pa.field("caption_language", pa.string()), pa.field("colour_signature", pa.string())]
    + [pa.field("ahash", pa.string())]
)


class BuildError(UserError, RuntimeError):
    """The build cannot go on; the message names the input or directory and the fix."""


@dataclass(frozen=True)
class ChunkSpec:
    index: int
    path: Path
    rows: int
    increment: int = 0  # part of the chunk's identity: Prefect caches downloads by their inputs

    @property
    def name(self) -> str:
        return f"chunk-{self.index:05d}"


@dataclass(frozen=True)
class CandidateSet:
    out: Path
    chunks: tuple[ChunkSpec, ...]
    candidates: int
    rejected: int
    counts: dict[str, int] = field(default_factory=dict)
    increment: int = 0
    unchanged: int = 0  # source rows an earlier increment already read (skipped)


@dataclass(frozen=True)
class ChunkResult:
    index: int
    rows: int
    kept: int
    rejected: int
    skipped: bool
    counts: dict[str, int] = field(default_factory=dict)
    reused_from: str | None = None  # the earlier build whose download of these rows was copied


@dataclass(frozen=True)
class BuildSummary:
    out: Path
    kept: int
    rejected: int
    counts: dict[str, dict[str, int]]
    report: Path
    contact_sheet: Path | None
    skipped: bool = False
    version: int | None = None  # the dataset version this build committed, or the latest when nothing was new
    added: int = 0  # pairs this build added (kept counts every version's pairs)
    unchanged: int = 0  # source rows skipped because an earlier build read them

    @property
    def total(self) -> int:
        return self.kept + self.rejected


# --- paths and state ---------------------------------------------------------------------------------


def _work(cfg: BuildConfig) -> Path:
    return Path(cfg.out) / WORK


def _candidates_dir(cfg: BuildConfig) -> Path:
    return _work(cfg) / "candidates"


def _staged(cfg: BuildConfig, index: int, suffix: str) -> Path:
    return _work(cfg) / "staged" / f"chunk-{index:05d}{suffix}"


def chunk_done(cfg: BuildConfig, chunk: ChunkSpec) -> bool:
    """Whether the build already finished this chunk (then nothing needs fetching)."""
    return _staged(cfg, chunk.index, ".json").exists()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _check_fingerprint(cfg: BuildConfig) -> None:
    """Refuse to resume a directory that was started with settings that change the output."""
    path = _work(cfg) / "build.json"
    recorded = _read_json(path)
    wanted = fingerprint(cfg)
    if recorded is None:
        atomic_write_json(path, {"fingerprint": wanted, "settings": output_settings(cfg)})
        return
    if recorded.get("fingerprint") != wanted:
        old = recorded.get("settings", {})
        new = output_settings(cfg)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(
            f"{cfg.out} was started with other settings ({', '.join(changed) or 'unknown'} differ); "
            "use a new --out, or delete the directory to rebuild"
        )


INCREMENT_FILE = "increment.json"


def _increments(out: Path) -> list[dict]:
    """The finished increments recorded in the manifest, oldest first."""
    return shards.load_manifest(out).extra.get("increments", [])


def current_increment(cfg: BuildConfig) -> dict:
    """The increment the work folder holds: resumed while unfinished, else a new one in a clean folder.

    {"increment": i, "first_key": k}: increment i gives keys after k (the last key of i - 1).
    """
    work = _work(cfg)
    path = work / INCREMENT_FILE
    state = _read_json(path)
    finished = _increments(Path(cfg.out))
    if state is not None and state["increment"] >= len(finished):
        return state  # unfinished: resume it
    if not finished and shards.load_manifest(cfg.out).shards and not versions.has_versions(cfg.out):
        raise BuildError(
            f"{cfg.out} holds shards written without a version log (by an older build or by hand); "
            "build into a new --out to get versions and incremental reruns"
        )
    for child in work.iterdir() if work.exists() else ():
        if child.name not in ("build.json", INCREMENT_FILE):  # settings stay: later increments must match
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    state = {
        "increment": len(finished),
        "first_key": finished[-1]["last_key"] if finished else 0,
    }
    atomic_write_json(path, state)
    return state


def _write_table(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    shards.write_parquet_atomic(table, path)


# --- stage 1: candidates ---------------------------------------------------------------------------------


def _reject_row(record: dict, stage: str, reason: str) -> dict:
    return {**record, "status": "rejected", "reject_stage": stage, "reject_reason": reason}


def _iter_source(cfg: BuildConfig, spec: str, index: int) -> Iterator[tuple[dict, str | None, str | None]]:
    """(record, reject stage, reject reason) for every input row of one --source."""
    kind, _, target = spec.partition(":")
    if kind == "wit":
        try:
            for row in read_wit(target):
                if row.reason == "header":
                    continue
                if row.fields is None:
                    record = {
                        "caption": None,
                        "error_message": f"line {row.line_number}: {row.excerpt or ''}",
                    }
                    yield record, READ_STAGE, row.reason
                    continue
                record, reason = wit_candidate(row.fields, cfg.caption_policy)
                yield record, (READ_STAGE if reason else None), reason
        except WitFormatError as exc:
            raise BuildError(str(exc)) from exc
    else:
        yield from _iter_crawl(cfg, target, index)


def _iter_crawl(cfg: BuildConfig, url: str, index: int) -> Iterator[tuple[dict, str | None, str | None]]:
    from curation.crawl import CrawlConfig, crawl  # the crawler pulls in httpx/asyncio: only when used

    out = _work(cfg) / f"crawl-{index:02d}" / "candidates.parquet"
    result = crawl(
        CrawlConfig(
            seed=[url],
            out=out,
            allow_networks=list(cfg.allow_networks),
            user_agent=cfg.user_agent,
            respect_robots=cfg.respect_robots,
            max_pages=cfg.crawl_max_pages,
            max_depth=cfg.crawl_max_depth,
        )
    )
    for batch in pq.ParquetFile(result.out).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            fields = page_fields({k: (v if isinstance(v, str) else None) for k, v in row.items()})
            caption, text_source = choose_caption(fields, cfg.caption_policy)
            record = {name: fields.get(name) for name in KEPT_COLUMNS}
            record.update(url=fields.get("url") or "", caption=caption, text_source=text_source)
            reason = check_url(record["url"])
            if reason is None and caption is None:
                reason = f"no_caption: none of {', '.join(cfg.caption_policy)}"
            yield record, (READ_STAGE if reason else None), reason
    # Pages the crawler refused or could not fetch (robots.txt, refused address, too large...).
    for batch in pq.ParquetFile(result.rejects_path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield {"url": row["url"], "page_url": row["page_url"]}, CRAWL_STAGE, row["reject_reason"]


class _AddressCheck:
    """netguard's after-DNS address check on image URLs, cached per host (millions of rows, few hosts).

    An early, cheap reject only: the download checks every hop again (curation/fetch.py).
    """

    def __init__(self, allow_networks: list[str]) -> None:
        self.allow_networks = list(allow_networks)
        self.cache: dict[str, str | None] = {}

    def __call__(self, url: str) -> str | None:
        from urllib.parse import urlsplit

        from curation.netguard import UrlRefused
        from curation.netguard import check_url as guard

        host = urlsplit(url).netloc
        if host not in self.cache:
            try:
                guard(url, self.allow_networks)
                self.cache[host] = None
            except UrlRefused as exc:
                self.cache[host] = f"refused_address: {exc}"
            except OSError as exc:
                self.cache[host] = f"unresolvable_host: {exc}"
        return self.cache[host]


def collect_candidates(cfg: BuildConfig) -> CandidateSet:
    """Read every source into chunks of candidates (DIR/work/candidates); rejects for bad rows.

    Streams: memory holds one chunk of rows plus a set of URL digests. Resumable: when a
    previous run completed this stage it is not repeated; a partial one is redone (cheap and
    deterministic, so keys do not change).
    """
    if not cfg.source:
        raise ConfigError("no --source given: pass wit:PATH.tsv[.gz] or crawl:URL")
    for spec in cfg.source:
        kind, _, target = spec.partition(":")
        if kind == "wit" and not Path(target).is_file():
            raise BuildError(f"--source {spec}: no such WIT file (give wit:PATH.tsv or wit:PATH.tsv.gz)")
    for earlier in cfg.reuse_downloads:
        if not (Path(earlier) / WORK / "build.json").is_file():
            raise BuildError(
                f"--reuse-downloads {earlier}: not a build directory (no {WORK}/build.json in it); "
                "give the --out of an earlier `python -m curation build`"
            )
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    _check_fingerprint(cfg)
    increment = current_increment(cfg)
    folder = _candidates_dir(cfg)
    state = _read_json(folder / "state.json")
    if state is not None:
        return _candidate_set(cfg, state)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    address_check = _AddressCheck(cfg.allow_networks)
    earlier = SeenIndex.load(cfg.out, increment["increment"])
    seen_urls: dict[int, int] = {}  # this increment's claims: ~70 bytes per unique URL
    seen_writer = SeenWriter(folder / "seen.parquet")
    kept: list[dict] = []
    rejects: list[dict] = []
    chunks: list[dict] = []
    reject_files = 0
    unchanged = 0
    counts: Counter[str] = Counter()
    seq = increment["first_key"]
    progress = tqdm(desc="candidates", unit=" rows", mininterval=1.0)
    for source_index, spec in enumerate(cfg.source):
        for record, stage, reason in _iter_source(cfg, spec, source_index):
            progress.update()
            identity = row_digest(record)
            if identity in earlier.rows:  # read by an earlier increment: kept or rejected there
                unchanged += 1
                continue
            seq += 1
            record = {**record, "key_candidate": f"{seq:010d}", "source": spec}
            claimed = None
            if reason is None:
                reason = address_check(record["url"])
                stage = READ_STAGE if reason else None
            if reason is None:
                rejected = first_reject(record, cfg, TEXT_FILTERS)
                if rejected is not None:
                    stage, reason = rejected
            if reason is None:  # after the text filters: the first row with a usable caption claims the URL
                digest = url_digest(record["url"])
                if digest in seen_urls:
                    stage, reason = (
                        READ_STAGE,
                        f"duplicate_url: same image URL as key {seen_urls[digest]:010d}",
                    )
                elif digest in earlier.urls:
                    stage, reason = (
                        READ_STAGE,
                        f"duplicate_url: same image URL as key {earlier.urls[digest]} (an earlier version)",
                    )
                else:
                    seen_urls[digest] = seq
                    claimed = digest
            seen_writer.add(identity, claimed, record["key_candidate"])
            if reason is not None:
                counts[f"{stage}/{reason_name(reason)}"] += 1
                rejects.append(_reject_row({**record, "key": record["key_candidate"]}, stage, reason))
                if len(rejects) >= cfg.chunk_size:
                    _flush_rejects(folder, reject_files, rejects)
                    reject_files += 1
                    rejects = []
                continue
            kept.append(record)
            if len(kept) >= cfg.chunk_size:
                chunks.append(_flush_chunk(folder, len(chunks), kept))
                kept = []
    progress.close()
    seen_writer.close()
    if kept:
        chunks.append(_flush_chunk(folder, len(chunks), kept))
    if rejects:
        _flush_rejects(folder, reject_files, rejects)
        reject_files += 1
    state = {
        "increment": increment["increment"],
        "chunks": chunks,
        "candidates": sum(c["rows"] for c in chunks),
        "rejected": sum(counts.values()),
        "reject_files": reject_files,
        "counts": dict(counts),
        "unchanged": unchanged,
        "last_key": seq,
    }
    atomic_write_json(folder / "state.json", state)
    return _candidate_set(cfg, state)


def _flush_chunk(folder: Path, index: int, rows: list[dict]) -> dict:
    path = folder / f"chunk-{index:05d}.parquet"
    _write_table(path, [{c: r.get(c) for c in CANDIDATE_COLUMNS} for r in rows], _CANDIDATE_SCHEMA)
    return {"index": index, "rows": len(rows)}


def _flush_rejects(folder: Path, index: int, rows: list[dict]) -> None:
    table = conform(pa.Table.from_pylist(rows), STAGED_REJECT_SCHEMA, source="candidate rejects")
    shards.write_parquet_atomic(table, folder / f"rejects-{index:05d}.parquet")


def _candidate_set(cfg: BuildConfig, state: dict) -> CandidateSet:
    folder = _candidates_dir(cfg)
    increment = state["increment"]
    chunks = tuple(
        ChunkSpec(c["index"], folder / f"chunk-{c['index']:05d}.parquet", c["rows"], increment)
        for c in state["chunks"]
    )
    return CandidateSet(
        Path(cfg.out),
        chunks,
        state["candidates"],
        state["rejected"],
        state["counts"],
        increment,
        state["unchanged"],
    )


def plan_chunks(cfg: BuildConfig) -> list[ChunkSpec]:
    """The chunks to download (collects candidates first when that has not been done)."""
    return list(collect_candidates(cfg).chunks)


# --- stage 2: download + image filters, per chunk ---------------------------------------------------------


def fetch_policy(cfg: BuildConfig):
    """The guarded fetch's bounds for this build's image downloads (and the flows' host probe)."""
    from curation.fetch import FetchPolicy

    return FetchPolicy(
        allow_networks=tuple(cfg.allow_networks),
        max_bytes=cfg.max_image_bytes,
        timeout_s=float(cfg.timeout),
        max_redirects=cfg.max_redirects,
        user_agent=cfg.user_agent,
        user_agent_token=cfg.user_agent_token,
        disallowed_directives=tuple(d.strip().lower() for d in cfg.disallowed_header_directives),
        respect_robots=cfg.respect_robots,
    )


def download_options(cfg: BuildConfig):
    from curation.download import DownloadOptions

    return DownloadOptions(
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        processes=cfg.processes,
        threads=cfg.threads,
        retries=cfg.retries,
        distributor=cfg.distributor,
        max_image_pixels=cfg.max_image_pixels,
        fetch=fetch_policy(cfg),
    )


def _plain_json(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def reused_chunk(cfg: BuildConfig, chunk: ChunkSpec) -> Path | None:
    """The finished chunk of an earlier build (`--reuse-downloads DIR`) that downloading `chunk` would give
    again: the same DOWNLOAD_SETTINGS and the same candidate rows (keys, URLs, captions). Its staged files
    are DIR/work/staged/chunk-N.*; None when no earlier build has such a chunk."""
    if not cfg.reuse_downloads:
        return None
    wanted = _plain_json({k: output_settings(cfg)[k] for k in DOWNLOAD_SETTINGS})
    rows = None
    for earlier in cfg.reuse_downloads:
        work = Path(earlier) / WORK
        staged = work / "staged" / chunk.name
        theirs = work / "candidates" / chunk.path.name
        if _read_json(Path(f"{staged}.json")) is None or not theirs.is_file():
            continue  # not built, not finished, or its work folder moved on to a later increment
        recorded = (_read_json(work / "build.json") or {}).get("settings", {})
        if _plain_json({k: recorded.get(k) for k in DOWNLOAD_SETTINGS}) != wanted:
            continue
        rows = pq.read_table(chunk.path) if rows is None else rows
        if pq.read_table(theirs).equals(rows):
            return staged
    return None


def _copy_chunk(cfg: BuildConfig, chunk: ChunkSpec, staged: Path) -> ChunkResult | None:
    """Copy an earlier build's finished chunk (see `reused_chunk`); the .json marker is written last.
    None when the earlier chunk went away meanwhile (that build started a new increment): download it."""
    done = _read_json(Path(f"{staged}.json"))
    if done is None:
        return None
    try:
        for suffix in (".parquet", ".rejects.parquet"):
            with atomic_path(_staged(cfg, chunk.index, suffix)) as tmp:
                shutil.copyfile(f"{staged}{suffix}", tmp)
    except OSError:
        return None
    source = str(staged.parents[2])
    atomic_write_json(_staged(cfg, chunk.index, ".json"), {**done, "reused_from": source})
    return ChunkResult(
        chunk.index, done["rows"], done["kept"], done["rejected"], False, done["counts"], source
    )


def download_chunk(cfg: BuildConfig, chunk: ChunkSpec) -> ChunkResult:
    """One img2dataset call for the chunk, then image filters and pHash; idempotent.

    Writes DIR/work/staged/chunk-N.parquet (kept) and .rejects.parquet, then chunk-N.json last:
    a chunk with its .json is done and returns at once. An earlier build's identical chunk
    (`--reuse-downloads`) is copied instead of downloaded.
    """
    from curation.download import run_img2dataset  # img2dataset imports cv2/albumentations: only here

    marker = _staged(cfg, chunk.index, ".json")
    done = _read_json(marker)
    if done is not None:
        return ChunkResult(
            chunk.index,
            done["rows"],
            done["kept"],
            done["rejected"],
            True,
            done["counts"],
            done.get("reused_from"),
        )
    earlier = reused_chunk(cfg, chunk)
    copied = None if earlier is None else _copy_chunk(cfg, chunk, earlier)
    if copied is not None:
        return copied
    raw_folder = _work(cfg) / "downloads" / chunk.name
    table = run_img2dataset(chunk.path, raw_folder, download_options(cfg))
    kept, rejects = [], []
    counts: Counter[str] = Counter()
    for row in table.to_pylist():
        row["key"] = row.pop("key_candidate")
        row.pop("txt", None)
        rejected = first_reject(row, cfg, IMAGE_FILTERS)
        if rejected is None:
            try:
                row["phash"], row["colour_signature"], row["ahash"] = image_signature(row["jpg"])
            except Exception as exc:  # noqa: BLE001 - a picture PIL cannot hash is a reject, not a crash
                rejected = ("image", f"undecodable: phash failed ({type(exc).__name__})")
        if rejected is not None:
            stage, reason = rejected
            counts[f"{stage}/{reason_name(reason)}"] += 1
            rejects.append(_reject_row(row, stage, reason) | {"status": row.get("status")})
        else:
            kept.append(row)
    kept.sort(key=lambda r: r["key"])
    rejects.sort(key=lambda r: r["key"])
    _write_staged(_staged(cfg, chunk.index, ".parquet"), kept, STAGED_SCHEMA)
    _write_staged(_staged(cfg, chunk.index, ".rejects.parquet"), rejects, STAGED_REJECT_SCHEMA)
    result = {"rows": table.num_rows, "kept": len(kept), "rejected": len(rejects), "counts": dict(counts)}
    atomic_write_json(marker, result)
    shutil.rmtree(raw_folder, ignore_errors=True)
    return ChunkResult(chunk.index, table.num_rows, len(kept), len(rejects), False, dict(counts))


def _write_staged(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    table = conform(pa.Table.from_pylist(rows), schema, source=str(path)) if rows else schema.empty_table()
    shards.write_parquet_atomic(table, path)


# --- stage 3: dedup, CLIP score, final shards ----------------------------------------------------------------


def _clip_scores_for_chunk(cfg: BuildConfig, index: int, table: pa.Table, embedder: Any) -> dict[str, float]:
    """Scores of one chunk's rows, cached in DIR/work/clip so a resumed finalize does not recompute them."""
    from curation.clipscore import clip_scores

    path = _work(cfg) / "clip" / f"chunk-{index:05d}.parquet"
    if path.exists():
        cached = pq.read_table(path)
        return dict(zip(cached["key"].to_pylist(), cached["clip_score"].to_pylist()))
    keys = table["key"].to_pylist()
    scores = clip_scores(
        embedder, table["jpg"].to_pylist(), table["caption"].to_pylist(), cfg.clip_batch_size
    )
    shards.write_parquet_atomic(
        pa.table({"key": pa.array(keys, pa.string()), "clip_score": pa.array(scores, pa.float32())}), path
    )
    return dict(zip(keys, scores.tolist()))


def _pixel_verifier(staged: list[Path], keys: list[str], known: dict[str, bytes]):
    """Confirm near-duplicate candidate pairs from the pictures: `known` holds the old candidates'
    pictures (read from their shards already); new rows are read from the staged files, only those involved."""
    from curation.dedup import same_pictures, thumbnail

    def verify(pairs: list[tuple[int, int]]) -> list[bool]:
        wanted = {keys[i] for pair in pairs for i in pair}
        thumbs = {key: thumbnail(known[key]) for key in wanted if key in known}
        unread = sorted(wanted - set(thumbs))
        for path in staged if unread else []:
            table = pq.read_table(path, columns=["key", "jpg"], filters=[("key", "in", unread)])
            for key, jpg in zip(table["key"].to_pylist(), table["jpg"].to_pylist()):
                thumbs[key] = thumbnail(jpg)
        return same_pictures(thumbs, [(keys[i], keys[j]) for i, j in pairs])

    return verify


def _read_dedup_columns(path: Path) -> pa.Table:
    # shards written before a column existed (ahash came with #15) read it as nulls
    names = pq.read_schema(path).names
    return _with_dedup_columns(pq.read_table(path, columns=[c for c in _DEDUP_COLUMNS if c in names]))


def _with_dedup_columns(table: pa.Table, extra: list[str] = ()) -> pa.Table:
    """`table` with every dedup column (nulls where a shard predates it), cast to the staged types."""
    for name in _DEDUP_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, STAGED_SCHEMA.field(name).type))
    names = [*_DEDUP_COLUMNS, *extra]
    return table.select(names).cast(pa.schema([STAGED_SCHEMA.field(name) for name in names]))


def _dedup_columns(paths: list[Path], desc: str) -> PairColumns:
    """The small columns dedup needs, read from shards without their pixels."""
    tables = [
        _read_dedup_columns(path) for path in tqdm(paths, desc=desc, unit=" shard", disable=len(paths) < 2)
    ]
    schema = pa.schema([STAGED_SCHEMA.field(name) for name in _DEDUP_COLUMNS])
    table = pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
    return PairColumns.from_table(table)


def _read_candidates(out: Path, wanted: dict[str, list[str]]) -> pa.Table:
    """The dataset's candidate pairs, dedup columns and pixels, each from its own shard (by key)."""
    tables = [
        _with_dedup_columns(shards.read_rows_by_key(out / location, keys, [*_DEDUP_COLUMNS, "jpg"]), ["jpg"])
        for location, keys in wanted.items()
    ]
    if tables:
        return pa.concat_tables(tables)
    return pa.schema([STAGED_SCHEMA.field(name) for name in [*_DEDUP_COLUMNS, "jpg"]]).empty_table()


def dedup_new_pairs(cfg: BuildConfig, staged: list[Path], increment: int) -> dict[str, DedupDecision]:
    """Which staged (new) pairs to drop as duplicates of each other or of the dataset's committed pairs.

    The committed pairs are never read in full: the dataset's near-duplicate index names the ones
    whose pHash or aHash is close to a new pair, and only those are read (one row group each).
    """
    out = Path(cfg.out)
    new = _dedup_columns(staged, "dedup: reading new hashes")
    index = open_dataset_index(out, index_radii(cfg.dedup_radius), increment)
    candidates = _read_candidates(out, dataset_candidates(index, new))
    old = PairColumns.from_table(candidates)
    old_pictures = dict(zip(old.keys, candidates["jpg"].to_pylist()))
    return dedup_against_dataset(
        new,
        old,
        cfg.dedup_radius,
        cfg.caption_policy,
        verify=_pixel_verifier(staged, old.keys + new.keys, old_pictures),
    )


_DECISIONS_SCHEMA = pa.schema([("key", pa.string()), ("kept_key", pa.string()), ("reason", pa.string())])


def dedup_increment(cfg: BuildConfig) -> dict[str, DedupDecision]:
    """`dedup_new_pairs` for the increment in the work folder, cached in DIR/work/dedup.parquet."""
    candidates = collect_candidates(cfg)
    path = _work(cfg) / "dedup.parquet"
    if path.exists():
        rows = pq.read_table(path).to_pylist()
        return {r["key"]: DedupDecision(r["kept_key"], r["reason"]) for r in rows}
    _require_downloaded(cfg, candidates)
    staged = [_staged(cfg, c.index, ".parquet") for c in candidates.chunks]
    decisions = dedup_new_pairs(cfg, staged, candidates.increment)
    table = pa.table(
        [
            pa.array(list(decisions), pa.string()),
            pa.array([d.kept_key for d in decisions.values()], pa.string()),
            pa.array([d.reason for d in decisions.values()], pa.string()),
        ],
        schema=_DECISIONS_SCHEMA,
    )
    shards.write_parquet_atomic(table, path)
    return decisions


def score_chunk(cfg: BuildConfig, chunk: ChunkSpec, embedder: Any) -> int:
    """CLIP scores of one downloaded chunk's pairs that survived dedup, cached in DIR/work/clip.

    Needs `dedup_increment` first (it is cached, so this reads its decisions). Returns the pairs scored.
    """
    from curation.clipscore import as_embedder

    duplicates = dedup_increment(cfg)
    table = pq.read_table(_staged(cfg, chunk.index, ".parquet"), columns=["key", "jpg", "caption"])
    survivors = pa.array([k not in duplicates for k in table["key"].to_pylist()], pa.bool_())
    return len(
        _clip_scores_for_chunk(cfg, chunk.index, table.filter(survivors), as_embedder(embedder, cfg.device))
    )


def _require_downloaded(cfg: BuildConfig, candidates: CandidateSet) -> None:
    missing = [c.index for c in candidates.chunks if not _staged(cfg, c.index, ".json").exists()]
    if missing:
        raise BuildError(
            f"{cfg.out}: chunks {missing[:10]} are not downloaded yet; run download_chunk for them first"
        )


def _shard_name(increment: int, chunk: ChunkSpec) -> str:
    return f"i{increment:05d}-part-{chunk.index:05d}"


def finalize_dataset(cfg: BuildConfig, embedder: Any = None) -> BuildSummary:
    """Dedup against the whole dataset, CLIP score, final shards + rejects, the new version, manifest, report."""
    from curation.clipscore import CLIP_STAGE, as_embedder, clip_rejects
    from curation.report import write_report

    out = Path(cfg.out)
    candidates = collect_candidates(cfg)
    increment = candidates.increment
    if cfg.clip_filtering and embedder is None:
        raise ConfigError(
            "min_clip_score / clip_top_fraction need a CLIP model: pass --clip-checkpoint or --clip-model"
        )
    if not candidates.chunks and not candidates.rejected:
        return _nothing_new(cfg, candidates)
    _require_downloaded(cfg, candidates)
    shards.remove_untrusted(out)  # leftovers of a killed writer

    # Dedup the new pairs against each other and against the dataset (through its near-dup index).
    staged = [_staged(cfg, c.index, ".parquet") for c in candidates.chunks]
    duplicates = dedup_increment(cfg)

    # CLIP score every pair that survived dedup (chunks a flow scored already are cached); the top
    # fraction needs all scores before deciding.
    scores: dict[str, float] = {}
    if embedder is not None:
        clip = as_embedder(embedder, cfg.device)
        for chunk, path in tqdm(list(zip(candidates.chunks, staged)), desc="clip score", unit=" chunk"):
            table = pq.read_table(path, columns=["key", "jpg", "caption"])
            survivors = pa.array([k not in duplicates for k in table["key"].to_pylist()], pa.bool_())
            scores.update(_clip_scores_for_chunk(cfg, chunk.index, table.filter(survivors), clip))
    low_scores = clip_rejects(list(scores), list(scores.values()), cfg.min_clip_score, cfg.clip_top_fraction)

    counts: dict[str, dict[str, int]] = {}

    def count(stage: str, reason: str, n: int = 1) -> None:
        counts.setdefault(stage, {})
        counts[stage][reason] = counts[stage].get(reason, 0) + n

    for name, n in candidates.counts.items():
        stage, reason = name.split("/", 1)
        count(stage, reason, n)
    kept_total = 0
    new_shards: list[str] = []
    kept_hashes: list[pa.Table] = []  # what the near-dup index gets once the version commits
    for chunk, path in tqdm(list(zip(candidates.chunks, staged)), desc="writing shards", unit=" shard"):
        table = pq.read_table(path)
        keys = table["key"].to_pylist()
        if scores:
            table = table.set_column(
                table.schema.get_field_index("clip_score"),
                "clip_score",
                pa.array([scores.get(k) for k in keys], pa.float32()),
            )
        drop = [duplicates.get(k) or low_scores.get(k) for k in keys]
        keep_mask = pa.array([d is None for d in drop], pa.bool_())
        final = table.filter(keep_mask)
        kept_total += final.num_rows
        dropped_rows = []
        drop_index = [i for i, reason in enumerate(drop) if reason]
        for row in table.take(drop_index).to_pylist() if drop_index else []:
            if row["key"] in duplicates:
                stage, reason = DEDUP_STAGE, duplicates[row["key"]].reason
            else:
                stage, reason = CLIP_STAGE, low_scores[row["key"]]
            dropped_rows.append(_reject_row(row, stage, reason) | {"status": row.get("status")})
        earlier = pq.read_table(_staged(cfg, chunk.index, ".rejects.parquet"))
        for stage, reason in zip(earlier["reject_stage"].to_pylist(), earlier["reject_reason"].to_pylist()):
            count(stage, reason_name(reason))
        for row in dropped_rows:
            count(row["reject_stage"], reason_name(row["reject_reason"]))
        rejects = conform(earlier, STAGED_REJECT_SCHEMA)
        if dropped_rows:
            rejects = pa.concat_tables(
                [
                    conform(earlier, STAGED_REJECT_SCHEMA),
                    conform(pa.Table.from_pylist(dropped_rows), STAGED_REJECT_SCHEMA),
                ],
                promote_options="default",
            )
        name = _shard_name(increment, chunk)
        if final.num_rows:
            if not shards.has_shard(out, name):
                shards.write_shard(out, name, final)
            location = f"{shards.SHARDS}/{name}.parquet"
            new_shards.append(location)
            hashes = final.select(["key", "phash", "ahash"])
            kept_hashes.append(hashes.append_column("location", pa.array([location] * final.num_rows)))
        if rejects.num_rows and not shards.has_shard(out, name, kind=shards.REJECTS):
            shards.write_shard(out, name, rejects, kind=shards.REJECTS)
    folder = _candidates_dir(cfg)
    state = _read_json(folder / "state.json") or {}
    for i in range(state.get("reject_files", 0)):
        name = f"i{increment:05d}-candidates-{i:05d}"
        if not shards.has_shard(out, name, kind=shards.REJECTS):
            shards.write_shard(
                out, name, pq.read_table(folder / f"rejects-{i:05d}.parquet"), kind=shards.REJECTS
            )
    publish_seen(out, increment, folder / "seen.parquet")

    rejected_total = sum(n for reasons in counts.values() for n in reasons.values())
    record = {
        "increment": increment,
        "added": kept_total,
        "rejected": rejected_total,
        "unchanged": candidates.unchanged,
        "by_stage": counts,
        "sources": list(cfg.source),
        "last_key": state["last_key"],
    }
    version = _commit_version(out, increment, new_shards, record)
    if version is not None:  # only now: the index never holds pairs that no version holds
        record_version(out, index_radii(cfg.dedup_radius), increment, version, kept_hashes)
    record["version"] = version
    totals = _cumulative(_increments(out)[:increment] + [record])
    report, sheet = write_report(
        out, totals["kept"], totals["by_stage"], settings=output_settings(cfg), scored=bool(scores)
    )
    with shards.manifest_lock(out):
        manifest = shards.load_manifest(out)
        manifest.config = output_settings(cfg)
        manifest.counts = totals
        manifest.extra["build"] = {
            "fingerprint": fingerprint(cfg),
            "complete": True,
            "report": report.name,
            "contact_sheet": sheet.name if sheet else None,
        }
        manifest.extra["increments"] = manifest.extra.get("increments", [])[:increment] + [record]
        shards.save_manifest(out, manifest)
    return BuildSummary(
        out,
        totals["kept"],
        totals["rejected"],
        totals["by_stage"],
        report,
        sheet,
        version=version if version is not None else versions.latest_version(out),
        added=kept_total,
        unchanged=candidates.unchanged,
    )


def _commit_version(out: Path, increment: int, new_shards: list[str], record: dict) -> int | None:
    """Commit the increment's shards as the next version (once: a resumed finalize finds its commit)."""
    if not new_shards:
        return None  # only rejects were new: the data did not change
    latest = versions.latest_version(out)
    if latest is not None:
        info = versions.resolve(out, latest).info
        if info.get("increment") == increment:
            return latest
    return versions.commit(out, new_shards, record)


def _cumulative(records: list[dict]) -> dict:
    by_stage: dict[str, dict[str, int]] = {}
    for record in records:
        for stage, reasons in record["by_stage"].items():
            for reason, n in reasons.items():
                by_stage.setdefault(stage, {})
                by_stage[stage][reason] = by_stage[stage].get(reason, 0) + n
    return {
        "kept": sum(r["added"] for r in records),
        "rejected": sum(r["rejected"] for r in records),
        "by_stage": by_stage,
    }


def _nothing_new(cfg: BuildConfig, candidates: CandidateSet) -> BuildSummary:
    """Every source row was read before: no new version; the work folder is freed for the next run."""
    out = Path(cfg.out)
    atomic_write_json(_work(cfg) / INCREMENT_FILE, {"increment": -1, "first_key": 0})
    return _summary_from_manifest(
        cfg, shards.load_manifest(out), skipped=True, unchanged=candidates.unchanged
    )


def _summary_from_manifest(
    cfg: BuildConfig, manifest: shards.Manifest, skipped: bool, unchanged: int = 0
) -> BuildSummary:
    out = Path(cfg.out)
    build = manifest.extra.get("build", {})
    sheet = build.get("contact_sheet")
    return BuildSummary(
        out,
        manifest.counts.get("kept", 0),
        manifest.counts.get("rejected", 0),
        manifest.counts.get("by_stage", {}),
        out / build.get("report", "report.md"),
        out / sheet if sheet else None,
        skipped=skipped,
        version=versions.latest_version(out),
        unchanged=unchanged,
    )


def build_dataset(cfg: BuildConfig, embedder: Any = None) -> BuildSummary:
    """All stages in order, each skipped where a previous run finished it; one writer per folder."""
    with output_lock(cfg.out, "curation build"):
        candidates = collect_candidates(cfg)
        for chunk in tqdm(candidates.chunks, desc="download chunks", unit=" chunk"):
            download_chunk(cfg, chunk)
        return finalize_dataset(cfg, embedder)


def summary_dict(summary: BuildSummary) -> dict:
    data = asdict(summary)
    return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}
