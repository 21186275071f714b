"""The demo's short CoOp run: one seed of the accuracy-vs-shots curve and of base-to-new, in about a minute.

    from apps.coop.demo import run_demo
    figures = run_demo("runs/demo/coop", "runs/demo/train")

Writes OUT/task/{train,test} (the 12-colour task), OUT/coop_shots.png and OUT/coop.json; returns the
headline numbers and paths for the demo report. The full curve (3 seeds) is bench/coop_shots.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from apps.coop.data import folder_features
from apps.coop.prompts import PromptSpec
from apps.coop.study import base_to_new, plot, shots_curve
from common.atomic import atomic_write_json
from models import DEFAULT_CHECKPOINT, load_clip
from testbed.hues import write_hue_folder


def run_demo(out_dir: Path | str, checkpoint: Path | str | None = None, progress: bool = False) -> dict:
    """CoOp at 1, 4 and 16 shots and base-to-new CoOp vs CoCoOp, one seed each, with a frozen CLIP."""
    started = time.perf_counter()
    out = Path(out_dir)
    clip = load_clip(checkpoint, default=DEFAULT_CHECKPOINT)
    for name, per_class, seed in (("train", 16, 0), ("test", 30, 1)):
        if not (out / "task" / name).is_dir():
            write_hue_folder(
                out / "task" / name, per_class, seed=seed, size=clip.image_size, progress=progress
            )
    train = folder_features(clip, out / "task" / "train", out / "cache", progress)
    test = folder_features(clip, out / "task" / "test", out / "cache", progress)
    curve = shots_curve(clip, train, test, PromptSpec(n_ctx=8), (1, 4, 16), (0,), progress=progress)
    specs = {
        "CoOp": PromptSpec(n_ctx=4, ctx_init="a photo of a"),
        "CoCoOp": PromptSpec(n_ctx=4, ctx_init="a photo of a", cocoop=True),
    }
    b2n = base_to_new(clip, train, test, specs, shots=16, seeds=(0,), progress=progress)
    png = out / "coop_shots.png"
    plot(curve, b2n, png, title="demo: 12 fine-grained colours, one seed")
    figures = {
        "coop_png": str(png),
        "zero_shot_hand_top1": curve["zero_shot"]["single"],
        "zero_shot_ensemble_top1": curve["zero_shot"]["ensemble"],
        "coop_top1_by_shots": {k: v["learned"]["mean"] for k, v in curve["shots"].items()},
        "base_to_new_hm": {k: v["hm"]["mean"] for k, v in b2n["methods"].items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(out / "coop.json", {"figures": figures, "shots_curve": curve, "base_to_new": b2n})
    return figures
