"""The actionclip experiment in one short run: the figures of docs/actionclip.md and of `make demo`.

1. write the generated action videos (13 actions, train and test renderings);
2. zero-shot: CLIP with frame averaging and the prompt ensemble, no training;
3. fine-tune meanP and the temporal Transformer (transf) on all 13 actions, evaluate on test videos;
4. fine-tune meanP and transf on 10 actions and classify the 3 held-out ones (names never trained).

Writes under OUT: the videos, the head runs, confusion.png, report.md and report.json.
`run_experiment(out, clip, config)` is the whole experiment (docs: 3 seeds, 16 test videos per
action); `run_demo(out, checkpoint)` is `make demo`'s one-seed run and returns its headline figures.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from apps.actionclip.data import load_labelled_videos, read_labels_file, select_rows
from apps.actionclip.model import FusionConfig, zero_shot_head
from apps.actionclip.train import Evaluation, TrainConfig, evaluate, plot_confusion, train_head
from apps.cli import torch_threads
from apps.clip4clip.video import FrameSampling
from common.atomic import atomic_write_bytes, atomic_write_json
from testbed.actions import (
    ACTIONS,
    DIRECTION_DEPENDENT,
    HELD_OUT_ACTIONS,
    ActionSetConfig,
    write_action_set,
)


@dataclass(frozen=True)
class ActionDemoConfig:
    # Data helps more than epochs: 32 videos per action gave transf 67 % top-1, 48 gave 85 %.
    train_per_action: int = field(default=48, metadata={"help": "training videos per action"})
    test_per_action: int = field(default=8, metadata={"help": "test videos per action"})
    max_frames: int = field(default=8, metadata={"help": "frames per video"})
    layers: int = field(default=1, metadata={"help": "temporal Transformer blocks"})
    epochs: int = field(default=40, metadata={"help": "passes over the training videos"})
    batch_size: int = field(default=32, metadata={"help": "videos per step"})
    lr: float = field(default=2e-3, metadata={"help": "learning rate of the heads"})
    seed: int = field(default=0, metadata={"help": "first training seed (and the videos' seed)"})
    held_out: tuple[str, ...] = HELD_OUT_ACTIONS
    seeds: int = field(
        default=1, metadata={"help": "training seeds per fine-tuned model: figures are mean [min, max]"}
    )
    threads: int | None = 1  # small matrices on busy cores: one thread avoids pool spin-waits


def run_experiment(
    out_dir: str | Path, clip, config: ActionDemoConfig = ActionDemoConfig(), progress: bool = True
) -> dict:
    """Run the experiment with `clip` (a LoadedCLIP); returns the figures (also in OUT/report.json)."""
    with torch_threads(config.threads):
        return _run(Path(out_dir), clip, config, progress)


def _run(out: Path, clip, config: ActionDemoConfig, progress: bool) -> dict:
    made = write_action_set(
        out / "actions",
        ActionSetConfig(config.train_per_action, config.test_per_action, seed=config.seed),
        progress,
    )
    rows = read_labels_file(made.labels_path)
    sampling = FrameSampling(max_frames=config.max_frames, fps=None)
    cache = out / "frame_cache"
    train = load_labelled_videos(made.videos_dir, select_rows(rows, "train"), clip, sampling, cache, progress)
    test = load_labelled_videos(made.videos_dir, select_rows(rows, "test"), clip, sampling, cache, progress)
    base = TrainConfig(
        FusionConfig("transf", config.max_frames, config.layers),
        config.epochs,
        config.batch_size,
        config.lr,
        seed=config.seed,
    )
    zero_shot = zero_shot_head(clip.embed_dim, config.max_frames)
    runs: dict[str, list[Evaluation]] = {"zero-shot": [evaluate(clip, zero_shot, test)]}
    seconds: dict[str, list[float]] = {}
    for fusion in ("meanP", "transf"):
        for seed in range(config.seed, config.seed + config.seeds):
            run = out / f"head_{fusion}" if seed == config.seed else None
            trained = train_head(
                clip,
                train,
                replace(base, head=replace(base.head, fusion=fusion), seed=seed),
                run,
                progress,
            )
            runs.setdefault(fusion, []).append(evaluate(clip, trained.head, test))
            seconds.setdefault(fusion, []).append(trained.seconds)

    # Zero-shot on actions never trained: train without them, classify their videos among them.
    held_out = list(config.held_out)
    seen_train = load_labelled_videos(
        made.videos_dir, select_rows(rows, "train", exclude=held_out), clip, sampling, cache, False
    )
    unseen_test = load_labelled_videos(
        made.videos_dir, select_rows(rows, "test", classes=held_out), clip, sampling, cache, False
    )
    unseen: dict[str, list[float]] = {"zero-shot": [evaluate(clip, zero_shot, unseen_test, held_out).top1]}
    among_all: dict[str, list[float]] = {}
    for fusion in ("meanP", "transf"):
        for seed in range(config.seed, config.seed + config.seeds):
            fusion_config = replace(base.head, fusion=fusion)
            run = out / f"head_{fusion}_without_held_out" if seed == config.seed else None
            trained = train_head(
                clip, seen_train, replace(base, head=fusion_config, seed=seed), run, progress
            )
            unseen.setdefault(fusion, []).append(evaluate(clip, trained.head, unseen_test, held_out).top1)
            among_all.setdefault(fusion, []).append(
                evaluate(clip, trained.head, unseen_test, sorted(ACTIONS)).top1
            )

    direction = sorted(DIRECTION_DEPENDENT)
    others = sorted(set(ACTIONS) - DIRECTION_DEPENDENT)
    table = {
        name: {
            "all": _spread([e.top1 for e in evaluations]),
            "direction-dependent": _spread([e.subset_top1(direction) for e in evaluations]),
            "other": _spread([e.subset_top1(others) for e in evaluations]),
            "top5": _spread([e.top5 for e in evaluations]),
        }
        for name, evaluations in runs.items()
    }
    per_action = {
        name: {
            label: float(np.mean([e.per_label[label] for e in evaluations]))
            for label in evaluations[0].per_label
        }
        for name, evaluations in runs.items()
    }
    confusion = plot_confusion(
        [
            (runs[name][0], title)
            for name, title in (("meanP", "fine-tuned meanP"), ("transf", "fine-tuned transf"))
        ],
        out / "confusion.png",
    )
    summary = {
        "clip": clip.identity,
        "config": asdict(config),
        "videos": {"train": len(train.labels), "test": len(test.labels)},
        "top1": table,
        "per_action": per_action,
        "held_out": {
            "actions": held_out,
            "chance": 100.0 / len(held_out),
            "top1": {name: _spread(values) for name, values in unseen.items()},
            "top1_among_all_13": {name: _spread(values) for name, values in among_all.items()},
        },
        "seeds": config.seeds,
        "train_seconds": {name: float(np.mean(values)) for name, values in seconds.items()},
        "confusion_png": str(confusion),
    }
    atomic_write_json(out / "report.json", summary)
    atomic_write_bytes(out / "report.md", render_report(summary).encode())
    return summary


def render_report(summary: dict) -> str:
    lines = [
        f"# actionclip ({summary['clip']})",
        "",
        f"{summary['videos']['train']} training and {summary['videos']['test']} test videos, 13 actions; top-1 % on "
        f"test videos; fine-tuned models: {summary['seeds']} training seed(s), mean [min, max].",
        "",
        "| model | all actions | direction-dependent (10) | other (3) | top-5 |",
        "|---|---|---|---|---|",
    ]
    for name, row in summary["top1"].items():
        cells = " | ".join(
            _format_spread(row[key]) for key in ("all", "direction-dependent", "other", "top5")
        )
        lines.append(f"| {name} | {cells} |")
    held = summary["held_out"]
    lines += [
        "",
        f"Held-out actions ({', '.join(held['actions'])}): trained on the other 10, their names never trained; "
        f"classified among the 3 (chance {held['chance']:.1f} %) and among all 13:",
        "",
        "| model | among the 3 held-out | among all 13 |",
        "|---|---|---|",
    ]
    for name, value in held["top1"].items():
        other = held["top1_among_all_13"].get(name)
        lines.append(f"| {name} | {_format_spread(value)} | {_format_spread(other) if other else '-'} |")
    lines += [
        "",
        "Per action (top-1 %):",
        "",
        "| action | " + " | ".join(summary["per_action"]) + " |",
        "|---|" + "---|" * len(summary["per_action"]),
    ]
    actions = list(next(iter(summary["per_action"].values())))
    for action in actions:
        lines.append(
            f"| {action} | " + " | ".join(f"{v[action]:.0f}" for v in summary["per_action"].values()) + " |"
        )
    return "\n".join(lines) + "\n"


def _spread(values: list[float]) -> dict:
    return {
        "mean": float(np.mean(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "runs": values,
    }


def _format_spread(value: dict) -> str:
    if value["min"] == value["max"]:
        return f"{value['mean']:.1f}"
    return f"{value['mean']:.1f} [{value['min']:.1f}, {value['max']:.1f}]"


def run_demo(
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    progress: bool = False,
    config: ActionDemoConfig = ActionDemoConfig(),
) -> dict:
    """`make demo`'s short run (one seed, 48 training and 8 test videos per action): headline figures.

    from apps.actionclip.demo import run_demo
    figures = run_demo("runs/demo/apps/actionclip", "runs/demo/train")
    """
    from models import DEFAULT_CHECKPOINT, load_clip

    started = time.perf_counter()
    summary = run_experiment(out_dir, load_clip(checkpoint, default=DEFAULT_CHECKPOINT), config, progress)
    top1, held = summary["top1"], summary["held_out"]
    return {
        "confusion_png": summary["confusion_png"],
        "top1_all_actions": {name: row["all"]["mean"] for name, row in top1.items()},
        "top1_direction_dependent": {name: row["direction-dependent"]["mean"] for name, row in top1.items()},
        "top1_held_out_names": {name: value["mean"] for name, value in held["top1"].items()},
        "held_out_chance": held["chance"],
        "report": str(Path(out_dir) / "report.md"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m apps.actionclip.demo --out DIR [--checkpoint CLIP] [--train-per-action N] [--seeds N]`."""
    import argparse

    from apps.cli import add_model_arguments, model_choice, set_threads
    from common.errors import run_cli
    from common.settings import add_arguments, from_namespace

    parser = argparse.ArgumentParser(
        prog="python -m apps.actionclip.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for videos, heads, report.md, confusion.png"
    )
    add_arguments(parser.add_argument_group("experiment"), ActionDemoConfig, exclude=("held_out", "threads"))
    add_model_arguments(parser)
    ns = parser.parse_args(argv)

    def body() -> None:
        set_threads(ns.threads)
        run_experiment(ns.out, model_choice(ns).load(), from_namespace(ActionDemoConfig, ns))
        print((ns.out / "report.md").read_text())
        print(f"confusion matrices: {ns.out / 'confusion.png'}")

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
