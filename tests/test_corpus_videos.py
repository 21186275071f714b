"""Synthetic videos in corpus mode: real emoji pictures moving, named by their real names (issue #13).

Uses the small corpus slice (openmoji, @tabler/icons, emojibase-data; fetched once into the corpus cache):
training videos in openmoji-color, held-out videos in openmoji-black (the full corpus: twitter).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from apps.clip4clip.demo import VideoDemoConfig, run_video_demo
from common.errors import UserError
from models import load_clip
from testbed.corpus import PACKAGES, SMALL, default_cache, fetch, is_cached, load_corpus
from testbed.corpus_data import EMOJI_STYLES, Split
from testbed.corpus_videos import VIDEO_CONCEPTS, CorpusSprites, VideoWorldError
from testbed.videos import MOTIONS, SynthConfig, generate_synthetic_set

SPLIT = Split(held_out_style="openmoji-black", train_styles=("openmoji-color", "tabler-outline"))
CONFIG = SynthConfig(world="corpus", concepts=6, n_train=16, n_test_pairs=3, fps=4, event_seconds=1.5, seed=1)


@pytest.fixture(scope="module")
def corpus():
    fetch(SMALL, progress=False)
    cached = load_corpus(require=SMALL)  # may hold more packages: keep the small slice's styles only
    return cached.restricted(
        cached.concepts, [s for s in cached.styles if s.startswith(("openmoji", "tabler"))]
    )


@pytest.fixture(scope="module")
def sprites(corpus):
    return CorpusSprites(corpus, SPLIT, CONFIG.concepts)


@pytest.fixture(scope="module")
def made(sprites, tmp_path_factory):
    return generate_synthetic_set(tmp_path_factory.mktemp("emoji_videos"), CONFIG, sprites)


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _ink(frame: np.ndarray) -> np.ndarray:
    return (255 - frame.astype(np.int16)).max(axis=2) > 40  # not the white background


def _crop(image: np.ndarray, side: int = 24) -> np.ndarray:
    """The picture's drawn part (its bounding box on white), resized to side x side, as floats."""
    ys, xs = np.nonzero(_ink(image))
    box = image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return np.asarray(Image.fromarray(box).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)


def _closest(frame: np.ndarray, sprites: CorpusSprites, side: int) -> tuple[str, str]:
    """Which (concept name, style) picture of the world the frame shows: nearest drawn part."""
    seen = _crop(frame)
    styles = [SPLIT.held_out_style, "openmoji-color"]
    return min(
        ((n, s) for n in sprites.names for s in styles),
        key=lambda ns: float(np.mean((_crop(sprites.sprite(ns[0], ns[1], side)) - seen) ** 2)),
    )


