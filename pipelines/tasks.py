"""Prefect tasks: each one calls one library function, nothing else.

One task per chunk of candidates (one img2dataset call), never per image: thousands of tiny
tasks are slow and unstable in Prefect. Network-facing tasks retry with exponential backoff;
the download task caches its result by its inputs, with the cache kept inside the dataset
directory so that deleting a dataset also forgets its cache.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS
from prefect.tasks import exponential_backoff

from pipelines.params import FlowOptions

# Tag of every img2dataset call: `python -m pipelines` sets a Prefect concurrency limit on it.
DOWNLOAD_TAG = "img2dataset-download"
NETWORK_TAG = "network"
# Where the download task keeps its cache records and results, relative to the dataset directory.
CACHE_DIR = ".prefect-cache"


def plain(value: Any) -> Any:
    """Dataclasses to dicts, paths to strings: task results that any Prefect serializer stores."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# --- curation ------------------------------------------------------------------------------------


@task(name="collect-candidates", tags=[NETWORK_TAG], retries=3, retry_delay_seconds=exponential_backoff(2.0))
def collect_candidates(cfg: Any) -> Any:
    """Read the WIT TSVs / crawl the seeds into the candidate list (the crawl is network-facing)."""
    from curation import build

    return build.collect_candidates(cfg)


@task(name="plan-chunks")
def plan_chunks(cfg: Any) -> list[Any]:
    from curation import build

    return list(build.plan_chunks(cfg))


@task(
    name="download-chunk",
    task_run_name="download-chunk-{chunk.index}",
    tags=[DOWNLOAD_TAG, NETWORK_TAG],
    retries=3,
    retry_delay_seconds=exponential_backoff(2.0),
    cache_policy=INPUTS,
    persist_result=True,
)
def download_chunk(cfg: Any, chunk: Any) -> Any:
    """One img2dataset call for one chunk: the unit of retry, resume and caching."""
    from curation import build

    return build.download_chunk(cfg, chunk)


def download_task_for(cfg: Any, options: FlowOptions) -> Any:
    """The download task with this run's retry settings and its cache stored inside the dataset."""
    cache_dir = Path(cfg.out).resolve() / CACHE_DIR
    return download_chunk.with_options(
        retries=options.retries,
        retry_delay_seconds=exponential_backoff(options.retry_delay_seconds) if options.retries else 0,
        cache_policy=INPUTS.configure(key_storage=str(cache_dir / "keys")),
        result_storage=cache_dir / "results",
    )


@task(name="finalize-dataset")
def finalize_dataset(cfg: Any) -> Any:
    """Filters, dedup across the whole dataset, CLIP score, report: the stages after download."""
    from curation import build

    embedder = load_embedder(cfg)
    return build.finalize_dataset(cfg, embedder=embedder)


def load_embedder(cfg: Any) -> Any:
    """The CLIP that scores pairs, loaded here because `curation` must not import `training`."""
    if not getattr(cfg, "wants_clip", False):
        return None
    from training.model import load_clip, load_pretrained

    # a LoadedCLIP carries model, preprocess and tokenizer: curation.clipscore.as_embedder accepts it
    if cfg.clip_checkpoint is not None:
        return load_clip(cfg.clip_checkpoint, cfg.device)
    return load_pretrained(cfg.clip_model, cfg.clip_pretrained, cfg.device)


# --- training ------------------------------------------------------------------------------------


@task(name="train-clip")
def train_clip(cfg: Any) -> Any:
    from training.train import train

    return train(cfg)


@task(name="evaluate-clip")
def evaluate_clip(cfg: Any) -> Any:
    from training.evaluate import evaluate

    return evaluate(cfg)
