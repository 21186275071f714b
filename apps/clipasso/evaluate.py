"""Are the sketches recognisable? Sketch each test picture, then ask the same CLIP which source each sketch
is closest to, and compare each sketch's loss with random strokes'. Writes a contact sheet too.

    python -m apps.clipasso.evaluate                     # the demo model, 16 strokes, contact sheet 8/16/32
    python -m apps.clipasso.evaluate --checkpoint runs/demo/train --strokes 16 --sheet-strokes 8 16 32
    python -m apps.clipasso.evaluate --checkpoint RUN_A --judge-checkpoint RUN_B   # also ask a second CLIP

The drawing CLIP judging its own sketches can be fooled by strokes that only it reads (adversarial
to that one model), so `--judge-checkpoint` asks a second CLIP (e.g. the same recipe, another seed).

Test pictures: skimage's astronaut, chelsea, coffee, rocket and horse, and generated coloured shapes
(testbed/shapes.py, the demo model's world). Pass criterion (issue 7): own source closest for >= 80 %.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from apps.cli import ModelChoice
from apps.clipasso.augment import AugmentConfig, apply_views, sample_views
from apps.clipasso.cli import add_loss_arguments, loss_from_args
from apps.clipasso.losses import ClipImageEncoder, sketch_losses, total_loss
from apps.clipasso.optimize import SketchConfig, optimisation_canvas, sketch_picture, to_model_input
from apps.clipasso.picture import Picture, load_picture
from apps.clipasso.render import black_strokes, render
from apps.clipasso.saliency import xdog_edges
from common.errors import UserError, one_line
from models import LoadedCLIP

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "horse")
SHAPES = ("red circle", "blue square", "green triangle", "yellow star", "purple heart")


def evaluation_pictures(
    folder: Path, photos: tuple[str, ...] = PHOTOS, shapes: tuple[str, ...] = SHAPES
) -> list[Path]:
    """Write the test pictures as PNG files into `folder` and return their paths."""
    import skimage.data

    from testbed.shapes import render_shape_image

    paths = []
    for name in photos:
        array = getattr(skimage.data, name)()
        image = Image.fromarray(array if array.dtype == np.uint8 else (array * 255).astype(np.uint8))
        paths.append(folder / f"{name}.png")
        image.convert("RGB").save(paths[-1])
    for i, cls in enumerate(shapes):
        paths.append(folder / f"{cls.replace(' ', '_')}.png")
        render_shape_image(cls, np.random.default_rng(i), 224).convert("RGB").save(paths[-1])
    return paths


# Recognisable Tabler outline icons among the corpus's held-out concepts (5 % by a hash of the id; checked).
CORPUS_ICONS = ("anchor", "umbrella", "spider", "burger", "ladder")


def corpus_pictures(folder: Path, icons: tuple[str, ...] = CORPUS_ICONS, size: int = 224) -> list[Path]:
    """The 5 skimage photos and held-out Tabler line icons of the emoji corpus as PNG files in `folder`."""
    from common.errors import UserError
    from testbed.corpus import load_corpus
    from testbed.corpus_data import Split

    paths = evaluation_pictures(folder, PHOTOS, shapes=())
    corpus = load_corpus(require=("@tabler/icons",))
    outline = corpus.by_style("tabler-outline")
    split = Split()
    for name in icons:
        cid = f"icon:{name.replace(' ', '-')}"
        if cid not in outline:
            raise UserError(f"--icons: no Tabler outline icon {name!r} in the corpus; pick another name")
        if not split.is_held_out(cid):
            raise UserError(f"--icons: {name!r} is not a held-out concept (it is trained on); pick another")
        image = corpus.image(outline[cid], size)
        if image is None:
            raise UserError(f"--icons: {name!r} failed to render (see the corpus's render-failures.json)")
        paths.append(folder / f"icon_{name.replace(' ', '_')}.png")
        image.convert("RGB").save(paths[-1])
    return paths


def edge_drawing(rgb: torch.Tensor) -> torch.Tensor:
    """The picture's XDoG edges in black on white (3, H, W): a tracing to compare the sketches with."""
    edges = xdog_edges(rgb.permute(1, 2, 0).numpy())
    return torch.tensor(1.0 - edges, dtype=torch.float32).expand(3, -1, -1)


