"""The model layer: our open_clip configs and the ONE way to load a CLIP.

    from models import load_clip
    clip = load_clip("runs/demo/train")                      # run directory (its latest checkpoint)
    clip = load_clip("runs/demo/train/checkpoints/step_500.pt")  # checkpoint file
    clip = load_clip("runs/demo/train/export")               # exported open_clip `local-dir` folder
    clip = load_clip(model="ViT-B-32", pretrained="openai")  # open_clip name + tag (needs the hub)
    clip = load_clip(model="clip-tiny")                      # random init (tests)

Curation's CLI, training, evaluation, the pipelines and every app load through `load_clip`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.export import EXPORT_DIR, export_local_dir, is_export, load_export
from models.loader import (
    CHECKPOINT_DIR,
    LATEST,
    CheckpointError,
    LoadedCLIP,
    ModelError,
    PretrainedUnavailableError,
    create_model,
    load_checkpoint,
    load_pretrained,
    load_state,
    model_names,
    quiet_random_init,
    read_checkpoint,
    register_configs,
    resolve_checkpoint,
    save_checkpoint,
    unwrap,
)

__all__ = [
    "CHECKPOINT_DIR",
    "LATEST",
    "load_state",
    "quiet_random_init",
    "DEFAULT_CHECKPOINT",
    "EXPORT_DIR",
    "CheckpointError",
    "LoadedCLIP",
    "ModelError",
    "PretrainedUnavailableError",
    "create_model",
    "export_local_dir",
    "load_clip",
    "model_names",
    "pick_device",
    "read_checkpoint",
    "register_configs",
    "resolve_checkpoint",
    "save_checkpoint",
    "unwrap",
]

# `make demo` trains the demo model here (pipelines/demo.py writes it); apps fall back to it.
DEFAULT_CHECKPOINT = Path("runs/demo/train")


def pick_device(device: str | torch.device | None) -> str:
    """ "auto"/None -> cuda when available, else cpu; an unavailable cuda is a one-line error."""
    device = None if device is None else str(device)
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return device


def load_clip(
    checkpoint: Path | str | None = None,
    device: str | None = "cpu",
    *,
    model: str | None = None,
    pretrained: str | None = None,
    default: Path | str | None = None,
) -> LoadedCLIP:
    """A CLIP in eval mode on `device`, from the first of: `checkpoint` (a checkpoint file, a run
    directory, or an exported `local-dir` folder), `model` (+ `pretrained` tag or weights file;
    random init without one), `default` (a checkpoint path used when it exists).

    Every failure is a `ModelError` (a `UserError`) whose message says what to pass instead.
    """
    device = pick_device(device)
    if checkpoint is not None:
        path = Path(str(checkpoint).removeprefix("local-dir:"))
        if is_export(path):
            return load_export(path, device)
        return load_checkpoint(path, device)
    if model is not None:
        return load_pretrained(model, pretrained, device)
    if default is not None and Path(default).exists():
        return load_checkpoint(default, device)
    raise ModelError(
        (
            f"no CLIP given and no demo model at {default}: run `make demo` to train one, "
            if default
            else "no CLIP given: "
        )
        + "pass --checkpoint PATH (a checkpoint file, a `python -m training.train` run directory or its "
        "export/ folder), or --model NAME --pretrained TAG where the open_clip hub is reachable"
    )
