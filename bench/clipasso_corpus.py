"""CLIPasso on 10 real pictures with CLIPs trained on the emoji corpus, judged by a second CLIP.

Issue 13's criterion: each 16-stroke sketch is closest to its own source (cosine of the sketch's image
embedding against the 10 sources' embeddings) for >= 8 of 10, scored by a SECOND CLIP of the same recipe
trained with another seed, which never saw the sketches being optimised. The drawing CLIP's own score is
reported beside it (it can be fooled by strokes only it reads).

Pictures: skimage's astronaut, chelsea, coffee, horse and rocket, and 5 Tabler line icons whose concepts are
held out of training (`testbed.corpus_data.Split`), rendered from the cached corpus at 224 px.

    python bench/clipasso_corpus.py --drawer runs/corpus-s0 --judge runs/corpus-s1
    python bench/clipasso_corpus.py --data data/corpus/train --drawer runs/corpus-s0 --judge runs/corpus-s1
        # trains a run directory first when it has no checkpoint (preset `corpus`, seeds 0 and 1)
    python bench/clipasso_corpus.py --drawer runs/demo/train --judge runs/x/demo_s1 --judge-like-drawer
        # trains the judge with the drawer's own recipe (its config.json) and --judge-seed (1)

Sketching needs only the drawer; the sketches are kept in OUT/sketches.npz, so `--reuse-sketches` scores them
again with another judge without drawing. Writes OUT/report.json (per picture: nearest source by the drawer and by the judge, losses, seconds) and the
contact sheet (default docs/img/clipasso-corpus.png: source, 16-stroke sketch, its XDoG edge map for
reference); prints one line per picture and the two fractions. Exit 0 when the judge's fraction is >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.clipasso.evaluate import CORPUS_ICONS  # noqa: E402
from common.errors import UserError  # noqa: E402


def drawers_recipe(drawer: Path, judge: Path, seed: int):
    """The drawer's own training, read back from its config.json, with `seed` and `judge` as the run
    directory: a second CLIP that differs from the drawer in the seed alone. Refused when the drawer's data
    is gone or changed since it trained (its recorded checksums): that would be another recipe."""
    from dataclasses import fields

    from common.settings import build
    from curation.shards import manifest_checksum
    from training.config import TrainConfig

    path = drawer / "config.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: cannot read the drawer's training settings ({exc}); train the judge with --data and --preset"
        ) from exc
    for data, checksum in recorded.get("data_checksums", {}).items():
        if manifest_checksum(data, recorded.get("data_versions", {}).get(data)) != checksum:
            raise UserError(
                f"{data}: the drawer {drawer} trained on other data (its shards are gone or changed since); "
                "rebuild them, or train the judge with --data and --preset"
            )
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in recorded.items() if k in names}
    return build(TrainConfig, {**values, "out": str(judge), "seed": seed, "resume": False}, str(path))


def has_checkpoint(run: Path) -> bool:
    return (run / "latest").exists() or any(run.glob("checkpoints/*.pt"))


def ensure_trained(run: Path, data: Path | None, seed: int, preset_name: str, recipe=None) -> Path:
    """`run` if it holds a checkpoint, else train it: with `recipe` (a TrainConfig, `drawers_recipe`) when
    given, else the preset on `data` (--data) with `seed`."""
    from training.config import preset
    from training.train import train

    if has_checkpoint(run):
        return run
    if recipe is not None:
        config, label = recipe, "the drawer's recipe"
    elif data is None:
        raise UserError(
            f"{run} has no checkpoint; pass --data TRAIN_SHARDS (or --judge-like-drawer) to train it (seed {seed})"
        )
    else:
        config, label = preset(preset_name, data=[data], out=run, seed=seed), f"preset {preset_name}"
    print(f"training {run} ({label}, seed {seed})", flush=True)
    train(config)
    return run


def run_seed(run: Path) -> int | None:
    """The training seed of a run directory (its config.json), None when it does not say."""
    try:
        return json.loads((run / "config.json").read_text()).get("seed")
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/clipasso_corpus.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--drawer", type=Path, required=True, help="run directory of the CLIP that draws")
    parser.add_argument("--judge", type=Path, required=True, help="run directory of the second CLIP")
    parser.add_argument("--data", type=Path, help="training shards, to train a run that has no checkpoint")
    parser.add_argument(
        "--preset", default="corpus-grouped", help="training preset for --data (default: corpus-grouped)"
    )
    parser.add_argument(
        "--judge-like-drawer",
        action="store_true",
        help="train a judge that has no checkpoint with the drawer's own recipe (its config.json) and --judge-seed",
    )
    parser.add_argument("--judge-seed", type=int, default=1, help="seed of a judge trained here (default 1)")
    parser.add_argument("--strokes", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=250, help="max optimisation steps per seed")
    parser.add_argument("--seeds", type=int, default=1, help="random starts per picture")
    parser.add_argument("--icons", nargs="*", default=list(CORPUS_ICONS), help="held-out Tabler icon names")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/clipasso-corpus"))
    parser.add_argument("--sheet", type=Path, default=Path("docs/img/clipasso-corpus.png"))
    parser.add_argument(
        "--reuse-sketches",
        action="store_true",
        help="score the sketches OUT/sketches.npz already holds (e.g. once the judge has trained) instead of drawing",
    )
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from apps.clipasso.evaluate import corpus_pictures, edge_drawing, embed, evaluate, verdict_sheet
    from apps.clipasso.losses import ClipImageEncoder, LossConfig
    from apps.clipasso.optimize import SketchConfig
    from common.errors import run_cli
    from models import load_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    result = {}

    def judge_scores(judge, sources: torch.Tensor, sketches: torch.Tensor) -> tuple[list[int], list[int]]:
        """Nearest source (by cosine) of each sketch and of each source's XDoG edge map, for `judge`."""
        encoder = ClipImageEncoder(judge, LossConfig())
        source_emb = embed(encoder, sources)
        sketch_nearest = (embed(encoder, sketches) @ source_emb.T).argmax(1).tolist()
        edges = torch.stack([edge_drawing(rgb) for rgb in sources])
        edge_nearest = (embed(encoder, edges) @ source_emb.T).argmax(1).tolist()
        encoder.close()
        return sketch_nearest, edge_nearest

    def body() -> None:
        drawer_seed, judge_seed = run_seed(args.drawer), run_seed(args.judge)
        if judge_seed is None and not has_checkpoint(args.judge):
            judge_seed = args.judge_seed  # the judge is trained here
        if drawer_seed is not None and drawer_seed == judge_seed:
            raise UserError(
                f"{args.judge} was trained with seed {judge_seed}, as the drawer {args.drawer}: "
                "the judge must be a CLIP trained with another seed"
            )
        judge_recipe = None
        if args.judge_like_drawer and not has_checkpoint(args.judge):
            # read before drawing (can it be followed?); the drawer trains first when it has no checkpoint
            ensure_trained(args.drawer, args.data, 0, args.preset)
            judge_recipe = drawers_recipe(args.drawer, args.judge, args.judge_seed)
        config = SketchConfig(strokes=args.strokes, iterations=args.iterations, seeds=args.seeds)
        config.validate()
        args.out.mkdir(parents=True, exist_ok=True)
        saved = args.out / "sketches.npz"
        if args.reuse_sketches and saved.exists():
            report = json.loads((args.out / "report.json").read_text())
            arrays = np.load(saved)
            names, source_u8, sketch_u8 = list(arrays["names"]), arrays["sources"], arrays["sketches"]
            print(f"reusing the sketches of {saved} (drawn by {report['checkpoint']})")
        else:
            drawer = load_clip(ensure_trained(args.drawer, args.data, 0, args.preset))
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                pictures = corpus_pictures(Path(tmp), tuple(args.icons))
                report, rows = evaluate(drawer, pictures, config, sheet_strokes=(args.strokes,))
            report["seconds"] = round(time.perf_counter() - started, 1)
            report["threads"] = torch.get_num_threads()
            names = [name for name, _ in rows]
            source_u8 = np.stack([images[0] for _, images in rows])
            sketch_u8 = np.stack([images[1] for _, images in rows])
            np.savez_compressed(saved, names=np.array(names), sources=source_u8, sketches=sketch_u8)
            (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        judge = load_clip(ensure_trained(args.judge, args.data, args.judge_seed, args.preset, judge_recipe))
        # read again: a run trained just now (--data) has its config.json only from here on
        drawer_seed, judge_seed = run_seed(args.drawer), run_seed(args.judge)
        judge_name = f"judge (seed {'?' if judge_seed is None else judge_seed})"
        drawer_name = f"drawer (seed {'?' if drawer_seed is None else drawer_seed})"

        def tensor(u8: np.ndarray) -> torch.Tensor:
            return torch.tensor(u8).permute(0, 3, 1, 2).float() / 255

        sources, sketches = tensor(source_u8), tensor(sketch_u8)
        sketch_nearest, edge_nearest = judge_scores(judge, sources, sketches)
        for i, record in enumerate(report["images"]):
            record["judge_nearest_source"] = names[sketch_nearest[i]]
        report["judge_checkpoint"] = judge.path
        report["judge_own_source_closest_fraction"] = float(
            np.mean([n == i for i, n in enumerate(sketch_nearest)])
        )
        report["judge_edge_map_own_source_fraction"] = float(
            np.mean([n == i for i, n in enumerate(edge_nearest)])
        )
        (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

        sheet = verdict_sheet(
            source_u8, sketch_u8, report, f"{args.strokes} strokes, {drawer_name}", judge_label=judge_name
        )
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.sheet)
        for r in report["images"]:
            print(
                f"{r['image']:>14}: drawer nearest {r['nearest_source']:>14}, judge nearest "
                f"{r['judge_nearest_source']:>14}  ({r['steps']} steps, {r['seconds']} s)"
            )
        print(
            f"own source closest: {judge_name} {report['judge_own_source_closest_fraction']:.0%}, "
            f"{drawer_name} {report['own_source_closest_fraction']:.0%} (goal: judge >= 80 %); "
            f"edge maps: judge {report['judge_edge_map_own_source_fraction']:.0%}, drawer "
            f"{report['edge_map_own_source_fraction']:.0%}; beats random strokes "
            f"{report['beats_random_fraction']:.0%}; sketching {report['seconds']} s; sheet {args.sheet}; "
            f"report {args.out / 'report.json'}"
        )
        result["passes"] = report["judge_own_source_closest_fraction"] >= 0.8

    code = run_cli(body)
    return code if code else (0 if result.get("passes") else 1)


if __name__ == "__main__":
    sys.exit(main())
