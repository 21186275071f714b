"""Prefect flows: the chain of design.md, one flow per stage plus the end-to-end chain.

    build-dataset:  collect-candidates -> plan-chunks -> download-chunks (one task per chunk)
                    -> dedup-increment -> score-chunks (one CLIP task per chunk) -> finalize-dataset
    train:          train-clip
    evaluate:       evaluate-clip
    end-to-end:     build-dataset -> train -> evaluate -> build-dataset (CLIP-filtered) -> apps

A flow body only wires library functions (through `pipelines.tasks`) and publishes artifacts.
Every flow takes the libraries' own typed configs plus `FlowOptions`, so a deployment's JSON
parameters, a params file and the library CLIs all mean the same thing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from common.atomic import output_lock
from curation.config import BuildConfig
from pipelines import artifacts, tasks
from pipelines.params import CORPUS_CATEGORIES, ChainConfig, FlowOptions, NightlyConfig
from pipelines.runtime import make_task_runner

try:  # the training library is optional for build-only installs and while it is being written
    from training.config import EvalConfig, TrainConfig
except ImportError:  # pragma: no cover - exercised only without training/
    EvalConfig = TrainConfig = Any  # type: ignore[misc,assignment]


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # outside a run (library use): plain logging
        return logging.getLogger("pipelines")


def ensure_tag_concurrency(tag: str, limit: int) -> None:
    """Set Prefect's concurrency limit for task runs carrying `tag` (an upsert on the API).

    A flow process killed while holding a slot never gives it back. A Prefect server's lease
    service frees such slots after a minute; the temporary local API runs no such service, so
    there the slots are reset here (the caller holds the output lock, and a temporary API is
    private to one process: nobody else can be holding them).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.settings import get_current_settings

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=limit)
        if get_current_settings().api.url is None:
            name = f"tag:{tag}"
            if client.read_global_concurrency_limit_by_name(name).active_slots:
                _logger().warning("freeing concurrency slots of %s left by a killed run", name)
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))


def _pictures(result: Any, base: Path) -> list[Path]:
    """PNG files a library result points at (contact sheets, loss curves), in field order."""
    data = tasks.plain(result)
    found = []
    for value in data.values() if isinstance(data, dict) else []:
        if isinstance(value, str) and value.endswith(".png"):
            path = Path(value) if Path(value).is_absolute() else base / value
            if path.exists():
                found.append(path)
    return found


# --- build-dataset -------------------------------------------------------------------------------


@flow(name="download-chunks", flow_run_name="download-{config.out.name}")
def download_chunks(
    config: BuildConfig, chunks: list[Any], options: FlowOptions = FlowOptions()
) -> list[Any]:
    """One download task per chunk, on the thread pool or the Dask cluster that `options` names."""
    download = tasks.download_task_for(config, options)
    futures = [download.submit(config, chunk) for chunk in chunks]
    return [future.result() for future in futures]


def run_download_chunks(config: BuildConfig, chunks: list[Any], options: FlowOptions) -> list[Any]:
    runner = make_task_runner(options.dask_address, max_workers=options.download_concurrency)
    return download_chunks.with_options(task_runner=runner)(config, chunks, options)


@flow(name="score-chunks", flow_run_name="score-{config.out.name}")
def score_chunks(config: BuildConfig, chunks: list[Any], options: FlowOptions = FlowOptions()) -> list[int]:
    """Dedup once, then one CLIP-scoring task per chunk, on the thread pool or the Dask cluster that
    `options` names; their scores are cached in the build's work folder, where finalize merges them."""
    tasks.dedup_increment.submit(config).result()
    futures = [tasks.score_chunk.submit(config, chunk) for chunk in chunks]
    return [future.result() for future in futures]


def run_score_chunks(config: BuildConfig, chunks: list[Any], options: FlowOptions) -> list[int]:
    # one scoring task at a time on the thread pool: torch already uses the cores within a task
    runner = make_task_runner(options.dask_address, max_workers=1)
    return score_chunks.with_options(task_runner=runner)(config, chunks, options)


