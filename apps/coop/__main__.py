"""`python -m apps.coop {task,train,evaluate}`: learned prompts (CoOp, CoCoOp) for a frozen CLIP.

    python -m apps.coop task --out data/coop_hues/train --per-class 32 --seed 0
    python -m apps.coop task --out data/coop_hues/test --per-class 50 --seed 1
    python -m apps.coop train --data data/coop_hues/train --shots 16 --ctx 4 --out runs/coop \\
        --checkpoint runs/demo/train
    python -m apps.coop train --data data/coop_hues/train --classes base --cocoop --init "a photo of a" \\
        --out runs/cocoop
    python -m apps.coop evaluate --prompts runs/coop --data data/coop_hues/test

With no --checkpoint/--model the CLIP is the one `make demo` trains (runs/demo/train).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curation.settings import ConfigError, add_arguments, from_namespace

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    from apps.coop.config import CoopEvalConfig, CoopTrainConfig

    parser = argparse.ArgumentParser(
        prog="python -m apps.coop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("task", help="write the 12-colour fine-grained task as an ImageFolder")
    p.add_argument("--out", type=Path, required=True, help="folder to write (one sub-folder per colour)")
    p.add_argument("--per-class", type=int, default=32, help="pictures per class (default 32)")
    p.add_argument("--seed", type=int, default=0, help="use different seeds for train and test folders")
    p.add_argument("--size", type=int, default=64, help="side in px (default 64, the demo CLIP's input)")
    p.add_argument("--outline-fraction", type=float, default=0.5, help="share drawn as pen outlines")
    p = sub.add_parser("train", help="learn prompts on a few shots per class (CLIP frozen)")
    add_arguments(p, CoopTrainConfig)
    p = sub.add_parser(
        "evaluate", help="accuracy of learned prompts vs the hand prompt and the 80-prompt ensemble"
    )
    add_arguments(p, CoopEvalConfig)
    return parser


def _load_clip(cfg):
    import torch

    from apps.clip import load_app_clip

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return load_app_clip(cfg.checkpoint, cfg.model, cfg.pretrained, cfg.device)


def run(argv: list[str] | None = None) -> int:
    from apps.clip import ClipLoadError
    from apps.coop.config import CoopEvalConfig, CoopTrainConfig
    from apps.coop.data import CoopDataError
    from apps.coop.prompts import PromptError
    from training.evaluate import EvalError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "task":
            from apps.coop.task import write_hue_folder

            out = write_hue_folder(args.out, args.per_class, args.seed, args.size, args.outline_fraction)
            print(f"wrote 12 colour classes x {args.per_class} pictures to {out}")
        elif args.command == "train":
            from apps.coop.train import train

            cfg = from_namespace(CoopTrainConfig, args)
            summary = train(cfg, _load_clip(cfg))
            print(
                f"{summary['method']}: {summary['pictures']} pictures of {len(summary['classes'])} classes, "
                f"final loss {summary['final_loss']:.3f}, train top-1 {100 * summary['final_train_top1']:.1f} %, "
                f"{summary['seconds']} s"
            )
            print(f"prompts: {summary['prompts_path']}")
        else:
            from apps.coop.evaluate import evaluate, table

            cfg = from_namespace(CoopEvalConfig, args)
            report = evaluate(cfg, _load_clip(cfg))
            print(table(report))
            print(f"report: {report['report_path']}")
    except (ConfigError, ClipLoadError, CoopDataError, PromptError, EvalError, ValueError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(run())
