"""`python -m apps.clip4clip {index,search,train,evaluate,synth}`: text-to-video retrieval with CLIP.

    python -m apps.clip4clip synth data/videos_demo
    python -m apps.clip4clip train --videos data/videos_demo/videos --captions data/videos_demo/captions.json \\
        --head seqTransf --out runs/c4c --checkpoint runs/demo/train
    python -m apps.clip4clip index data/videos_demo/videos --out runs/c4c_index --checkpoint runs/demo/train \\
        --head-checkpoint runs/c4c
    python -m apps.clip4clip search runs/c4c_index "a red square moves left, then a blue circle moves up" --html hits.html
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from apps.cli import add_model_arguments, model_choice
from apps.clip4clip.demo import VideoDemoConfig
from apps.clip4clip.errors import Clip4ClipError
from apps.clip4clip.heads import HEAD_NAMES, HeadConfig
from apps.clip4clip.train import TrainConfig
from apps.clip4clip.video import FrameSampling
from common.errors import run_cli
from common.settings import add_arguments, from_namespace
from testbed.videos import SynthConfig


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "frame sampling (default: the head checkpoint's, else 12 frames at 1 fps)"
    )
    add_arguments(group, FrameSampling, include=("max_frames", "fps"))
    group.add_argument(
        "--cache-dir", type=Path, help="frame-feature cache (default: inside the output folder)"
    )


def _sampling(ns: argparse.Namespace, head_checkpoint: Path | None = None) -> FrameSampling:
    """Flags given on the command line, else the sampling the head was trained with, else CLIP4Clip's."""
    base = FrameSampling()
    if head_checkpoint is not None:
        from apps.clip4clip.train import read_head_sampling

        base = read_head_sampling(head_checkpoint) or base
    given = {k: v for k, v in vars(from_namespace(FrameSampling, ns)).items() if k in vars(ns)}
    return replace(base, **given)


def _load_clip(
    ns: argparse.Namespace,
    default_checkpoint: str | None = None,
    default_model: str | None = None,
    default_pretrained: str | None = None,
):
    choice = model_choice(ns)
    if choice.checkpoint is None and choice.model is None:
        choice = replace(
            choice, checkpoint=default_checkpoint, model=default_model, pretrained=default_pretrained
        )
    return choice.load()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.clip4clip",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="embed every readable video under a folder into an index")
    p.add_argument("video_dir", type=Path, help="folder searched recursively for videos")
    p.add_argument("--out", type=Path, required=True, help="index folder (created; re-running updates it)")
    p.add_argument(
        "--head",
        choices=HEAD_NAMES,
        default="meanP",
        help="head without weights (meanP) when no --head-checkpoint",
    )
    p.add_argument("--head-checkpoint", type=Path, help="head.pt or run folder written by `train`")
    p.add_argument(
        "--faiss",
        help="faiss index type: Flat (exact), IVF1024,Flat, HNSW32 (default: Flat below "
        "20,000 videos, else IVF)",
    )
    add_model_arguments(p)
    _add_sampling_args(p)

    p = sub.add_parser("search", help="rank the indexed videos for a text query")
    p.add_argument("index_dir", type=Path)
    p.add_argument("query", help="what the video shows, in words")
    p.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    p.add_argument("--html", type=Path, help="also write an HTML page with a thumbnail strip per result")
    add_model_arguments(p)

    p = sub.add_parser("train", help="train a similarity head on video-caption pairs")
    p.add_argument(
        "--videos", type=Path, required=True, help="folder of videos named by their caption-file id"
    )
    p.add_argument("--captions", type=Path, required=True, help="MSR-VTT style captions (JSON or CSV)")
    p.add_argument("--head", choices=HEAD_NAMES, default="seqTransf")
    p.add_argument(
        "--out", type=Path, required=True, help="run folder: head.pt, log.jsonl, loss.png, metrics.json"
    )
    add_arguments(p, HeadConfig, include=("layers",))
    add_arguments(p.add_argument_group("training"), TrainConfig, exclude=("head", "sampling"))
    add_model_arguments(p)
    _add_sampling_args(p)

    p = sub.add_parser("evaluate", help="R@1/5/10, MdR, MnR both ways for a head (or meanP zero-shot)")
    p.add_argument("--videos", type=Path, required=True)
    p.add_argument("--captions", type=Path, required=True)
    p.add_argument("--head-checkpoint", type=Path, help="head.pt or run folder; without it meanP zero-shot")
    p.add_argument("--split", default="test", help="split to evaluate on; 'all' for every video")
    p.add_argument(
        "--kinds", default="", help="comma-separated caption kinds to report separately (e.g. order,free)"
    )
    p.add_argument("--dual-softmax", action="store_true", help="re-rank with dual softmax over all queries")
    p.add_argument("--ties", choices=("pessimistic", "optimistic", "average"), default="pessimistic")
    p.add_argument("--json", type=Path, help="also write the metrics as JSON here")
    add_model_arguments(p)
    _add_sampling_args(p)

    p = sub.add_parser("synth", help="write the synthetic moving-shapes video set (mp4 + captions.json)")
    p.add_argument("out", type=Path)
    add_arguments(p, SynthConfig, exclude=("classes", "motions"))
    p = sub.add_parser(
        "demo", help="synthetic set -> train meanP and seqTransf -> index -> search; report.md"
    )
    p.add_argument("--out", type=Path, required=True)
    add_arguments(p.add_argument_group("demo settings"), VideoDemoConfig, exclude=("threads",))
    add_model_arguments(p)
    return parser


