"""`python -m apps.coop {task,train,evaluate}`: learned prompts (CoOp, CoCoOp) for a frozen CLIP.

    python -m apps.coop task --out data/coop_hues/train --per-class 32 --seed 0
    python -m apps.coop task --out data/coop_hues/test --per-class 50 --seed 1
    python -m apps.coop train --data data/coop_hues/train --shots 16 --ctx 8 --out runs/coop \\
        --checkpoint runs/demo/train
    python -m apps.coop train --data data/coop_hues/train --classes base --cocoop --init "a photo of a" \\
        --out runs/cocoop
    python -m apps.coop evaluate --prompts runs/coop --data data/coop_hues/test

With no --checkpoint/--model the CLIP is the one `make demo` trains (runs/demo/train).
`train` writes RUN/prompts.pt (atomically, after every input was checked) and RUN/train.json;
`evaluate` scores the learned prompts beside the hand prompt "a photo of a {}." and open_clip's
80 ImageNet templates through training.evaluate, and writes a JSON report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apps.cli import add_model_arguments, model_choice, set_threads
from apps.coop.config import CoopEvalConfig, CoopTrainConfig
from common.errors import run_cli
from common.settings import add_arguments, from_namespace


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.coop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("task", help="write the 12-colour fine-grained task (testbed.hues) as an ImageFolder")
    p.add_argument("--out", type=Path, required=True, help="folder to write (one sub-folder per colour)")
    p.add_argument("--per-class", type=int, default=32, help="pictures per class (default 32)")
    p.add_argument("--seed", type=int, default=0, help="use different seeds for train and test folders")
    p.add_argument("--size", type=int, default=64, help="side in px (default 64, the demo CLIP's input)")
    p.add_argument("--outline-fraction", type=float, default=0.5, help="share drawn as pen outlines")
    p = sub.add_parser("train", help="learn prompts on a few shots per class (CLIP frozen)")
    add_arguments(p, CoopTrainConfig)
    add_model_arguments(p)
    p = sub.add_parser(
        "evaluate", help="accuracy of learned prompts vs the hand prompt and the 80-prompt ensemble"
    )
    add_arguments(p, CoopEvalConfig)
    add_model_arguments(p)
    return parser


def _task(args: argparse.Namespace) -> None:
    from apps.coop.data import CoopDataError
    from testbed.hues import write_hue_folder

    try:
        out = write_hue_folder(args.out, args.per_class, args.seed, args.size, args.outline_fraction)
    except ValueError as exc:  # testbed's generators say what is wrong with a size or count
        raise CoopDataError(str(exc)) from exc
    print(f"wrote 12 colour classes x {args.per_class} pictures to {out}")


def _train(args: argparse.Namespace) -> None:
    from apps.coop.train import train

    cfg = from_namespace(CoopTrainConfig, args)
    set_threads(args.threads)
    summary = train(cfg, model_choice(args).load())
    print(
        f"{summary['method']}: {summary['pictures']} pictures of {len(summary['classes'])} classes, "
        f"final loss {summary['final_loss']:.3f}, train top-1 {100 * summary['final_train_top1']:.1f} %, "
        f"{summary['seconds']} s"
    )
    print(f"prompts: {summary['prompts_path']}")


def _evaluate(args: argparse.Namespace) -> None:
    from apps.coop.evaluate import evaluate, table

    cfg = from_namespace(CoopEvalConfig, args)
    set_threads(args.threads)
    report = evaluate(cfg, model_choice(args).load())
    print(table(report))
    print(f"report: {report['report_path']}")


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    body = {"task": _task, "train": _train, "evaluate": _evaluate}[args.command]
    return run_cli(lambda: body(args), interrupted=f"apps.coop {args.command}: interrupted; nothing written")


if __name__ == "__main__":
    sys.exit(run())
