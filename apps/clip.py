"""The one place where apps load a CLIP.

Order of preference: an explicit checkpoint (file or training run directory), else an
open_clip model name with optional pretrained tag, else the checkpoint `make demo` trained
(DEFAULT_CHECKPOINT), else a clear error that says how to get a model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.model import (
    CheckpointError,
    LoadedCLIP,
    PretrainedUnavailableError,
    load_clip,
    load_pretrained,
)

# `make demo` trains the demo model here (pipelines/demo.py writes it).
DEFAULT_CHECKPOINT = Path("runs/demo/train")


class ClipLoadError(RuntimeError):
    """No CLIP could be loaded; the message says what to pass instead."""


def pick_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ClipLoadError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return device


def load_app_clip(
    checkpoint: Path | str | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    device: str | None = "cpu",
) -> LoadedCLIP:
    """Load the CLIP an app asked for; every failure becomes a one-line ClipLoadError."""
    device = pick_device(device)
    try:
        if checkpoint is not None:
            return load_clip(checkpoint, device)
        if model is not None:
            return load_pretrained(model, pretrained, device)
        if DEFAULT_CHECKPOINT.exists():
            return load_clip(DEFAULT_CHECKPOINT, device)
    except (CheckpointError, PretrainedUnavailableError, ValueError) as exc:
        raise ClipLoadError(str(exc)) from exc
    raise ClipLoadError(
        f"no CLIP given and no demo model at {DEFAULT_CHECKPOINT}: run `make demo` to train one, "
        "pass --checkpoint PATH (a checkpoint file or a `python -m training.train` run directory), "
        "or --model NAME --pretrained TAG where the open_clip hub is reachable"
    )
