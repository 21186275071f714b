"""Benchmark of apps.coop: learned prompts vs the hand prompt and the 80-prompt ensemble on a hard task.

Task: the 12 fine-grained colour classes of `testbed.hues` (6 named colours + the 6 between them,
random shape, half drawn as pen outlines), a training pool of 32 pictures per class and a separate
test set of 50 per class, all at 64 px. CLIP (default: the demo model) is frozen, so every picture is
encoded once and cached; every run below trains only prompts on the cached features.

1. Accuracy vs shots: CoOp (M context vectors, unified, class token at the end, random init) at
   1/2/4/8/16 shots per class and 3 seeds (different shots drawn, different init), against the
   hand prompt "a photo of a {}." and open_clip's 80 ImageNet templates (both through
   `training.evaluate`), and a linear probe on the same shots.
2. Base-to-new (CoCoOp's protocol): train on the first 6 classes (16 shots), test on those and on
   the 6 others, whose names were never trained; harmonic mean H of the two accuracies.

    python bench/coop_shots.py --checkpoint /work/main/runs/demo/train        # about 5 minutes on 2 busy cores
    python bench/coop_shots.py --seeds 0 --shots 1,16                          # quicker look

Writes docs/img/coop_shots.png, docs/img/coop_task.png (the task's pictures) and docs/coop_results.json, and prints the markdown tables of docs/coop.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def _pct(s: dict) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def tables(curve: dict, b2n: dict) -> str:
    zs = curve["zero_shot"]
    lines = [
        "| shots per class | " + " | ".join(str(k) for k in curve["shots"]) + " |",
        "|---" * (len(curve["shots"]) + 1) + "|",
        f"| {curve['method']} (M={curve['spec']['n_ctx']}) | "
        + " | ".join(_pct(v["learned"]) for v in curve["shots"].values())
        + " |",
        "| linear probe (same shots) | "
        + " | ".join(_pct(v["linear_probe"]) for v in curve["shots"].values())
        + " |",
        f'| zero-shot, hand prompt "a photo of a {{}}." | {100 * zs["single"]:.1f} |'
        + " |" * (len(curve["shots"]) - 1),
        f"| zero-shot, 80-prompt ensemble | {100 * zs['ensemble']:.1f} |" + " |" * (len(curve["shots"]) - 1),
        "",
        f"Base-to-new, 16 shots of the base classes ({', '.join(b2n['base_classes'])}); new: "
        f"{', '.join(b2n['new_classes'])}.",
        "",
        "| method | base | new | H |",
        "|---|---|---|---|",
    ]
    for name, m in b2n["methods"].items():
        lines.append(f"| {name} | {_pct(m['base'])} | {_pct(m['new'])} | {_pct(m['hm'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=Path("/work/main/runs/demo/train"))
    parser.add_argument(
        "--work", type=Path, default=REPO / "data" / "coop_bench", help="task folders + feature cache"
    )
    parser.add_argument("--shots", default="1,2,4,8,16")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the shots curve")
    parser.add_argument(
        "--b2n-seeds", default="0,1,2,3,4", help="seeds of base-to-new (new-class accuracy varies a lot)"
    )
    parser.add_argument("--ctx", type=int, default=8, help="CoOp's context vectors for the shots curve")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "img" / "coop_shots.png")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "coop_results.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from apps.coop.data import folder_features
    from apps.coop.prompts import PromptSpec
    from apps.coop.study import base_to_new, plot, shots_curve
    from common.atomic import atomic_write_json
    from models import load_clip
    from testbed.hues import hue_sheet, write_hue_folder

    torch.set_num_threads(args.threads)
    shots = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    b2n_seeds = [int(s) for s in args.b2n_seeds.split(",")]
    started = time.perf_counter()
    clip = load_clip(args.checkpoint)
    for name, per_class, seed in (("train", 32, 0), ("test", 50, 1)):
        if not (args.work / name).is_dir():
            write_hue_folder(args.work / name, per_class, seed=seed, size=clip.image_size)
    train = folder_features(clip, args.work / "train", args.work / "cache")
    test = folder_features(clip, args.work / "test", args.work / "cache")
    print(f"CLIP {clip.identity}; {len(train.labels)} training-pool and {len(test.labels)} test pictures")

    print("accuracy vs shots:")
    curve = shots_curve(clip, train, test, PromptSpec(n_ctx=args.ctx), shots, seeds, progress=True)
    print("base-to-new:")
    specs = {
        "CoOp (M=4, 'a photo of a')": PromptSpec(n_ctx=4, ctx_init="a photo of a"),
        f"CoOp (M={args.ctx}, random init)": PromptSpec(n_ctx=args.ctx),
        "CoCoOp (M=4, 'a photo of a')": PromptSpec(n_ctx=4, ctx_init="a photo of a", cocoop=True),
    }
    b2n = base_to_new(clip, train, test, specs, shots=16, seeds=b2n_seeds, progress=True)
    elapsed = time.perf_counter() - started

    args.png.parent.mkdir(parents=True, exist_ok=True)
    plot(curve, b2n, args.png, title=f"12 fine-grained colours, CLIP {clip.model_name} frozen")
    hue_sheet(seed=0, size=clip.image_size).save(args.png.with_name("coop_task.png"))
    result = {
        "command": "python bench/coop_shots.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "checkpoint": clip.identity,
        "machine": f"{platform.machine()}, torch threads {args.threads}",
        "seconds": round(elapsed, 1),
        "shots_curve": curve,
        "base_to_new": b2n,
    }
    atomic_write_json(args.json, result)
    print()
    print(tables(curve, b2n))
    best = curve["shots"][max(curve["shots"])]["learned"]["mean"]
    print(
        f"CoOp at {max(curve['shots'])} shots minus ensemble: "
        f"{100 * (best - curve['zero_shot']['ensemble']):+.1f} points; total {elapsed:.0f} s"
    )
    print(f"wrote {args.png} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
