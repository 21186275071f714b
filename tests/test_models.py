"""The model layer: one loader for every kind of source, and an export plain open_clip opens."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from models import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    ModelError,
    create_model,
    export_local_dir,
    load_clip,
    save_checkpoint,
)

PROJECT_PACKAGES = (
    "common",
    "models",
    "curation",
    "training",
    "testbed",
    "apps",
    "pipelines",
    "bench",
    "tests",
)

# Runs in a fresh interpreter that never imports this project: only open_clip, as a user would.
PLAIN_OPEN_CLIP = """
import json, sys
import numpy as np, open_clip, torch
from PIL import Image
folder, image_path, out = sys.argv[1:4]
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
model.eval()
with torch.no_grad():
    image = model.encode_image(preprocess(Image.open(image_path)).unsqueeze(0))
    text = model.encode_text(tokenizer(["a red circle", "a blue square"]))
np.savez(out, image=image.numpy(), text=text.numpy())
ours = sorted(m for m in sys.modules if m.split(".")[0] in {PACKAGES})
print(json.dumps(ours))
"""


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """A clip-tiny with non-default weights (random init, seed 3), as a checkpoint and as an export."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(3)
    model = create_model("clip-tiny")[0]
    checkpoint = save_checkpoint(folder / "clip-tiny.pt", model, "clip-tiny")
    export = export_local_dir(model, "clip-tiny", folder / "export")
    image = folder / "picture.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(image)
    return checkpoint, export, image


def embeddings(clip, image_path):
    with torch.no_grad():
        image = clip.model.encode_image(clip.preprocess(Image.open(image_path)).unsqueeze(0))
        text = clip.model.encode_text(clip.tokenizer(["a red circle", "a blue square"]))
    return image.numpy(), text.numpy()


def test_export_opens_in_plain_open_clip_with_the_same_embeddings(trained_like, tmp_path):
    checkpoint, export, image = trained_like
    out = tmp_path / "plain.npz"
    script = PLAIN_OPEN_CLIP.replace("{PACKAGES}", repr(set(PROJECT_PACKAGES)))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(export), str(image), str(out)],
        cwd=tmp_path,  # not the repository: nothing of ours is importable by accident
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], "the export must not need this project"
    assert "initialized randomly" not in proc.stderr
    plain = np.load(out)
    ours_image, ours_text = embeddings(load_clip(checkpoint), image)
    assert np.abs(plain["image"] - ours_image).max() < 1e-5
    assert np.abs(plain["text"] - ours_text).max() < 1e-5
    # and our loader opens the export folder too, to the same numbers
    export_image, export_text = embeddings(load_clip(export), image)
    assert np.abs(export_image - ours_image).max() < 1e-5 and np.abs(export_text - ours_text).max() < 1e-5


def test_loading_a_checkpoint_does_not_claim_random_weights(trained_like, caplog):
    checkpoint, _, _ = trained_like
    with caplog.at_level(logging.WARNING):
        load_clip(checkpoint)
        load_clip(f"local-dir:{trained_like[1]}")
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]


def test_one_loader_for_names_and_clear_errors(tmp_path):
    assert load_clip(model="clip-tiny").model_name == "clip-tiny"
    with pytest.raises(ModelError, match="unknown model"):
        load_clip(model="no-such-model")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_clip(tmp_path / "missing")
    with pytest.raises(ModelError, match="make demo"):
        load_clip(default=tmp_path / "no-demo-here")
    assert DEFAULT_CHECKPOINT.name == "train"


def test_a_model_name_that_is_a_path_is_refused_and_writes_nothing(tmp_path):
    torch.manual_seed(0)
    model = create_model("clip-tiny")[0]
    ckpt = save_checkpoint(tmp_path / "evil.pt", model, "clip-tiny")
    state = torch.load(ckpt, weights_only=True)
    state["model_name"] = "../../x"
    torch.save(state, ckpt)
    before = set(tmp_path.parent.parent.rglob("x.json"))
    with pytest.raises(CheckpointError, match="not a plain name"):
        load_clip(ckpt)
    assert set(tmp_path.parent.parent.rglob("x.json")) == before