@flow(name="build-dataset", flow_run_name="build-{config.out.name}")
def build_dataset_flow(config: BuildConfig, options: FlowOptions = FlowOptions()) -> dict:
    """`python -m curation build`, as a flow: resumable chunk by chunk, with retries and artifacts."""
    log = _logger()
    with output_lock(config.out, "build-dataset flow"):
        ensure_tag_concurrency(tasks.DOWNLOAD_TAG, options.download_concurrency)
        tasks.collect_candidates(config)
        chunks = tasks.plan_chunks(config)
        log.info("%d chunk(s) of candidates to download into %s", len(chunks), config.out)
        chunk_results = run_download_chunks(config, chunks, options)
        if config.wants_clip and chunks:
            run_score_chunks(config, chunks, options)
        summary = tasks.finalize_dataset(config)
    publish_build_artifacts(config, chunk_results, summary)
    return {"out": str(config.out), "chunks": tasks.plain(chunk_results), "summary": tasks.plain(summary)}


def publish_build_artifacts(config: BuildConfig, chunk_results: list[Any], summary: Any) -> None:
    key = f"build-{config.out.name}"
    rows = [tasks.plain(r) for r in chunk_results]
    artifacts.publish_table(key + "-chunks", f"Downloaded chunks of {config.out}", rows)
    plain = tasks.plain(summary)
    if isinstance(plain, dict):
        counts = {k: v for k, v in artifacts.flatten(plain).items() if not isinstance(v, str)}
        artifacts.publish_table(
            key + "-counts",
            f"Stage counts of {config.out}",
            [{"count": k, "value": v} for k, v in counts.items()],
        )
    for i, picture in enumerate(_pictures(summary, config.out)):
        artifacts.publish_picture(f"{key}-picture-{i}", picture, f"{picture.name} of {config.out}")


# --- train and evaluate --------------------------------------------------------------------------


@flow(name="train", flow_run_name="train-{config.out.name}")
def train_flow(config: TrainConfig, options: FlowOptions = FlowOptions()) -> dict:
    """`python -m training.train`, as a flow: the loss curve and final numbers become artifacts."""
    # training.train holds the run folder's lock itself (rank 0 under torchrun, another process).
    result = tasks.train_clip(config, options.train_processes)
    key = f"train-{config.out.name}"
    plain = tasks.plain(result)
    if isinstance(plain, dict):
        artifacts.publish_table(key + "-summary", f"Training run {config.out}", [artifacts.flatten(plain)])
    pictures = _pictures(result, config.out) or [p for p in [config.out / "loss.png"] if p.exists()]
    for i, picture in enumerate(pictures):
        artifacts.publish_picture(f"{key}-loss-{i}", picture, f"loss curve of {config.out}")
    return plain if isinstance(plain, dict) else {"result": plain}


@flow(name="evaluate", flow_run_name="evaluate-{config.checkpoint.name}")
def evaluate_flow(config: EvalConfig, options: FlowOptions = FlowOptions()) -> dict:
    """`python -m training.evaluate`, as a flow: metrics become a markdown table artifact."""
    result = tasks.plain(tasks.evaluate_clip(config))
    metrics = artifacts.flatten(result) if isinstance(result, dict) else {"result": result}
    artifacts.publish_table(
        f"evaluate-{config.checkpoint.name}",
        f"Evaluation of {config.checkpoint}",
        [{"metric": k, "value": v} for k, v in metrics.items()],
    )
    return result if isinstance(result, dict) else {"result": result}


# --- end-to-end ----------------------------------------------------------------------------------


