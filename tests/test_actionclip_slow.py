"""The actionclip experiment of docs/actionclip.md at full size (`make test-slow`).

It writes its own videos, features and heads. The CLIP: `ACTIONCLIP_CHECKPOINT` when set (the docs
use the demo model, runs/demo/train), else a randomly initialised clip-small saved here. The
direction and fine-tuning criteria hold for both; the held-out names criterion needs a text encoder
whose features of unseen label names carry their words, so it is checked with a given checkpoint only.

    ACTIONCLIP_CHECKPOINT=runs/demo/train python -m pytest -q -m slow tests/test_actionclip_slow.py -s
"""

from __future__ import annotations

import os

import pytest
import torch

from apps.actionclip.demo import ActionDemoConfig, run_experiment
from models import create_model, load_clip, save_checkpoint

pytestmark = pytest.mark.slow
DOCS_CONFIG = ActionDemoConfig(test_per_action=16, seeds=3)


def test_actionclip_experiment(tmp_path, one_thread):
    checkpoint = os.environ.get("ACTIONCLIP_CHECKPOINT")
    if not checkpoint:
        torch.manual_seed(0)
        checkpoint = save_checkpoint(tmp_path / "clip-small.pt", create_model("clip-small")[0], "clip-small")
    summary = run_experiment(tmp_path / "run", load_clip(checkpoint), DOCS_CONFIG, progress=False)
    print("\n" + (tmp_path / "run" / "report.md").read_text())
    top1 = summary["top1"]
    direction = {name: row["direction-dependent"]["mean"] for name, row in top1.items()}
    assert direction["transf"] >= direction["meanP"] + 20, direction
    assert top1["transf"]["all"]["min"] > top1["zero-shot"]["all"]["mean"]
    if os.environ.get("ACTIONCLIP_CHECKPOINT"):
        held = summary["held_out"]
        assert held["top1"]["transf"]["mean"] >= 2 * held["chance"], held