def test_videos_show_the_named_emoji_in_order_moving_as_captioned(made, sprites):
    per_event = int(round(CONFIG.event_seconds * CONFIG.fps))
    captions = json.loads(made.captions_path.read_text())["sentences"]
    assert json.loads((made.videos_dir.parent / "videos.json").read_text()) == made.events
    for video_id in made.train_ids[:6] + made.test_ids:
        frames = _frames(made.videos_dir / f"{video_id}.mp4")  # real H.264, decoded by PyAV
        assert frames.shape == (2 * per_event, CONFIG.size, CONFIG.size, 3)
        events = made.events[video_id]
        for k, event in enumerate(events):
            segment = frames[k * per_event : (k + 1) * per_event]
            # the right picture (concept and style) in the right half of the video
            assert _closest(segment[per_event // 2], sprites, int(CONFIG.size * CONFIG.sprite)) == (
                event["name"],
                event["style"],
            ), video_id
            # moving the captioned way: the drawn part's centre goes from one side to the other
            ys0, xs0 = np.nonzero(_ink(segment[0]))
            ys1, xs1 = np.nonzero(_ink(segment[-1]))
            dx, dy = MOTIONS[event["motion"]]
            moved = (xs1.mean() - xs0.mean(), ys1.mean() - ys0.mean())
            travel = CONFIG.size * (1 - CONFIG.sprite - 0.04)  # the frame less the largest picture
            assert moved[0] * dx + moved[1] * dy > 0.8 * travel, (video_id, event, moved)
            assert abs(moved[0] * dy) + abs(moved[1] * dx) < 2, (video_id, event, moved)  # straight
        first, second = events
        order = [c["caption"] for c in captions if c["video_id"] == video_id and c["kind"] == "order"]
        assert order and all(
            text.index(first["name"]) < text.index(second["name"])
            and f"{first['name']} mov" in text
            and f"{second['name']} mov" in text
            for text in order
        )
        assert f"{first['name']} moves {first['motion']}, then" in order[0]
        assert f"{second['name']} moves {second['motion']}" in order[0]
        free = [c["caption"] for c in captions if c["video_id"] == video_id and c["kind"] == "free"]
        assert free and all(first["name"] in t and second["name"] in t and "then" not in t for t in free)


def test_real_concepts_styles_and_held_out_pairs(made, sprites, corpus):
    names = {e["name"] for events in made.events.values() for e in events}
    assert names == set(sprites.names) and len(names) == CONFIG.concepts
    for events in made.events.values():
        for e in events:
            concept = corpus.concepts[e["concept"]]
            assert (
                concept.kind == "emoji" and concept.name == e["name"] and not SPLIT.is_held_out(e["concept"])
            )
    assert {e["style"] for v in made.train_ids for e in made.events[v]} == {"openmoji-color"}
    assert {e["style"] for v in made.test_ids for e in made.events[v]} == {SPLIT.held_out_style}
    pair = lambda v: frozenset(e["name"] for e in made.events[v])  # noqa: E731
    assert not {pair(v) for v in made.test_ids} & {pair(v) for v in made.train_ids}
    for a, b in zip(made.test_ids[0::2], made.test_ids[1::2]):  # order-swapped twins
        assert made.events[b] == made.events[a][::-1]


def test_too_many_concepts_and_an_unfetched_corpus_are_one_line_errors(corpus, tmp_path):
    with pytest.raises(VideoWorldError, match=r"--concepts 999: .* ask for 2 to \d+") as raised:
        CorpusSprites(corpus, SPLIT, 999)
    assert isinstance(raised.value, UserError) and "\n" not in str(raised.value)
    with pytest.raises(UserError, match="sprite 1.5: a picture of 0.2 to 0.9 of the frame"):
        generate_synthetic_set(
            tmp_path / "big", SynthConfig(world="corpus", sprite=1.5), CorpusSprites(corpus, SPLIT, 4)
        )
    with pytest.raises(VideoWorldError, match="held-out style 'twitter'"):
        CorpusSprites(corpus, Split(), 4)  # the small slice has no twitter pictures
    env = {**os.environ, "CLIP_CORPUS_DIR": str(tmp_path / "empty")}
    done = subprocess.run(
        [sys.executable, "-m", "apps.clip4clip", "synth", str(tmp_path / "out"), "--world", "corpus"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "python -m testbed.corpus fetch" in lines[0], done.stderr


def test_demo_runs_on_emoji_videos(sprites, tiny_checkpoint, tmp_path):
    clip = load_clip(tiny_checkpoint)
    config = VideoDemoConfig(
        world="corpus", concepts=6, n_train=8, n_test_pairs=2, epochs=1, batch_size=4, max_frames=4
    )
    summary = run_video_demo(tmp_path, clip, config, sprites)
    assert summary["config"]["world"] == "corpus"
    assert set(summary["heads"]) == {"meanP", "seqTransf"}
    report = (tmp_path / "report.md").read_text()
    assert "held-out videos in openmoji-black" in report and "frog" in report
    assert (tmp_path / "synthetic" / "videos.json").exists() and (tmp_path / "search.html").exists()


@pytest.mark.skipif(
    not all(is_cached(PACKAGES[n], default_cache()) for n in PACKAGES),
    reason="the full corpus is not fetched",
)
def test_every_video_concept_is_in_every_emoji_style_and_trained():
    corpus = load_corpus(require=list(PACKAGES))
    sprites = CorpusSprites(corpus, Split(), len(VIDEO_CONCEPTS))
    assert sprites.names == VIDEO_CONCEPTS
    assert sprites.train_styles == [s for s in EMOJI_STYLES if s != "twitter"]