def round2_config(chain: ChainConfig, build: BuildConfig, train: TrainConfig) -> BuildConfig:
    """Round 2: the same sources, scored by the model trained on round 1, keeping the best pairs; round 1's
    downloads are reused (the same rows, the same download settings: nothing is fetched twice)."""
    return replace(
        build,
        out=chain.out / "data" / "round2",
        reuse_downloads=[*build.reuse_downloads, build.out],
        clip_checkpoint=train.out,
        clip_model=None,
        min_clip_score=chain.rescore_min_score,
        clip_top_fraction=chain.rescore_top_fraction,
    )


@flow(name="end-to-end", flow_run_name="chain-{chain.out.name}")
def end_to_end_flow(
    chain: ChainConfig,
    build: BuildConfig,
    train: TrainConfig,
    evaluate: EvalConfig,
    options: FlowOptions = FlowOptions(),
) -> dict:
    """build -> train -> evaluate -> CLIP-filtered build (round 2) -> apps, each stage a subflow or task."""
    log = _logger()
    result: dict[str, Any] = {"out": str(chain.out), "skipped": {}}
    heldout = chain.out / "heldout"
    if chain.world == "corpus":
        if not (heldout / "split.json").exists():
            result["heldout"] = tasks.write_corpus_heldout(heldout)
    elif evaluate.zeroshot is not None and not Path(evaluate.zeroshot).exists():
        tasks.write_heldout_images(
            Path(evaluate.zeroshot), chain.heldout_per_class, chain.heldout_seed, chain.heldout_size
        )
    result["round1"] = build_dataset_flow(build, options)
    for stage, module in (("train", "training.train"), ("evaluate", "training.evaluate")):
        missing = tasks.library_missing(module)
        if missing:
            log.warning("%s: skipped, %s", stage, missing)
            result["skipped"][stage] = missing
    if "train" in result["skipped"]:
        return result
    result["train"] = train_flow(train, options)
    if "evaluate" not in result["skipped"]:
        result["evaluate"] = evaluate_flow(evaluate, options)
        if chain.world == "corpus":  # the same pictures named by their 9 emoji groups
            categories = replace(
                evaluate,
                zeroshot=heldout / CORPUS_CATEGORIES,
                retrieval=None,
                linear_probe=None,
                out=chain.out / "eval" / "categories.json",
            )
            result["evaluate_categories"] = evaluate_flow(categories, options)
    result["round2"] = build_dataset_flow(round2_config(chain, build, train), options)
    apps, skipped = run_apps(chain, train, chain.out / "apps", dataset=result["round1"]["summary"]["out"])
    result.update(apps)
    result["skipped"].update(skipped)
    return result