def embed(encoder: ClipImageEncoder, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(to_model_input(images.to(encoder.mean.device), encoder.image_size))[0]


def plain_loss(
    encoder: ClipImageEncoder, picture: Picture, points: torch.Tensor, config: SketchConfig, width: float
) -> float:
    """The sketch loss of strokes on the plain view plus fixed random views (same for every sketch)."""
    grids = sample_views(AugmentConfig(), encoder.image_size, torch.Generator().manual_seed(1234))
    size = optimisation_canvas(config.size, encoder.image_size)
    scale = size / config.size
    with torch.no_grad():
        widths, colors = black_strokes(points, width)
        canvas = render(points * scale, widths * scale, colors, size)
        target = to_model_input(picture.rgb[None], encoder.image_size)
        sketch_f = encoder(apply_views(to_model_input(canvas, encoder.image_size), grids).flatten(0, 1))
        target_f = encoder(apply_views(target, grids).flatten(0, 1))
        g, s = sketch_losses(sketch_f, target_f, grids.shape[0], encoder.config)
        return float(total_loss(g, s, encoder.config).mean())


def random_points(count: int, size: int, seed: int) -> torch.Tensor:
    """Random strokes of the same kind as the initialisation, anywhere on the canvas."""
    rng = np.random.default_rng(seed)
    start = rng.random((count, 1, 2)) * size
    steps = (rng.random((count, 3, 2)) - 0.5) * 0.05 * size
    return torch.tensor(np.concatenate([start, start + np.cumsum(steps, 1)], 1)[None], dtype=torch.float32)


@dataclass(frozen=True)
class SheetGrid:
    """Where a contact sheet puts things: square `cell`-pixel tiles `pad` pixels apart, under a `title` strip
    of column headers. `contact_sheet` draws with it; `verdict_sheet` writes into its cells."""

    cell: int = 160
    pad: int = 6
    title: int = 18

    def origin(self, row: int, column: int) -> tuple[int, int]:
        """The top-left pixel of the tile at (row, column)."""
        step = self.cell + self.pad
        return self.pad + column * step, self.title + row * step

    def size(self, rows: int, columns: int) -> tuple[int, int]:
        """(width, height) of a sheet of rows x columns tiles."""
        right, bottom = self.origin(rows, columns)
        return right, bottom + self.pad


def contact_sheet(
    rows: list[tuple[str, list[np.ndarray]]], header: list[str], cell: int = 160
) -> Image.Image:
    """A grid: one row per picture, one column per image (source, then sketches)."""
    grid = SheetGrid(cell)
    sheet = Image.new("RGB", grid.size(len(rows), len(header)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(header):
        draw.text((grid.origin(0, c)[0], 3), text, fill="black")
    for r, (_, images) in enumerate(rows):
        for c, image in enumerate(images):
            x, y = grid.origin(r, c)
            sheet.paste(Image.fromarray(image).resize((cell, cell), Image.Resampling.LANCZOS), (x, y))
            draw.rectangle([x - 1, y - 1, x + cell, y + cell], outline=(200, 200, 200))
    return sheet


def verdict_sheet(
    sources: np.ndarray,
    sketches: np.ndarray,
    report: dict,
    sketch_label: str,
    judge_label: str = "judge",
    cell: int = 128,
) -> Image.Image:
    """Source, sketch, its XDoG edge map, and which source each scorer finds the sketch closest to.

    `sources`/`sketches`: uint8 [N, H, W, 3] in `report["images"]` order; the drawer's verdict is
    `nearest_source`, a judge's (when present) `judge_nearest_source`. The verdicts are written into the
    fourth, blank column.
    """
    rows = []
    for i, record in enumerate(report["images"]):
        rgb = torch.tensor(sources[i]).permute(2, 0, 1).float() / 255
        edges = (edge_drawing(rgb).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        rows.append((record["image"], [sources[i], sketches[i], edges, np.full_like(edges, 255)]))
    header = ["source", sketch_label, "XDoG edges (reference)", "nearest source"]
    sheet = contact_sheet(rows, header, cell=cell)
    grid, verdict_column = SheetGrid(cell), len(header) - 1
    draw = ImageDraw.Draw(sheet)
    for r, record in enumerate(report["images"]):
        lines = [record["image"]]
        for label, key in ((judge_label, "judge_nearest_source"), ("drawer", "nearest_source")):
            if key in record:
                mark = "ok" if record[key] == record["image"] else "no:"
                lines += [f"{label}: {mark}", f"  {record[key]}"]
        x, y = grid.origin(r, verdict_column)
        draw.multiline_text((x + 4, y + 30), "\n".join(lines), fill="black")
    return sheet


def evaluate(
    loaded: LoadedCLIP,
    pictures: list[Path],
    config: SketchConfig,
    sheet_strokes: tuple[int, ...] = (8, 16, 32),
    progress: bool = True,
    judge: LoadedCLIP | None = None,
) -> tuple[dict, list[tuple[str, list[np.ndarray]]]]:
    """Sketch every picture with each stroke count; report recognisability at `config.strokes`.

    With `judge`, a second CLIP that did not draw the sketches also says which source each is closest to.
    """
    encoder = ClipImageEncoder(loaded, config.loss)
    counts = sorted(set(sheet_strokes) | {config.strokes})
    sources, sketches, rows, per_image = [], {n: [] for n in counts}, [], []
    for path in tqdm(pictures, desc="pictures", disable=not progress):
        picture = load_picture(path, config.size, config.mask)
        sources.append(picture.rgb)
        row = [(picture.rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)]
        record = {"image": path.stem}
        for n in counts:
            cfg = replace(config, strokes=n)
            result = sketch_picture(picture, loaded, cfg, progress=False)
            s = result.sketch
            with torch.no_grad():
                image = render(s.points[None], s.widths[None], s.colors[None], config.size)[0]
            sketches[n].append(image)
            if n in sheet_strokes:
                row.append((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            if n == config.strokes:
                width = result.stroke_width
                record["sketch_loss"] = plain_loss(encoder, picture, s.points[None], cfg, width)
                record["random_loss"] = float(
                    np.mean(
                        [
                            plain_loss(encoder, picture, random_points(n, config.size, seed), cfg, width)
                            for seed in range(3)
                        ]
                    )
                )
                record["steps"], record["seconds"] = result.steps, round(result.seconds, 1)
        rows.append((path.stem, row))
        per_image.append(record)

    source_emb = embed(encoder, torch.stack(sources))
    sketch_emb = embed(encoder, torch.stack(sketches[config.strokes]))
    similarity = sketch_emb @ source_emb.T
    nearest = similarity.argmax(1).tolist()
    for i, record in enumerate(per_image):
        record["nearest_source"] = per_image[nearest[i]]["image"]
        record["own_source_closest"] = nearest[i] == i
        record["beats_random"] = record["sketch_loss"] < record["random_loss"]
    own = float(np.mean([r["own_source_closest"] for r in per_image]))
    # Reference: can this CLIP recognise line drawings at all? Each source's own edge map, same question.
    edge_emb = embed(encoder, torch.stack([edge_drawing(rgb) for rgb in sources]))
    edge_own = float((((edge_emb @ source_emb.T).argmax(1)) == torch.arange(len(sources))).float().mean())
    report = {
        "model": loaded.model_name,
        "checkpoint": loaded.path,
        "strokes": config.strokes,
        "own_source_closest_fraction": own,
        "beats_random_fraction": float(np.mean([r["beats_random"] for r in per_image])),
        "edge_map_own_source_fraction": edge_own,
        "passes": own >= 0.8 and all(r["beats_random"] for r in per_image),
        "images": per_image,
        "similarity": [[round(v, 4) for v in row] for row in similarity.tolist()],
    }
    if judge is not None:
        judge_encoder = ClipImageEncoder(judge, config.loss)
        judged = (
            embed(judge_encoder, torch.stack(sketches[config.strokes]))
            @ embed(judge_encoder, torch.stack(sources)).T
        )
        judge_nearest = judged.argmax(1).tolist()
        for i, record in enumerate(per_image):
            record["judge_nearest_source"] = per_image[judge_nearest[i]]["image"]
        report["judge_checkpoint"] = judge.path
        report["judge_own_source_closest_fraction"] = float(
            np.mean([n == i for i, n in enumerate(judge_nearest)])
        )
        # The same reference for the judge: does it match each source's own edge map to the source?
        judge_sources = embed(judge_encoder, torch.stack(sources))
        judge_edges = embed(judge_encoder, torch.stack([edge_drawing(rgb) for rgb in sources]))
        report["judge_edge_map_own_source_fraction"] = float(
            ((judge_edges @ judge_sources.T).argmax(1) == torch.arange(len(sources))).float().mean()
        )
        judge_encoder.close()
    encoder.close()  # its hooks off the model: the caller's later forwards feed no stale list
    return report, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m apps.clipasso.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint or run directory (default: the demo model)"
    )
    parser.add_argument("--model", help="open_clip model name instead of a checkpoint")
    parser.add_argument("--pretrained", help="open_clip pretrained tag or weights file")
    parser.add_argument(
        "--judge-checkpoint",
        type=Path,
        help="a second CLIP (checkpoint or run directory) that also scores the sketches it did not draw",
    )
    parser.add_argument(
        "--strokes", type=int, default=16, help="strokes for the recognisability test (default: 16)"
    )
    parser.add_argument(
        "--sheet-strokes", type=int, nargs="*", default=[8, 16, 32], help="contact sheet columns"
    )
    parser.add_argument("--iterations", type=int, default=SketchConfig.iterations)
    parser.add_argument("--seeds", type=int, default=SketchConfig.seeds)
    add_loss_arguments(parser)
    parser.add_argument("--photos", nargs="*", default=list(PHOTOS), help="skimage.data pictures")
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), help="generated shape classes")
    parser.add_argument("--out", type=Path, default=Path("runs/clipasso_eval"), help="report directory")
    parser.add_argument("--sheet", type=Path, default=Path("docs/img/clipasso_contact_sheet.png"))
    args = parser.parse_args(argv)
    config = SketchConfig(
        strokes=args.strokes, iterations=args.iterations, seeds=args.seeds, loss=loss_from_args(args)
    )
    try:
        config.validate()
        loaded = ModelChoice(args.checkpoint, args.model, args.pretrained).load()
        judge = ModelChoice(args.judge_checkpoint, None, None).load() if args.judge_checkpoint else None
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pictures = evaluation_pictures(Path(tmp), tuple(args.photos), tuple(args.shapes))
        report, rows = evaluate(loaded, pictures, config, tuple(args.sheet_strokes), judge=judge)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    args.sheet.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, ["source"] + [f"{n} strokes" for n in args.sheet_strokes]).save(args.sheet)
    for r in report["images"]:
        print(
            f"{r['image']:>16}: nearest {r['nearest_source']:>16}  loss {r['sketch_loss']:.4f} vs random "
            f"{r['random_loss']:.4f}"
        )
    print(
        f"own source closest: {report['own_source_closest_fraction']:.0%} (goal >= 80 %); "
        f"beats random strokes: {report['beats_random_fraction']:.0%}; the sources' own XDoG edge maps: "
        f"{report['edge_map_own_source_fraction']:.0%}; contact sheet: {args.sheet}; "
        f"report: {args.out / 'report.json'}"
    )
    if judge is not None:
        print(
            f"own source closest by the judge CLIP ({args.judge_checkpoint}): "
            f"{report['judge_own_source_closest_fraction']:.0%}"
        )
    return 0 if report["passes"] else 1


if __name__ == "__main__":
    sys.exit(main())
