"""Splits of the emoji/icon corpus, training shards and the evaluation sets of `training.evaluate`.

    python -m testbed.corpus_data --out data/corpus --train-styles google,apple,facebook,openmoji-color,openmoji-black

writes, from the cached corpus (`python -m testbed.corpus fetch` first):
- `train/`: shards (`curation.shards.write_shard`, what `curation build` leaves) of every training
  style's picture of every concept that is not held out; the caption is made as `--caption` says;
- `eval/concepts/`: zero-shot image folder of the HELD-OUT STYLE (never trained on): one picture per
  evaluation concept (`--eval-concepts`, default 100, drawn among concepts present in every emoji style);
- `eval/categories/`: the held-out style's pictures of every trained emoji concept, one folder per emoji
  group named as people say it ("animals and nature", ...): category-level zero-shot; its
  `subclasses.json` lists each group's concept names (`training.evaluate` then also scores a group
  through the names of what it holds);
- `eval/unseen_concepts/`: the held-out style's pictures of held-out concepts (never trained in any style);
- `eval/probe/`: the evaluation concepts in every emoji style (a linear probe needs >= 3 per class);
- `eval/retrieval/`: shards of the held-out style's evaluation pictures with their name as caption;
- `split.json`: which styles and concepts went where.

The split is deterministic: a concept is held out when a hash of its id falls under
`--held-out-fraction`, so adding packages does not move the others.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import re
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from common.atomic import atomic_write_json
from common.errors import UserError, run_cli
from curation.shards import write_shard
from testbed.corpus import DATASOURCE_STYLES, Concept, Corpus, Picture, load_corpus

EMOJI_STYLES = (*DATASOURCE_STYLES, "openmoji-color", "openmoji-black")
CAPTION_MODES = ("name", "name+section", "name+tags", "mixed", "phrased", "grouped", "grouped4", "named4")
# How people write about a picture; deliberately not the evaluation's prompt "a photo of a {}."
PHRASES = (
    "{}",
    "a picture of a {}",
    "an emoji of a {}",
    "a drawing of the {}",
    "{}, in colour",
    "a small {} icon",
)
# How a page puts a picture in its group (mode "grouped"); {g} is the group as people say it.
GROUP_PHRASES = (
    "{}, from {g}",
    "{} ({g})",
    "{}, one of the {g} emoji",
    "{} in {g}",
)


def readable_group(group: str) -> str:
    """The group as people say it: "animals & nature" -> "animals and nature" (captions and class names)."""
    return re.sub(r"\s*&\s*", " and ", group).strip()


class SplitError(UserError, ValueError):
    """The corpus cannot give the split asked for (missing style, too few concepts)."""


@dataclass(frozen=True)
class Split:
    held_out_style: str = "twitter"
    train_styles: tuple[str, ...] = (
        "google",
        "apple",
        "facebook",
        "openmoji-color",
        "openmoji-black",
        "tabler-outline",
    )
    held_out_fraction: float = 0.05
    eval_concepts: int = 100
    seed: int = 0

    def is_held_out(self, concept_id: str) -> bool:
        return zlib.crc32(concept_id.encode()) % 10_000 < self.held_out_fraction * 10_000


@dataclass
class SplitPlan:
    split: Split
    train: list[Picture] = field(default_factory=list)
    eval_concepts: list[str] = field(default_factory=list)
    unseen_concepts: list[str] = field(default_factory=list)
    categories: dict[str, str] = field(default_factory=dict)  # trained emoji concept -> group


def plan_split(corpus: Corpus, split: Split) -> SplitPlan:
    """Which pictures train, which concepts evaluate; checks that the corpus has what the split names.

    Restrict `corpus` first (`Corpus.restricted`) for a small slice (tests).
    """
    styles = set(corpus.styles)
    missing = [s for s in (split.held_out_style, *split.train_styles) if s not in styles]
    if missing:
        raise SplitError(
            f"the corpus has no pictures of style(s) {missing} (it has {sorted(styles)}); "
            "run `python -m testbed.corpus fetch` for all packages or choose other styles"
        )
    if split.held_out_style in split.train_styles:
        raise SplitError(f"style {split.held_out_style!r} is both held out and trained on")
    plan = SplitPlan(split)
    plan.train = [
        p for p in corpus.pictures if p.style in split.train_styles and not split.is_held_out(p.concept)
    ]
    held = corpus.by_style(split.held_out_style)
    emoji_styles = [s for s in EMOJI_STYLES if s in styles]
    everywhere = set(held)
    for style in emoji_styles:
        everywhere &= set(corpus.by_style(style))
    seen_names: set[str] = set()
    candidates = []
    for cid in sorted(everywhere):
        name = corpus.concepts[cid].name
        # one class per name, and names a folder can hold
        if not split.is_held_out(cid) and name not in seen_names and "/" not in name:
            seen_names.add(name)
            candidates.append(cid)
    if len(candidates) < split.eval_concepts:
        raise SplitError(
            f"only {len(candidates)} concepts are in every emoji style; --eval-concepts {split.eval_concepts} is too many"
        )
    plan.eval_concepts = sorted(random.Random(split.seed).sample(candidates, split.eval_concepts))
    plan.unseen_concepts = sorted(
        cid for cid in held if split.is_held_out(cid) and "/" not in corpus.concepts[cid].name
    )
    plan.categories = {
        cid: corpus.concepts[cid].group
        for cid in held
        if not split.is_held_out(cid) and corpus.concepts[cid].group
    }
    return plan


# --- captions --------------------------------------------------------------------------------------


def captions(concept: Concept, mode: str, style: str = "") -> list[str]:
    """The training captions of a concept's picture: one per mode, three for "grouped".

    grouped: every picture is written once per caption, so that each epoch mixes them:
    (1) the name in a phrasing (as "phrased", without the section words), (2) the name in another
    phrasing with its group as people say it ("an emoji of a frog, from animals and nature"), (3) its
    subgroup and group without the name ("a drawing of the animal reptile, from animals and nature").
    The group words sit in two of three captions, and (3) teaches the text tower sentences without the
    name, nearer the category-level zero-shot prompts ("a photo of a animals and nature.").
    grouped4: the same and a fourth caption naming the group alone ("an emoji of a animals and nature").
    named4: grouped4 with (3) naming the concept too ("cat face, animal mammal, animals and nature"): the
    name in 3 of 4 captions, the group in 3 of 4, alone in 1.
    """
    if mode not in ("grouped", "grouped4", "named4"):
        return [caption(concept, mode, style)]
    h = zlib.crc32(f"{style}/{concept.id}".encode())
    out = [PHRASES[h % len(PHRASES)].format(concept.name)]
    if concept.group:
        g = readable_group(concept.group)
        named = PHRASES[(h // 7 + 1) % len(PHRASES)].format(concept.name)
        out.append(GROUP_PHRASES[(h // 11) % len(GROUP_PHRASES)].format(named, g=g))
        if mode == "named4":
            out.append(", ".join(dict.fromkeys(p for p in (concept.name, concept.subgroup, g) if p)))
        elif concept.subgroup and concept.subgroup != concept.group:
            sub = PHRASES[(h // 13 + 2) % len(PHRASES)].format(concept.subgroup)
            out.append(GROUP_PHRASES[(h // 17 + 1) % len(GROUP_PHRASES)].format(sub, g=g))
        if mode in ("grouped4", "named4"):
            out.append(PHRASES[(h // 19 + 3) % len(PHRASES)].format(g))
    return out


def caption(concept: Concept, mode: str, style: str = "") -> str:
    """The training caption of a concept's picture.

    name: "cat face"; name+section: "cat face, animal mammal, animals & nature" (the reference
    description with the section and page titles the web page gives it); name+tags: the name and
    up to 4 of its CLDR keywords; mixed: name or name+section, chosen per picture (by a hash of
    concept and style), so the bare name of the zero-shot prompts and the category words both occur;
    phrased: the mixed caption inside one of a few phrasings people use (`PHRASES`), so that prompts
    like "a photo of a {}." are not the first sentences the text tower ever reads;
    grouped: the first of `captions` (the others are written as more rows).
    """
    if mode in ("grouped", "grouped4", "named4"):
        return captions(concept, mode, style)[0]
    if mode == "phrased":
        phrase = PHRASES[zlib.crc32(f"{style}/{concept.id}".encode()) % len(PHRASES)]
        return phrase.format(caption(concept, "mixed", style))
    if mode == "mixed":
        return caption(
            concept, "name" if zlib.crc32(f"{concept.id}/{style}".encode()) % 2 else "name+section"
        )
    if mode == "name":
        return concept.name
    if mode == "name+section":
        parts = [concept.name, concept.subgroup, concept.group]
        return ", ".join(dict.fromkeys(p for p in parts if p))
    if mode == "name+tags":
        tags = [t for t in concept.tags if t not in concept.name][:4]
        return concept.name + (f" ({', '.join(tags)})" if tags else "")
    raise SplitError(f"--caption {mode!r}: choose one of {', '.join(CAPTION_MODES)}")


# --- writers ---------------------------------------------------------------------------------------


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def _folder_name(text: str) -> str:
    return re.sub(r"[\\/:*?\"<>|\s]+", "_", text.strip()).strip("_") or "unnamed"


def _rows(corpus: Corpus, pictures: Sequence[Picture], size: int, caption_of, desc: str, progress: bool):
    rows = []
    for picture in tqdm(pictures, desc=desc, unit="pic", disable=not progress, leave=False):
        image = corpus.image(picture, size)
        if image is None:
            continue  # recorded in the corpus's render failures
        data = _png(image)
        texts = caption_of(picture)
        for text in [texts] if isinstance(texts, str) else texts:
            rows.append(
                {
                    "key": f"{len(rows):09d}",
                    "url": f"corpus://{picture.style}/{picture.concept}",
                    "caption": text,
                    "status": "success",
                    "width": size,
                    "height": size,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "jpg": data,  # the column name img2dataset uses for image bytes, whatever the format
                    "source": picture.style,
                }
            )
    return rows


def write_shards(root: Path, name: str, rows: list[dict], per_shard: int = 4096) -> None:
    """`rows` (shuffled in place, seed 0) as shards NAME-00000, ... of `per_shard` rows under `root`."""
    random.Random(0).shuffle(rows)
    for s in range(0, len(rows), per_shard):
        write_shard(root, f"{name}-{s // per_shard:05d}", pa.Table.from_pylist(rows[s : s + per_shard]))


def _write_folder(
    corpus: Corpus, root: Path, items: list[tuple[str, Picture]], size: int, progress: bool
) -> int:
    written = 0
    for label, picture in tqdm(
        items, desc=f"write {root.name}", unit="pic", disable=not progress, leave=False
    ):
        image = corpus.image(picture, size)
        if image is None:
            continue
        folder = root / _folder_name(label)
        folder.mkdir(parents=True, exist_ok=True)
        name = _folder_name(f"{picture.style}-{picture.concept}") + ".png"
        image.save(folder / name)
        written += 1
    return written


def write_datasets(
    corpus: Corpus,
    out: Path,
    split: Split = Split(),
    caption_mode: str = "phrased",
    size: int = 64,
    progress: bool = True,
    train: bool = True,
) -> dict:
    """Training shards and evaluation folders under `out` (see the module docstring); returns split.json."""
    caption(next(iter(corpus.concepts.values())), caption_mode)  # unknown modes fail before any work
    out = Path(out)
    plan = plan_split(corpus, split)
    counts: dict[str, int] = {}
    if train:
        rows = _rows(
            corpus,
            plan.train,
            size,
            lambda p: captions(corpus.concepts[p.concept], caption_mode, p.style),
            "train",
            progress,
        )
        write_shards(out / "train", "corpus", rows)
        counts["train"] = len(rows)
    held = corpus.by_style(split.held_out_style)
    ev = out / "eval"
    name = {cid: corpus.concepts[cid].name for cid in corpus.concepts}
    counts["concepts"] = _write_folder(
        corpus, ev / "concepts", [(name[c], held[c]) for c in plan.eval_concepts], size, progress
    )
    counts["categories"] = _write_folder(
        corpus,
        ev / "categories",
        [(readable_group(g), held[c]) for c, g in sorted(plan.categories.items())],
        size,
        progress,
    )
    # category level through the names of what each group holds (training.evaluate's subclass classifier)
    subclasses: dict[str, set[str]] = {}
    for cid, group in plan.categories.items():
        subclasses.setdefault(readable_group(group), set()).add(name[cid])
    if counts["categories"]:  # "subclasses.json": the file training.evaluate.SUBCLASSES_FILE names
        table = {g: sorted(n) for g, n in sorted(subclasses.items())}
        atomic_write_json(ev / "categories" / "subclasses.json", table)
    counts["unseen_concepts"] = _write_folder(
        corpus, ev / "unseen_concepts", [(name[c], held[c]) for c in plan.unseen_concepts], size, progress
    )
    probe = []
    for style in EMOJI_STYLES:
        by = corpus.by_style(style)
        probe += [(name[c], by[c]) for c in plan.eval_concepts if c in by]
    counts["probe"] = _write_folder(corpus, ev / "probe", probe, size, progress)
    retrieval = _rows(
        corpus, [held[c] for c in plan.eval_concepts], size, lambda p: name[p.concept], "retrieval", progress
    )
    write_shards(ev / "retrieval", "heldout", retrieval)
    counts["retrieval"] = len(retrieval)
    summary = {
        "split": asdict(split),
        "caption": caption_mode,
        "size": size,
        "counts": counts,
        "eval_concepts": {c: name[c] for c in plan.eval_concepts},
        "unseen_concepts": {c: name[c] for c in plan.unseen_concepts},
        "render_failures": len(corpus.failures),
    }
    atomic_write_json(out / "split.json", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.corpus_data",
        description="Write training shards and zero-shot / retrieval / probe sets from the cached emoji corpus, "
        "with one whole style and a set of concepts held out.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (train/, eval/, split.json)")
    parser.add_argument(
        "--caption", default="phrased", choices=CAPTION_MODES,
        help="training caption (default: phrased, the best measured; see docs/corpus.md)",
    )  # fmt: skip
    parser.add_argument("--size", type=int, default=64, help="picture side in px (default: 64)")
    parser.add_argument(
        "--held-out-style", default="twitter", help="style never trained on (default: twitter)"
    )
    parser.add_argument(
        "--train-styles",
        default=",".join(Split().train_styles),
        help="comma-separated styles to train on (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-concepts", type=int, default=100, help="concepts in the zero-shot set (default: 100)"
    )
    parser.add_argument(
        "--held-out-fraction", type=float, default=0.05, help="share of concepts never trained on"
    )
    parser.add_argument("--cache", type=Path, default=None, help="corpus cache (default: $CLIP_CORPUS_DIR)")
    parser.add_argument("--eval-only", action="store_true", help="write only the evaluation sets")
    args = parser.parse_args(argv)

    def body() -> None:
        split = Split(
            held_out_style=args.held_out_style,
            train_styles=tuple(s for s in args.train_styles.split(",") if s),
            held_out_fraction=args.held_out_fraction,
            eval_concepts=args.eval_concepts,
        )
        corpus = load_corpus(args.cache, require=())
        summary = write_datasets(corpus, args.out, split, args.caption, args.size, train=not args.eval_only)
        print(json.dumps(summary["counts"]), f"render failures: {summary['render_failures']}")
        print(f"wrote {args.out}/split.json")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
