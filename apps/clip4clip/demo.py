"""The video part of `make demo`: synthetic videos -> train a head -> index -> search, with figures.

Runs on the CLIP the demo trained on coloured shapes (or any CLIP given), so it measures the
issue's acceptance figure: the share of held-out captions whose video `search` returns in its
top 5 of an index of every synthetic video. Writes under OUT: the synthetic set, the head runs
(head.pt, loss.png), the index, one result page (search.html) and report.md / report.json.

`VideoDemoConfig(world="corpus")`: the videos show real emoji from the cached corpus instead of
shapes (`testbed.corpus_videos`): run it with a CLIP trained on the corpus (`make demo`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from testbed.corpus_videos import CorpusSprites

from apps.cli import torch_threads
from apps.clip4clip.heads import HeadConfig
from apps.clip4clip.index import IndexOptions, build_index
from apps.clip4clip.metrics import format_table
from apps.clip4clip.search import open_index, search, write_html
from apps.clip4clip.train import TrainConfig, evaluate_head, load_video_captions, train_head
from apps.clip4clip.video import FrameSampling
from testbed.videos import SynthConfig, generate_synthetic_set


@dataclass(frozen=True)
class VideoDemoConfig:
    # Values measured to separate order on a small CLIP (tests/test_clip4clip_order.py, docs/benchmarks.md, "Video search and CLIP4Clip heads").
    n_train: int = 192  # videos, in order-swapped pairs
    n_test_pairs: int = 16
    size: int = 64
    head: str = "seqTransf"
    layers: int = 2
    epochs: int = 80
    batch_size: int = 32
    lr_head: float = 3e-3  # higher than CLIP4Clip's 1e-4: a small CLIP and a few hundred steps
    lr_clip: float = 1e-3  # the text encoder must learn "then": it never saw order in its captions
    weight_decay: float = 0.01
    max_frames: int = 8
    fps: float = 4.0
    seed: int = 0
    # Heads and a small CLIP are tiny matrices: one thread avoids pool spin-waits (5x faster on 2 busy cores).
    threads: int | None = 1
    world: Literal["shapes", "corpus"] = field(
        default="shapes",
        metadata={
            "help": "shapes: coloured shapes moving (a CLIP of the shapes world); corpus: real emoji moving, "
            "trained on the corpus split's training styles, tested on its held-out style (a corpus CLIP)"
        },
    )
    concepts: int = field(default=24, metadata={"help": "corpus world: how many emoji concepts"})
    sprite: float = field(
        default=0.7, metadata={"help": "corpus world: the picture's side as a fraction of the frame's"}
    )


def run_video_demo(
    out_dir: str | Path,
    clip,
    config: VideoDemoConfig = VideoDemoConfig(),
    sprites: CorpusSprites | None = None,
) -> dict:
    """Synthesise, train `config.head`, index the held-out videos, search every held-out caption.

    `config.world == "corpus"`: emoji videos from the cached corpus (`sprites`, default: the default split).
    """
    with torch_threads(config.threads):
        return _run(Path(out_dir), clip, config, sprites)


def _run(out: Path, clip, config: VideoDemoConfig, sprites: CorpusSprites | None) -> dict:
    started = time.perf_counter()
    made = generate_synthetic_set(
        out / "synthetic",
        SynthConfig(
            n_train=config.n_train,
            n_test_pairs=config.n_test_pairs,
            size=config.size,
            seed=config.seed,
            world=config.world,
            concepts=config.concepts,
            sprite=config.sprite,
        ),
        sprites,
    )
    sampling = FrameSampling(max_frames=config.max_frames, fps=config.fps)
    cache = out / "frame_cache"
    train_data = load_video_captions(
        made.videos_dir, made.captions_path, clip.model, clip.preprocess, sampling, "train", cache
    )
    test_data = load_video_captions(
        made.videos_dir, made.captions_path, clip.model, clip.preprocess, sampling, "test", cache
    )
    tables: dict[str, dict] = {}
    report = [f"# clip4clip demo ({clip.model_name}, {clip.identity})", ""]
    if made.events:
        styles = {
            split: sorted({e[0]["style"] for v, e in made.events.items() if v in ids})
            for split, ids in (("train", set(made.train_ids)), ("test", set(made.test_ids)))
        }
        names = sorted({e["name"] for events in made.events.values() for e in events})
        report += [
            f"Emoji videos from the corpus: {len(names)} concepts shown ({', '.join(names)}); training videos in "
            f"{', '.join(styles['train'])}, held-out videos in {', '.join(styles['test'])}.",
            "",
        ]
    heads = ["meanP", config.head] if config.head != "meanP" else ["meanP"]
    trained = None
    for name in heads:
        train_config = TrainConfig(
            head=HeadConfig(name, config.max_frames, config.layers),
            sampling=sampling,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr_head=config.lr_head,
            lr_clip=config.lr_clip,
            seed=config.seed,
            weight_decay=config.weight_decay,
        )
        result = train_head(clip, train_data, train_config, out / f"head_{name}")
        metrics = evaluate_head(result.clip, result.head, test_data, ("order", "free"))
        tables[name] = {kind: {d: m.as_dict() for d, m in per.items()} for kind, per in metrics.items()}
        for kind, per in metrics.items():
            report += [format_table(per, f"{name}, held-out captions of kind {kind!r}"), ""]
        if name == config.head:
            trained = out / f"head_{name}"

    # Two indexes: the held-out videos (the acceptance figure), and every synthetic video,
    # where the 192 training videos are distractors (harder). Both searched with each held-out caption.
    heldout_dir = out / "heldout_videos"
    heldout_dir.mkdir(exist_ok=True)
    for video_id in made.test_ids:
        link = heldout_dir / f"{video_id}.mp4"
        if not link.exists():
            link.symlink_to((made.videos_dir / f"{video_id}.mp4").resolve())
    options = IndexOptions(sampling, config.head, trained, cache)
    top5: dict[str, dict[str, float]] = {}
    for name, videos in (("heldout", heldout_dir), ("all", made.videos_dir)):
        build_index(videos, out / f"index_{name}", clip, options)
        index = open_index(out / f"index_{name}", clip)
        top5[name] = _top5_hit_rate(index, test_data.captions)
        report += [
            f"## index_{name} ({len(index.videos)} videos) + search with held-out captions",
            "",
            "| captions | top-5 hit rate (%) |",
            "|---|---|",
            *[f"| {kind} | {value:.1f} |" for kind, value in top5[name].items()],
            "",
        ]
    query = test_data.captions[0].text
    write_html(out / "search.html", query, search(index, query, k=5), out / "index_all")
    summary = {
        "config": asdict(config),
        "seconds": round(time.perf_counter() - started, 1),
        "clip": clip.identity,
        "heads": tables,
        "search_top5": top5["heldout"],
        "search_top5_with_distractors": top5["all"],
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text("\n".join(report) + "\n")
    return summary


def _top5_hit_rate(index, captions) -> dict[str, float]:
    """Share (%) of captions whose own video is among the top 5 hits, per caption kind and overall."""
    found: dict[str, list[bool]] = {}
    for caption in captions:
        hits = search(index, caption.text, k=5)
        found.setdefault(caption.kind or "all", []).append(
            any(Path(h.path).stem == caption.video_id for h in hits)
        )
    rates = {kind: 100.0 * sum(v) / len(v) for kind, v in found.items()}
    rates["all"] = 100.0 * sum(sum(v) for v in found.values()) / sum(len(v) for v in found.values())
    return rates
