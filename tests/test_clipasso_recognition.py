"""Issue 7's "recognisable sketches" criterion, with the project's trained demo model (slow: minutes on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from apps.clipasso.evaluate import evaluate, evaluation_pictures
from apps.clipasso.optimize import SketchConfig
from models import DEFAULT_CHECKPOINT, load_clip

REPO_CHECKPOINT = Path(__file__).resolve().parents[1] / DEFAULT_CHECKPOINT


@pytest.mark.slow
def test_sketches_are_closest_to_their_own_source_and_beat_random_strokes(tmp_path):
    if not REPO_CHECKPOINT.exists():
        pytest.skip(f"no demo model at {DEFAULT_CHECKPOINT}: run `make demo` first")
    torch.set_num_threads(1)
    loaded = load_clip(REPO_CHECKPOINT)
    pictures = evaluation_pictures(tmp_path)
    report, _ = evaluate(
        loaded, pictures, SketchConfig(strokes=16, seeds=2), sheet_strokes=(), progress=False
    )
    assert report["own_source_closest_fraction"] >= 0.8, report["images"]
    assert report["beats_random_fraction"] == 1.0, report["images"]