def run_demo(ns: argparse.Namespace) -> int:
    from apps.clip4clip.demo import run_video_demo

    summary = run_video_demo(ns.out, _load_clip(ns), from_namespace(VideoDemoConfig, ns))
    print((ns.out / "report.md").read_text())
    print(f"top-5 search hit rate on held-out captions: {summary['search_top5']['all']:.1f} %")
    return 0


def run_index(ns: argparse.Namespace) -> int:
    from apps.clip4clip.index import IndexOptions, build_index

    choice = model_choice(ns)
    if choice.checkpoint is None and choice.model is not None and choice.pretrained is None:
        raise Clip4ClipError(
            f"--model {choice.model} without --pretrained is randomly initialised: a search could never "
            "load the same weights again. Pass --checkpoint PATH, or --pretrained TAG"
        )
    clip = _load_clip(ns)
    options = IndexOptions(
        _sampling(ns, ns.head_checkpoint), ns.head, ns.head_checkpoint, ns.cache_dir, faiss_type=ns.faiss
    )
    report = build_index(ns.video_dir, ns.out, clip, options)
    for reject in report.rejected:
        print(f"skipped {reject.path}: {reject.reason}", file=sys.stderr)
    print(
        f"index {report.index_dir}: {report.total} videos ({len(report.added)} added, {len(report.unchanged)} "
        f"unchanged, {len(report.removed)} removed, {len(report.rejected)} skipped); faiss: {report.faiss_type}"
    )
    return 0


def run_search(ns: argparse.Namespace) -> int:
    from apps.clip4clip.search import (
        EmptyQueryError,
        format_hits,
        open_index,
        read_index_meta,
        search,
        write_html,
    )

    if not ns.query.strip():
        raise EmptyQueryError(
            'empty query: give a few words describing the video, e.g. "a red circle moves left"'
        )
    meta = read_index_meta(ns.index_dir)
    recorded = meta["clip"]
    default_model = default_pretrained = None
    if recorded["checkpoint"] is None:
        name, _, tag = recorded["identity"].partition(":")
        choice = model_choice(ns)
        if tag in ("", "random") and choice.checkpoint is None and choice.model is None:
            raise Clip4ClipError(
                f"index {ns.index_dir} was built with a randomly initialised {name}: pass the same "
                "weights with --checkpoint, or rebuild the index from a checkpoint"
            )
        default_model, default_pretrained = name, tag
    clip = _load_clip(ns, recorded["checkpoint"], default_model, default_pretrained)
    index = open_index(ns.index_dir, clip)
    hits = search(index, ns.query, ns.k)
    print(format_hits(ns.query, hits))
    if ns.html:
        print(f"wrote {write_html(ns.html, ns.query, hits, ns.index_dir)}")
    return 0


