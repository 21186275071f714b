"""The actionclip experiment in one short run: the figures of docs/actionclip.md and of `make demo`.

1. write the generated action videos (13 actions, train and test renderings);
2. zero-shot: CLIP with frame averaging and the prompt ensemble, no training;
3. fine-tune meanP and the temporal Transformer (transf) on all 13 actions, evaluate on test videos;
4. fine-tune transf on 10 actions and classify the 3 held-out ones (names never trained) zero-shot.

Writes under OUT: the videos, the two head runs, confusion.png, report.md and report.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from apps.actionclip.actions import ACTIONS, DIRECTION_DEPENDENT, HELD_OUT_ACTIONS, ActionSetConfig, write_action_set
from apps.actionclip.data import load_labelled_videos, read_labels_file, select_rows
from apps.actionclip.model import FusionConfig, zero_shot_head
from apps.actionclip.train import Evaluation, TrainConfig, evaluate, plot_confusion, train_head
from apps.clip4clip.video import FrameSampling
from curation.shards import atomic_write_bytes, atomic_write_json


@dataclass(frozen=True)
class ActionDemoConfig:
    train_per_action: int = 32
    test_per_action: int = 8
    max_frames: int = 8
    layers: int = 1
    epochs: int = 60
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    held_out: tuple[str, ...] = HELD_OUT_ACTIONS
    threads: int | None = 1  # small matrices on busy cores: one thread avoids pool spin-waits


def run_demo(out_dir: str | Path, clip, config: ActionDemoConfig = ActionDemoConfig(), progress: bool = True) -> dict:
    """Run the experiment with `clip` (a LoadedCLIP); returns the figures (also in OUT/report.json)."""
    previous = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(Path(out_dir), clip, config, progress)
    finally:
        torch.set_num_threads(previous)


def _run(out: Path, clip, config: ActionDemoConfig, progress: bool) -> dict:
    made = write_action_set(
        out / "actions",
        ActionSetConfig(config.train_per_action, config.test_per_action, seed=config.seed),
    )
    rows = read_labels_file(made.labels_path)
    sampling = FrameSampling(max_frames=config.max_frames, fps=None)
    cache = out / "frame_cache"
    train = load_labelled_videos(made.videos_dir, select_rows(rows, "train"), clip, sampling, cache, progress)
    test = load_labelled_videos(made.videos_dir, select_rows(rows, "test"), clip, sampling, cache, progress)
    base = TrainConfig(
        FusionConfig("transf", config.max_frames, config.layers), config.epochs, config.batch_size, config.lr, seed=config.seed
    )
    results: dict[str, Evaluation] = {"zero-shot": evaluate(clip, zero_shot_head(clip.embed_dim, config.max_frames), test)}
    seconds = {}
    for fusion in ("meanP", "transf"):
        trained = train_head(clip, train, replace(base, fusion=replace(base.fusion, fusion=fusion)), out / f"head_{fusion}", progress)
        results[fusion] = evaluate(clip, trained.head, test)
        seconds[fusion] = trained.seconds

    # Zero-shot on actions never trained: train transf without them, classify their videos among them.
    held_out = list(config.held_out)
    seen_train = load_labelled_videos(made.videos_dir, select_rows(rows, "train", exclude=held_out), clip, sampling, cache, False)
    unseen_test = load_labelled_videos(made.videos_dir, select_rows(rows, "test", classes=held_out), clip, sampling, cache, False)
    trained = train_head(clip, seen_train, base, out / "head_transf_seen", progress)
    unseen = {
        "transf (trained without them)": evaluate(clip, trained.head, unseen_test, held_out),
        "zero-shot CLIP": evaluate(clip, zero_shot_head(clip.embed_dim, config.max_frames), unseen_test, held_out),
    }
    all_labels = sorted(ACTIONS)
    generalised = evaluate(clip, trained.head, unseen_test, all_labels)

    direction = sorted(DIRECTION_DEPENDENT)
    others = sorted(set(ACTIONS) - DIRECTION_DEPENDENT)
    table = {
        name: {
            "all": e.top1,
            "direction-dependent": e.subset_top1(direction),
            "other": e.subset_top1(others),
            "top5": e.top5,
        }
        for name, e in results.items()
    }
    confusion = plot_confusion(results["transf"], out / "confusion.png", "fine-tuned transf, test videos (counts)")
    plot_confusion(results["meanP"], out / "confusion_meanP.png", "fine-tuned meanP, test videos (counts)")
    summary = {
        "clip": clip.identity,
        "config": asdict(config),
        "videos": {"train": len(train.labels), "test": len(test.labels)},
        "top1": table,
        "per_action": {name: e.per_label for name, e in results.items()},
        "held_out": {
            "actions": held_out,
            "chance": 100.0 / len(held_out),
            **{name: e.top1 for name, e in unseen.items()},
            "transf among all 13 labels": generalised.top1,
        },
        "train_seconds": seconds,
        "confusion_png": str(confusion),
    }
    atomic_write_json(out / "report.json", summary)
    atomic_write_bytes(out / "report.md", render_report(summary).encode())
    return summary


def render_report(summary: dict) -> str:
    lines = [
        f"# actionclip ({summary['clip']})",
        "",
        f"{summary['videos']['train']} training and {summary['videos']['test']} test videos, 13 actions; top-1 % on test videos.",
        "",
        "| model | all actions | direction-dependent (10) | other (3) | top-5 |",
        "|---|---|---|---|---|",
    ]
    for name, row in summary["top1"].items():
        lines.append(f"| {name} | {row['all']:.1f} | {row['direction-dependent']:.1f} | {row['other']:.1f} | {row['top5']:.1f} |")
    held = summary["held_out"]
    lines += [
        "",
        f"Held-out actions ({', '.join(held['actions'])}; never trained), classified among themselves "
        f"(chance {held['chance']:.1f} %):",
        "",
        "| model | top-1 % |",
        "|---|---|",
        f"| transf trained on the other 10 | {held['transf (trained without them)']:.1f} |",
        f"| zero-shot CLIP, frame averaging | {held['zero-shot CLIP']:.1f} |",
        f"| transf trained on the other 10, among all 13 labels | {held['transf among all 13 labels']:.1f} |",
        "",
        "Per action (top-1 %):",
        "",
        "| action | " + " | ".join(summary["per_action"]) + " |",
        "|---|" + "---|" * len(summary["per_action"]),
    ]
    actions = list(next(iter(summary["per_action"].values())))
    for action in actions:
        lines.append(f"| {action} | " + " | ".join(f"{v[action]:.0f}" for v in summary["per_action"].values()) + " |")
    return "\n".join(lines) + "\n"


def run_demo_from_checkpoint(out_dir: str | Path, checkpoint: str | Path) -> dict:
    """For `make demo`: load the CLIP at `checkpoint`, run the short experiment, return its figures."""
    from apps.clip import load_app_clip

    summary = run_demo(out_dir, load_app_clip(checkpoint=checkpoint), progress=False)
    return json.loads(json.dumps(summary))