def run_apps(
    chain: ChainConfig, train: TrainConfig, apps_dir: Path, dataset: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """The apps on the trained model, side by side on the flow's task runner (each task one torch thread:
    on 2 cores the corpus demo's apps take 107 instead of 159 s, docs/corpus.md).

    Returns the results by app, and the apps skipped because their modules do not import (app: why)."""
    log = _logger()
    skipped: dict[str, str] = {}
    wanted = (
        (["clipasso"] if chain.clipasso else [])
        + (["clip4clip"] if chain.clip4clip else [])
        + list(chain.apps)
    )
    modules = {"clipasso": "apps.clipasso.run", "clip4clip": "apps.clip4clip.demo"}
    for app in wanted:
        missing = tasks.library_missing(modules.get(app, f"apps.{app}.demo"))
        if missing:
            log.warning("%s: skipped, %s", app, missing)
            skipped[app] = missing
    futures: dict[str, Any] = {}
    if "clipasso" in wanted and "clipasso" not in skipped:
        if chain.clipasso_image:
            picture = chain.clipasso_image
        elif chain.world == "corpus":
            picture = Path(tasks.write_photo(apps_dir / "clipasso_input" / "chelsea.png", "chelsea"))
        else:
            picture = Path(
                tasks.write_shape_picture(
                    apps_dir / "clipasso_input" / "red_star.png", "red star", chain.heldout_seed
                )
            )
        settings = (chain.clipasso_strokes, chain.clipasso_iterations, chain.clipasso_seeds)
        futures["clipasso"] = tasks.sketch_picture.submit(
            picture, apps_dir / "clipasso", train.out, *settings
        )
        if chain.world == "corpus" and chain.clipasso_gallery:
            futures["clipasso_gallery"] = tasks.sketch_gallery.submit(
                apps_dir / "clipasso_gallery", train.out, *settings
            )
    if "clip4clip" in wanted and "clip4clip" not in skipped:
        futures["clip4clip"] = tasks.video_search.submit(
            apps_dir / "clip4clip",
            train.out,
            chain.clip4clip_train_videos,
            chain.clip4clip_epochs,
            world=chain.world,  # corpus: real emoji moving (held-out style in the test videos)
        )
    for app in chain.apps:
        if app not in skipped:
            futures[app] = tasks.app_demo.submit(app, apps_dir / app, train.out, dataset)
    result: dict[str, Any] = {name: future.result() for name, future in futures.items()}
    sketch_png = next((p for p in (result.get("clipasso") or {}).values() if str(p).endswith(".png")), None)
    if sketch_png:
        artifacts.publish_picture("clipasso-sketch", sketch_png, "CLIPasso sketch by the trained model")
    if "clip4clip" in result:
        top5 = result["clip4clip"].get("search_top5", {})
        artifacts.publish_table(
            "clip4clip-search", "clip4clip: held-out captions found in the top 5 (%)", [top5] if top5 else []
        )
    return result, skipped


# --- nightly ---------------------------------------------------------------------------------------


def version_train_config(train: TrainConfig, build: BuildConfig, version: int) -> TrainConfig:
    """Training on one dataset version: pinned to it, in its own run directory."""
    return replace(train, data=[build.out], data_version=version, out=Path(train.out) / f"version-{version}")


@flow(name="nightly", flow_run_name="nightly-{build.out.name}")
def nightly_flow(
    build: BuildConfig, nightly: NightlyConfig, train: TrainConfig, options: FlowOptions = FlowOptions()
) -> dict:
    """Incremental build (only new rows and pages, a new dataset version), then optionally train on that version."""
    log = _logger()
    result: dict[str, Any] = {"build": build_dataset_flow(build, options)}
    summary = result["build"]["summary"]
    version, added = summary.get("version"), summary.get("added", 0)
    log.info("%s: version %s, %d new pairs", build.out, version, added)
    if not nightly.train:
        return result
    if not added or version is None:
        log.info("no new pairs: no training run")
        result["train"] = None
        return result
    result["train"] = train_flow(version_train_config(train, build, version), options)
    return result


# --- registry ------------------------------------------------------------------------------------

FLOWS = {
    "build-dataset": build_dataset_flow,
    "train": train_flow,
    "evaluate": evaluate_flow,
    "end-to-end": end_to_end_flow,
    "nightly": nightly_flow,
}
# the stage whose config is the flow's `config` parameter
FLOW_CONFIG_STAGE = {"build-dataset": "build", "train": "train", "evaluate": "evaluate"}


def flow_parameters(params: Any) -> dict[str, Any]:
    """The keyword arguments of a flow run from validated FlowParams."""
    if params.flow in ("end-to-end", "nightly"):
        return {**params.configs, "options": params.options}
    return {"config": params[FLOW_CONFIG_STAGE[params.flow]], "options": params.options}


def deployment_parameters(params: Any) -> dict[str, Any]:
    """JSON-able flow parameters for a deployment; Prefect turns them back into the typed configs."""
    from common.settings import to_dict

    return {name: to_dict(value) for name, value in flow_parameters(params).items()}


def run_flow(params: Any) -> Any:
    """Run one flow now (the ephemeral API, or the server PREFECT_API_URL names)."""
    return FLOWS[params.flow](**flow_parameters(params))


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


__all__ = [
    "FLOWS",
    "ChainConfig",
    "build_dataset_flow",
    "download_chunks",
    "evaluate_flow",
    "nightly_flow",
    "flow_parameters",
    "run_flow",
    "train_flow",
]
