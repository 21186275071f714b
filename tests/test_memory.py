"""`keep_freed_memory`: glibc keeps freed large blocks for reuse, so a training step stops re-faulting them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training import train as train_module
from training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]

# A step's pattern: hold several large blocks at once (activations, the embedding table's 25 MB gradient),
# then free them all; count the page faults of 20 rounds. glibc's own threshold adapts to one block, but
# gives the heap's freed top back to the kernel once it exceeds twice that block.
ROUNDS = """
import json, resource, sys
import torch
from models.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.zeros(49408, 128).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    blocks = [torch.zeros(49408, 128).add_(1.0) for _ in range(4)]
    del blocks
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _rounds(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    returned, kept = _rounds("default"), _rounds("keep")
    assert kept["kept"] is True
    # Returned to the kernel: every round faults its ~25,000 pages in again; kept: next to none.
    assert returned["faults"] > 20 * 3000, returned
    assert kept["faults"] < returned["faults"] / 10, (kept, returned)


def test_training_sets_it_unless_told_not_to(tmp_path, monkeypatch):
    """`--keep-freed-memory` is on by default and `--no-keep-freed-memory` leaves the C library alone."""
    from testbed.datasets import make_shape_dataset

    calls = []
    monkeypatch.setattr(train_module, "keep_freed_memory", lambda: calls.append(1) or True)
    data = make_shape_dataset(tmp_path / "data", n=16, seed=0, size=32, shards=1, row_group_size=16)
    base = dict(data=[data], model="clip-tiny", steps=1, batch_size=8, workers=0, threads=1, progress=False)
    train_module.train(TrainConfig(out=tmp_path / "on", **base))
    assert calls == [1]
    train_module.train(TrainConfig(out=tmp_path / "off", keep_freed_memory=False, **base))
    assert calls == [1]
