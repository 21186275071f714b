"""bench/curation_gain.py --world corpus, end to end on the small corpus slice: a loopback corpus web, the
curated and the unfiltered side built from its WIT TSV, both trained (a few steps) and evaluated on the
held-out style's concepts, groups and retrieval pairs; a rerun reuses the finished work.

The end-to-end pair is `slow` (`make test-slow`): two img2dataset runs, two trainings and four evaluations
took 4.4 min at load average 7-8 on the shared 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import read_toml
from testbed.corpus import SMALL, fetch

ROOT = Path(__file__).resolve().parents[1]
DEMO_TRAIN = read_toml(ROOT / "pipelines" / "params" / "demo_corpus.toml")["train"]
METRICS = {
    "zero-shot top-1 (single prompt)",
    "zero-shot top-1 (ensemble)",
    "zero-shot top-1 (class name alone)",
    "zero-shot top-5 (single prompt)",
    "zero-shot top-5 (ensemble)",
    "categories top-1 (single prompt)",
    "categories top-1 (ensemble)",
    "categories top-1 via concept names (single prompt)",
    "categories top-1 via concept names (7 prompts)",
    "image->text R@1",
    "text->image R@1",
}


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "curation_gain.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def gain(tmp_path_factory):
    fetch(SMALL, progress=False)  # a no-op once cached
    out = tmp_path_factory.mktemp("gain")
    args = (
        "--world",
        "corpus",
        "--small",
        "--pages",
        "10",
        "--steps",
        "2",
        "--batch-size",
        "16",
        "--seeds",
        "0",
        "--out",
        str(out),
    )
    done = _bench(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, args, done.stdout


@pytest.mark.slow
def test_both_sides_train_on_the_corpus_web_and_are_scored_on_the_held_out_style(gain):
    out, _, stdout = gain
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == "corpus"
    pairs = summary["pairs"]
    # the unfiltered side keeps every downloaded pair; curation rejects the web's junk and repeats
    assert summary["listed"] >= pairs["unfiltered"] > pairs["curated"] > 0
    for side in ("unfiltered", "curated"):
        figures = summary["results"][side]["0"]
        assert set(figures) == METRICS
        assert all(0 <= v <= 100 for v in figures.values())
        # both sides train as `make demo` does: its model, the same caption columns and generic captions
        config = json.loads((out / f"train_{side}_seed0" / "config.json").read_text())
        assert config["model"] == DEMO_TRAIN["model"] and config["captions"] == DEMO_TRAIN["captions"]
        assert config["generic_captions"] == DEMO_TRAIN["generic_captions"] > 0
    split = json.loads((out / "heldout" / "split.json").read_text())
    assert split["split"]["held_out_style"] == "openmoji-black"
    assert split["counts"]["concepts"] == 20 and split["counts"]["categories"] > 100
    assert "| categories top-1 (ensemble) |" in stdout and "curated - unfiltered per seed" in stdout


@pytest.mark.slow
def test_a_rerun_reuses_the_builds_trainings_and_evaluations(gain):
    out, args, _ = gain
    again = _bench(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trained in" not in again.stdout
    assert json.loads((out / "summary.json").read_text())["results"]["curated"]["0"]


def test_small_needs_the_corpus_world(tmp_path):
    done = _bench("--small", "--out", str(tmp_path / "x"))
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --small is a corpus slice: use it with --world corpus"