def run_train(ns: argparse.Namespace) -> int:
    from apps.clip4clip.heads import HeadConfig
    from apps.clip4clip.train import (
        TrainConfig,
        evaluate_head,
        load_video_captions,
        metrics_report,
        train_head,
    )
    from common.atomic import atomic_write_json

    clip = _load_clip(ns)
    sampling = _sampling(ns)
    flags = argparse.Namespace(**{k: v for k, v in vars(ns).items() if k not in ("head", "sampling")})
    config = from_namespace(TrainConfig, flags)
    config = replace(
        config,
        head=HeadConfig(ns.head, sampling.max_frames, from_namespace(HeadConfig, ns).layers),
        sampling=sampling,
        split=None if config.split == "all" else config.split,
    )
    cache = ns.cache_dir or ns.out / "frame_cache"
    data = load_video_captions(
        ns.videos, ns.captions, clip.model, clip.preprocess, sampling, config.split, cache
    )
    _report_skipped(data)
    trained = train_head(clip, data, config, ns.out)
    results = evaluate_head(trained.clip, trained.head, data)
    print(metrics_report(results, f"{ns.head} (training videos)"))
    atomic_write_json(
        ns.out / "metrics.json", {k: {d: m.as_dict() for d, m in v.items()} for k, v in results.items()}
    )
    print(f"wrote {ns.out / 'head.pt'} and {ns.out / 'loss.png'}")
    return 0


def _report_skipped(data) -> None:
    for reject in data.rejected:
        print(f"skipped {reject.path}: {reject.reason}", file=sys.stderr)
    if data.missing:
        print(f"{len(data.missing)} caption video ids have no file (e.g. {data.missing[0]})", file=sys.stderr)


def run_evaluate(ns: argparse.Namespace) -> int:
    from apps.clip4clip.heads import HeadConfig, build_head
    from apps.clip4clip.train import evaluate_head, load_head, load_video_captions, metrics_report

    clip = _load_clip(ns)
    sampling = _sampling(ns, ns.head_checkpoint)
    if ns.head_checkpoint is not None:
        head, _, _ = load_head(ns.head_checkpoint, clip)
    else:
        head = build_head(HeadConfig("meanP", sampling.max_frames), clip.embed_dim)
    # Reuse the training run's cache when evaluating its head; never write into the user's video folder.
    run_dir = (
        ns.head_checkpoint
        if ns.head_checkpoint and ns.head_checkpoint.is_dir()
        else (ns.head_checkpoint.parent if ns.head_checkpoint else None)
    )
    cache = ns.cache_dir or (run_dir / "frame_cache" if run_dir else None)
    data = load_video_captions(
        ns.videos,
        ns.captions,
        clip.model,
        clip.preprocess,
        sampling,
        None if ns.split == "all" else ns.split,
        cache,
    )
    _report_skipped(data)
    kinds = tuple(k for k in ns.kinds.split(",") if k) or (None,)
    results = evaluate_head(clip, head, data, kinds, ns.dual_softmax, ns.ties)
    print(metrics_report(results, head.config.name + (" + dual softmax" if ns.dual_softmax else "")))
    if ns.json:
        ns.json.write_text(
            json.dumps({k: {d: m.as_dict() for d, m in v.items()} for k, v in results.items()}, indent=2)
        )
    return 0


def run_synth(ns: argparse.Namespace) -> int:
    from testbed.videos import SynthConfig, generate_synthetic_set

    made = generate_synthetic_set(ns.out, from_namespace(SynthConfig, ns))
    print(
        f"wrote {len(made.train_ids)} training and {len(made.test_ids)} held-out videos to {made.videos_dir}; "
        f"captions: {made.captions_path}"
    )
    return 0


COMMANDS = {
    "index": run_index,
    "search": run_search,
    "train": run_train,
    "evaluate": run_evaluate,
    "synth": run_synth,
    "demo": run_demo,
}


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if getattr(ns, "threads", None):
        import torch

        torch.set_num_threads(ns.threads)
    return run_cli(lambda: COMMANDS[ns.command](ns))


if __name__ == "__main__":
    sys.exit(main())
