"""`python -m apps.actionclip {classify,train,evaluate,synth}`: action recognition as video-text matching.

    python -m apps.actionclip synth data/actions                       # generated action videos + labels.csv
    python -m apps.actionclip classify data/actions/videos/test_grows_000.mp4 --labels "grows,shrinks,bounces"
    python -m apps.actionclip train --videos data/actions/videos --labels data/actions/labels.csv --out runs/ac
    python -m apps.actionclip evaluate --videos data/actions/videos --labels data/actions/labels.csv --head runs/ac
    python -m apps.actionclip evaluate ... --head runs/ac_seen --classes "moves up,fades out,rotates counterclockwise"

Labels are matched with videos as texts: each label is filled into several prompt templates and
compared with the video's CLIP frame features fused over time. Without --head, zero-shot CLIP with
frame averaging; with a head from `train`, its fusion (meanP or the temporal Transformer, transf).
Any label works at classification time, also one never trained (zero-shot).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from apps.actionclip.errors import ActionClipError
from apps.actionclip.model import FusionConfig
from apps.actionclip.train import TrainConfig
from apps.cli import add_model_arguments, model_choice
from common.errors import run_cli
from common.settings import add_arguments, from_namespace
from testbed.actions import ActionSetConfig

DEFAULT_FRAMES = FusionConfig().max_frames  # ActionCLIP samples 8 segments uniformly over the whole video


def _add_common_args(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--cache-dir", type=Path, help="frame-feature cache, shared with apps.clip4clip")


def _add_data_args(parser: argparse.ArgumentParser, split: str) -> None:
    parser.add_argument(
        "--videos", type=Path, required=True, help="folder searched recursively for the videos"
    )
    parser.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="CSV with a header video,label[,split]; video = file name or stem",
    )
    parser.add_argument(
        "--split", default=split, help=f"rows of this split (default {split}); 'all' for every row"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.actionclip",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="top-k labels of each video, with probabilities")
    p.add_argument(
        "videos", type=Path, nargs="+", help="video files (any length; unreadable ones are reported)"
    )
    p.add_argument("--labels", required=True, help='comma-separated labels, e.g. "grows,shrinks,bounces"')
    p.add_argument("--head", type=Path, help="head.pt or run folder from `train` (default: zero-shot)")
    p.add_argument(
        "--fusion",
        choices=("meanP", "transf"),
        help="zero-shot: meanP only; with --head: must match the head's",
    )
    p.add_argument("-k", type=int, default=3, help="labels shown per video (default 3)")
    p.add_argument(
        "--max-frames", type=int, help=f"frames per video (default: the head's, else {DEFAULT_FRAMES})"
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    _add_common_args(p)

    p = sub.add_parser("train", help="fine-tune a fusion head on labelled videos (few-shot with --shots)")
    _add_data_args(p, "train")
    p.add_argument("--out", type=Path, required=True, help="run folder: head.pt, log.jsonl, loss.png")
    add_arguments(p.add_argument_group("head"), FusionConfig)
    add_arguments(p.add_argument_group("training"), TrainConfig, exclude=("head", "templates"))
    p.add_argument(
        "--exclude", default="", help="comma-separated labels left out of training (zero-shot checks)"
    )
    p.add_argument("--shots", type=int, help="train on this many videos per label (few-shot)")
    _add_common_args(p)

    p = sub.add_parser("evaluate", help="top-1/top-5, per-label accuracy and a confusion matrix")
    _add_data_args(p, "test")
    p.add_argument("--head", type=Path, help="head.pt or run folder (default: zero-shot, frame averaging)")
    p.add_argument("--classes", default="", help="classify among these labels only (and only their videos)")
    p.add_argument(
        "--max-frames", type=int, help=f"frames per video (default: the head's, else {DEFAULT_FRAMES})"
    )
    p.add_argument("--json", type=Path, help="also write the metrics as JSON here")
    p.add_argument("--confusion", type=Path, help="also write the confusion matrix as a PNG here")
    _add_common_args(p)

    p = sub.add_parser("synth", help="write the generated action videos (mp4) and labels.csv")
    p.add_argument("out", type=Path)
    add_arguments(p, ActionSetConfig, exclude=("actions",))
    return parser


def _head_or_zero_shot(ns, clip, max_frames: int | None):
    """(head, sampling, trained labels or None) from --head, else zero-shot meanP."""
    from apps.actionclip.model import load_head, zero_shot_head
    from apps.clip4clip.cache import visual_fingerprint
    from apps.clip4clip.video import FrameSampling

    if ns.head is None:
        if getattr(ns, "fusion", None) == "transf":
            raise ActionClipError(
                "--fusion transf needs a trained --head (its temporal Transformer is learned); zero-shot is meanP"
            )
        frames = max_frames or DEFAULT_FRAMES
        return zero_shot_head(clip.embed_dim, frames), FrameSampling(max_frames=frames, fps=None), None
    head, sampling, state = load_head(ns.head, clip)
    if state.get("visual_fingerprint") != visual_fingerprint(clip.model):
        print(
            f"warning: head {ns.head} was trained on the frame features of {state['clip_identity']}, not of "
            f"{clip.identity} (same width, other weights): pass the --checkpoint it was trained with",
            file=sys.stderr,
        )
    if getattr(ns, "fusion", None) and ns.fusion != head.config.fusion:
        raise ActionClipError(
            f"--fusion {ns.fusion} but head {ns.head} is {head.config.fusion}: drop --fusion or pick another head"
        )
    if max_frames and max_frames != sampling.max_frames:
        raise ActionClipError(
            f"--max-frames {max_frames} but head {ns.head} was trained with {sampling.max_frames}: drop --max-frames"
        )
    return head, sampling, state.get("labels")


def _report_skipped(rejected, missing=()) -> None:
    for reject in rejected:
        print(f"skipped {reject.path}: {reject.reason}", file=sys.stderr)
    if missing:
        print(f"{len(missing)} labelled videos have no file (e.g. {missing[0]})", file=sys.stderr)


def _write_json(path: Path, obj) -> None:
    from common.atomic import atomic_write_json

    atomic_write_json(path, obj)


def run_classify(ns) -> int:
    from apps.actionclip.data import load_video_files
    from apps.actionclip.prompts import parse_labels
    from apps.actionclip.train import classify

    labels = parse_labels(ns.labels)
    if ns.k < 1:
        raise ActionClipError(f"-k {ns.k}: show at least 1 label")
    clip = model_choice(ns).load()
    head, sampling, _ = _head_or_zero_shot(ns, clip, ns.max_frames)
    bank, rejected = load_video_files(list(ns.videos), clip, sampling, ns.cache_dir)
    _report_skipped(rejected)
    if bank is None:
        raise ActionClipError(f"none of the {len(ns.videos)} videos could be read (reasons above)")
    probs = classify(clip, head, bank, labels)
    results = []
    for path, row in zip(bank.ids, probs):
        ranked = row.argsort(descending=True)[: ns.k].tolist()
        results.append(
            {"video": path, "top": [{"label": labels[i], "probability": float(row[i])} for i in ranked]}
        )
        print(path)
        for i in ranked:
            print(f"  {float(row[i]):6.1%}  {labels[i]}")
    if ns.json:
        _write_json(
            ns.json, {"labels": labels, "results": results, "skipped": [r.__dict__ for r in rejected]}
        )
    return 0


def _split(ns) -> str | None:
    return None if ns.split == "all" else ns.split


def run_train(ns) -> int:
    from apps.actionclip.data import load_labelled_videos, read_labels_file, select_rows
    from apps.actionclip.prompts import parse_labels
    from apps.actionclip.train import evaluate, train_head
    from apps.clip4clip.video import FrameSampling

    # Every check that needs no model runs first: a refused run writes nothing.
    config = replace(from_namespace(TrainConfig, ns), head=from_namespace(FusionConfig, ns))
    exclude = parse_labels(ns.exclude, "--exclude", minimum=1) if ns.exclude.strip() else []
    rows = select_rows(
        read_labels_file(ns.labels), _split(ns), exclude=exclude, shots=ns.shots, seed=config.seed
    )
    parse_labels(sorted({r.label for r in rows}), f"labels of the training videos in {ns.labels}")
    if (ns.out / "head.pt").exists():
        print(f"replacing {ns.out / 'head.pt'}", file=sys.stderr)
    clip = model_choice(ns).load()
    sampling = FrameSampling(max_frames=config.head.max_frames, fps=None)
    data = load_labelled_videos(ns.videos, rows, clip, sampling, ns.cache_dir)
    _report_skipped(data.rejected, data.missing)
    trained = train_head(clip, data, config, ns.out)
    fit = evaluate(clip, trained.head, data)
    print(
        f"{config.head.fusion}: {len(data.labels)} videos, {len(trained.labels)} labels, {len(trained.losses)} steps "
        f"in {trained.seconds:.1f} s; top-1 on its training videos {fit.top1:.1f} %; wrote {ns.out / 'head.pt'}"
    )
    return 0


def run_evaluate(ns) -> int:
    from apps.actionclip.data import load_labelled_videos, read_labels_file, select_rows
    from apps.actionclip.prompts import parse_labels
    from apps.actionclip.train import evaluate, plot_confusion

    classes = parse_labels(ns.classes, "--classes") if ns.classes.strip() else None
    rows = select_rows(read_labels_file(ns.labels), _split(ns), classes=classes)
    labels = classes or sorted({r.label for r in rows})
    parse_labels(labels, f"labels of the evaluated videos in {ns.labels}")
    clip = model_choice(ns).load()
    head, sampling, trained_labels = _head_or_zero_shot(ns, clip, ns.max_frames)
    data = load_labelled_videos(ns.videos, rows, clip, sampling, ns.cache_dir)
    _report_skipped(data.rejected, data.missing)
    result = evaluate(clip, head, data, labels)
    never = sorted(set(labels) - set(trained_labels)) if trained_labels is not None else labels
    name = f"{head.config.fusion} head {ns.head}" if ns.head else "zero-shot (frame averaging)"
    print(f"{name}: {result.videos} videos, {len(labels)} labels ({len(never)} never trained)")
    print(f"top-1 {result.top1:.1f} %   top-5 {result.top5:.1f} %   chance {100 / len(labels):.1f} %")
    for label, accuracy in result.per_label.items():
        print(f"  {accuracy:6.1f} %  {label}{'  (never trained)' if label in never and ns.head else ''}")
    if ns.json:
        _write_json(
            ns.json,
            {**result.as_dict(), "never_trained": never, "skipped": [r.__dict__ for r in data.rejected]},
        )
    if ns.confusion:
        print(f"wrote {plot_confusion(result, ns.confusion, name)}")
    return 0


def run_synth(ns) -> int:
    from testbed.actions import write_action_set

    made = write_action_set(ns.out, from_namespace(ActionSetConfig, ns))
    counts = {s: sum(1 for v in made.splits.values() if v == s) for s in ("train", "test")}
    print(
        f"wrote {counts['train']} training and {counts['test']} test videos to {made.videos_dir}; "
        f"labels: {made.labels_path}"
    )
    return 0


COMMANDS = {"classify": run_classify, "train": run_train, "evaluate": run_evaluate, "synth": run_synth}


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)

    def body() -> int:
        if getattr(ns, "threads", None) is not None:
            from apps.cli import set_threads

            set_threads(ns.threads)
        return COMMANDS[ns.command](ns)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
