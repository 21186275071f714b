"""Issue 7's "recognisable sketches" criterion (README: own source closest for >= 80 % of 10 pictures).

Self-sufficient: trains its own pair of CLIPs with the demo's recipe (clip-small, training/presets/demo.toml,
fewer steps) on generated coloured shapes, one in five a pen outline as on the loopback web. Seed 0 draws
the sketches and scores them, as `python -m apps.clipasso.evaluate` does; seed 1, which never saw the
sketches being optimised, scores them too, so a sketch that only fools the model that drew it fails.
Slow: two 300-step trainings and 10 sketches (see the timeout below for the measured time).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from apps.clipasso.evaluate import evaluate, evaluation_pictures
from apps.clipasso.optimize import SketchConfig
from models import load_clip
from testbed.datasets import make_shape_dataset
from tests.benchscripts import load_bench
from training.config import preset
from training.train import train

# The demo preset with fewer steps: 300 steps reach 99 % zero-shot top-1 on the shapes (preset's notes).
STEPS = 300


def _train(data: Path, out: Path, seed: int) -> Path:
    cfg = preset(
        "demo",
        data=[data],
        out=out,
        steps=STEPS,
        seed=seed,
        threads=1,
        progress=False,
        checkpoint_every=STEPS,
        keep_checkpoints=1,
    )
    return train(cfg).checkpoint


@pytest.mark.slow
@pytest.mark.timeout(3600)  # about 10 minutes on 2 idle cores; a busy shared machine is several times slower
def test_sketches_are_closest_to_their_own_source_and_beat_random_strokes(tmp_path):
    torch.set_num_threads(1)
    data = make_shape_dataset(tmp_path / "shapes", n=3600, seed=0, size=64, outline_fraction=0.2)
    drawer = load_clip(_train(data, tmp_path / "seed0", seed=0))
    judge = load_clip(_train(data, tmp_path / "seed1", seed=1))
    (tmp_path / "pictures").mkdir()
    pictures = evaluation_pictures(tmp_path / "pictures")
    report, _ = evaluate(
        drawer, pictures, SketchConfig(strokes=16, seeds=2), sheet_strokes=(), progress=False, judge=judge
    )
    print(
        "\n"
        + json.dumps(
            {
                "own_source_closest (drawing CLIP, seed 0)": report["own_source_closest_fraction"],
                "own_source_closest (judge CLIP, seed 1)": report["judge_own_source_closest_fraction"],
                "beats_random": report["beats_random_fraction"],
                "edge_map_own_source (drawing CLIP)": report["edge_map_own_source_fraction"],
                "edge_map_own_source (judge CLIP)": report["judge_edge_map_own_source_fraction"],
                "nearest": {
                    r["image"]: [r["nearest_source"], r["judge_nearest_source"]] for r in report["images"]
                },
            },
            indent=1,
        )
    )
    assert report["own_source_closest_fraction"] >= 0.8, report["images"]
    # The judge never saw the sketches being optimised; measured 4 of 10 (chance: 1 of 10) on 2026-12-01, so
    # the README's 9 of 10 is the drawing CLIP's figure. The judge must at least clearly beat chance.
    assert report["judge_own_source_closest_fraction"] >= 0.3, report["images"]
    assert report["beats_random_fraction"] == 1.0, report["images"]


def test_the_corpus_bench_refuses_a_judge_trained_with_the_drawers_seed(tmp_path):
    """bench/clipasso_corpus.py: a judge with the drawer's seed is no second opinion; refused before drawing."""
    import subprocess
    import sys

    for name in ("drawer", "judge"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"seed": 3}))
    bench = Path(__file__).resolve().parents[1] / "bench" / "clipasso_corpus.py"
    args = ["--drawer", tmp_path / "drawer", "--judge", tmp_path / "judge", "--out", tmp_path / "out"]
    done = subprocess.run(
        [sys.executable, bench, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    assert "trained with seed 3, as the drawer" in done.stderr and "another seed" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_corpus_bench_trains_a_judge_with_the_drawers_recipe_and_another_seed(tmp_path, one_thread):
    """--judge-like-drawer: the judge's training is the drawer's own (read back from its config.json) but for
    the seed and the run directory; refused, before any drawing, when the drawer's data changed since."""
    import dataclasses
    import subprocess
    import sys

    from common.errors import UserError
    from common.settings import to_dict
    from training.config import TrainConfig

    data = make_shape_dataset(tmp_path / "data", n=48, seed=0, size=32, shards=2, row_group_size=24)
    drawer_cfg = TrainConfig(
        data=[data], out=tmp_path / "drawer", model="clip-tiny", steps=2, batch_size=8, workers=0, warmup=1,
        lr=1e-3, threads=1, progress=False, captions=("caption",), generic_captions=0.1, seed=0,
    )  # fmt: skip
    train(drawer_cfg)
    bench = load_bench("clipasso_corpus")

    judge_cfg = bench.drawers_recipe(tmp_path / "drawer", tmp_path / "judge", 5)
    expected = dataclasses.replace(drawer_cfg, out=tmp_path / "judge", seed=5)
    assert to_dict(judge_cfg) == to_dict(expected)

    # the drawer's data changes: the judge would be another recipe
    shard = sorted((data / "shards").glob("*.parquet"))[0]
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"][shard.name]["sha256"] = "0" * 64
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="trained on other data"):
        bench.drawers_recipe(tmp_path / "drawer", tmp_path / "judge", 5)
    args = ["--drawer", tmp_path / "drawer", "--judge", tmp_path / "judge", "--judge-like-drawer"]
    done = subprocess.run(
        [sys.executable, bench.__file__, *map(str, args), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "trained on other data" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "judge").exists()
