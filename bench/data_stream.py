"""A training data reader's time a batch: what it keeps between epochs, and the batch-wise tensor stage.

    python bench/data_stream.py --rounds 3 -- --config training/presets/corpus.toml \\
        --model clip-corpus-ctx16 --generic-captions 0.02 --captions caption \\
        --captions caption_alt_text_description+page_title --captions caption_attribution_description \\
        --captions page_title --data runs/demo/data/round1

Reads the training command's data the way one DataLoader worker does (`training.data.ShardStream` in
this process, 1 thread), four ways, alternating which goes first each round:
- `default`: as training reads it now (`--keep-data-mb`, 512 MB: decoded pictures and token rows kept
  for the next epochs; the crop box drawn from the row's random.Random; ToTensor and Normalize on the
  whole batch);
- `keep nothing`: `keep_mb=0`, the rest as `default`;
- `torch crop`: as `default` but torchvision's RandomResizedCrop draws the box through torch's generator,
  seeded and restored for each picture (how the reader cropped before);
- `before`: `keep_mb=0` and the transform run whole on each picture, torch's crop (the first reader).
Each side first reads `--warm` batches (by default 2 epochs, so what is kept is in place), then times
`--batches` more; the batches timed must be equal on the sides that crop alike (`default` and `keep nothing`;
`torch crop` and `before`; the bench fails otherwise). Prints the
milliseconds a batch of each side, per round, and the median ratios to `before` with their spread.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.transforms import Compose

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.settings import add_arguments, from_namespace  # noqa: E402
from models import create_model  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import ShardStream, find_row_groups  # noqa: E402
from training.train import augmentation, model_image_size  # noqa: E402

SIDES = ("default", "keep nothing", "torch crop", "before")
SAME = {"keep nothing": "default", "torch crop": "before"}  # sides whose batches must be equal


def read(
    cfg: TrainConfig, refs: list, model_parts: tuple, side: str, warm: int, batches: int
) -> tuple[float, list]:
    """(seconds a batch over the timed ones, those batches) of one side; `model_parts`: create_model's."""
    model, transform, _, tokenizer = model_parts
    if side == "before":
        whole = transform
        transform = lambda image: whole(image)  # noqa: E731 - not a Compose: no batch stage
    elif side == "torch crop":  # the crop hidden from the reader's own: torch's generator draws the box
        crop, *rest = transform.transforms
        transform = Compose([lambda image: crop(image), *rest])
    stream = ShardStream(
        refs,
        transform,
        tokenizer,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        image_size=model_image_size(model),
        captions=cfg.captions,
        generic_captions=cfg.generic_captions,
        keep_mb=cfg.keep_data_mb if side in ("default", "torch crop") else 0,
    )
    it = iter(stream)
    for _ in range(warm):
        next(it)
    start = time.perf_counter()
    timed = [next(it) for _ in range(batches)]
    return (time.perf_counter() - start) / batches, timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each side once a round")
    parser.add_argument("--warm", type=int, help="batches read before the timed ones (default: 2 epochs)")
    parser.add_argument("--batches", type=int, default=40, help="batches timed a side")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then training.train's options")
    ns = parser.parse_args(argv)
    train_parser = argparse.ArgumentParser(prog="training.train options")
    train_parser.add_argument("--config", type=Path)
    add_arguments(train_parser, TrainConfig)
    targs = train_parser.parse_args(
        ["--out", "-", *(a for a in ns.train_args if a != "--")]
    )  # nothing written
    cfg = from_namespace(TrainConfig, targs, toml_path=targs.config)
    torch.set_num_threads(1)  # a DataLoader worker's
    refs = [ref for p in cfg.data for ref in find_row_groups([p], None, cfg.captions)]
    model_parts = create_model(cfg.model, aug_cfg=augmentation(cfg))
    rows = sum(r.num_rows for r in refs)
    warm = ns.warm if ns.warm is not None else 2 * math.ceil(rows / cfg.batch_size)
    print(f"{rows} rows, batch {cfg.batch_size}: {warm} batches read first, {ns.batches} timed a side")
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(ns.rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        seen = {}
        for side in order:
            seconds, seen[side] = read(cfg, refs, model_parts, side, warm, ns.batches)
            times[side].append(seconds)
            print(f"round {r} {side}: {1000 * seconds:.1f} ms a batch", flush=True)
        for side, other in SAME.items():
            for a, b in zip(seen[side], seen[other]):
                if not (torch.equal(a.images, b.images) and torch.equal(a.texts, b.texts)):
                    print(f"round {r}: the {side!r} batches differ from the {other!r} ones")
                    return 1
    for side in SIDES[:-1]:
        ratios = [a / b for a, b in zip(times[side], times["before"])]
        print(
            f"{side}: median {1000 * statistics.median(times[side]):.1f} ms a batch, ratio to before "
            f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} rounds)"
        )
    print(
        f"before: median {1000 * statistics.median(times['before']):.1f} ms a batch; the batches equal "
        "where the sides crop alike"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
