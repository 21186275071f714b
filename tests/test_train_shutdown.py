"""Training with DataLoader workers stops them when it ends, normally or on error: no worker outlives
`train()`, and `python -m training.train` ends without torch's "DataLoader worker ... exited unexpectedly"."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.datasets import make_shape_dataset
from training.config import TrainConfig
from training.train import TrainingDiverged, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shape_dataset(
        tmp_path_factory.mktemp("shutdown") / "data", n=48, seed=0, size=32, shards=1, row_group_size=24
    )


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=[data], out=out, model="clip-tiny", steps=3, batch_size=16, workers=1, warmup=1, lr=2e-3,
        checkpoint_every=3, keep_checkpoints=1, threads=1, progress=False,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _workers_alive(before: set[int]) -> list[int]:
    return [p.pid for p in multiprocessing.active_children() if p.pid not in before]


def test_no_loader_worker_outlives_a_training_that_ends(data, tmp_path):
    before = {p.pid for p in multiprocessing.active_children()}
    assert train(_cfg(data, tmp_path / "run")).steps == 3
    assert _workers_alive(before) == []


def test_no_loader_worker_outlives_a_training_that_fails(data, tmp_path):
    """The error's traceback holds the training frame (pytest keeps it here, Prefect in a failed state)."""
    before = {p.pid for p in multiprocessing.active_children()}
    # an absurd learning rate: the loss of step 2 is NaN and training stops with TrainingDiverged
    cfg = _cfg(data, tmp_path / "nan", lr=1e30, warmup=0, steps=4, grad_clip=0.0, checkpoint_every=1)
    with pytest.raises(TrainingDiverged) as failed:
        train(cfg)
    assert failed.traceback  # still held while we look
    assert _workers_alive(before) == [], "the loader's worker is still prefetching after the error"


def test_the_command_line_run_ends_without_a_worker_message(data, tmp_path):
    argv = [
        sys.executable, "-m", "training.train", "--data", str(data), "--model", "clip-tiny",
        "--out", str(tmp_path / "cli"), "--steps", "3", "--batch-size", "16", "--workers", "1",
        "--warmup", "1", "--checkpoint-every", "3", "--threads", "1", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "DataLoader worker" not in done.stderr and "Traceback" not in done.stderr, done.stderr
