"""Checkpoints and open_clip models: create by name, save, find, read and load.

Our configs are JSON files in `models/configs/` registered with open_clip, so code
never branches on a model name and a checkpoint we save loads with plain
``open_clip.create_model_and_transforms(name, pretrained=path)`` once `register_configs()`
has run. A checkpoint also carries its config, so it loads even where the config is unknown.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import socket
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from common.atomic import atomic_path
from common.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"
LATEST = "latest"
CHECKPOINT_DIR = "checkpoints"
_registered = False


class ModelError(UserError):
    """No CLIP could be made or loaded from what was given; the message says what to pass instead."""


class PretrainedUnavailableError(ModelError):
    """open_clip weights for a tag could not be fetched (offline, or an unknown tag)."""


class CheckpointError(ModelError):
    """A checkpoint path is missing, unreadable, or holds something other than the expected CLIP."""


@dataclass
class LoadedCLIP:
    """A CLIP ready for inference, with what apps need to feed it."""

    model: Any
    preprocess: Any
    tokenizer: Any
    model_name: str
    image_size: int
    embed_dim: int
    path: str | None  # checkpoint file, or "NAME:TAG" for open_clip weights, or None for random init

    @property
    def identity(self) -> str:
        """What produced these embeddings (for caches and index compatibility checks)."""
        return self.path or f"{self.model_name}:random"


def register_configs(extra_dir: Path | str | None = None) -> None:
    """Register our JSON model configs with open_clip (idempotent)."""
    global _registered
    if extra_dir is not None:
        open_clip.add_model_config(Path(extra_dir))
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def model_names() -> list[str]:
    register_configs()
    return open_clip.list_models()


def _check_name(name: str) -> None:
    if name not in model_names():
        ours = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise ModelError(
            f"unknown model {name!r}: use one of ours ({', '.join(ours)}) or an open_clip name such as ViT-B-32 "
            "(`python -c 'import open_clip; print(open_clip.list_models())'` lists them)"
        )


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _fetch_hint(name: str, tag: str) -> str:
    return (
        f"could not load open_clip weights {name} / {tag!r}: the model hub is not reachable from here. "
        f"Train a model with `python -m training.train --model {name} ...` and pass its checkpoint "
        "(or run directory) instead, or copy the weights file here and pass its path as --pretrained."
    )


def create_model(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    aug_cfg: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, Any, Any, Any]:
    """(model, preprocess_train, preprocess_val, tokenizer) for an open_clip name or one of our configs.

    `pretrained` is an open_clip tag (e.g. "openai") or a file path. Offline, a tag fails within
    seconds with a message that says what to do instead. `aug_cfg`: open_clip's AugmentationCfg
    fields for preprocess_train (scale, color_jitter, color_jitter_prob, ...).
    """
    _check_name(name)
    if pretrained and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise PretrainedUnavailableError(
                f"{pretrained!r} is neither a file nor an open_clip tag for {name}"
                + (f" (tags: {', '.join(tags)})" if tags else " (open_clip has no weights for it)")
            )
        if os.environ.get("HF_HUB_OFFLINE") != "1" and not _hub_reachable():
            # Offline: let huggingface_hub answer from its cache at once instead of waiting on the network.
            os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        with warnings.catch_warnings():
            # open_clip warns that color_jitter is "unused" without timm, yet its own path applies it
            warnings.filterwarnings("ignore", message="Unused augmentation cfg items")
            model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=device, precision=precision, aug_cfg=aug_cfg
            )
    except RuntimeError as exc:
        if pretrained and not os.path.isfile(pretrained):
            raise PretrainedUnavailableError(_fetch_hint(name, pretrained)) from exc
        raise
    return model, preprocess_train, preprocess_val, open_clip.get_tokenizer(name)


@contextlib.contextmanager
def quiet_random_init() -> Iterator[None]:
    """Hide open_clip's "No pretrained weights loaded ... initialized randomly" while weights follow."""

    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def save_checkpoint(path: Path | str, model: torch.nn.Module, model_name: str, **extra: Any) -> Path:
    """Atomically write {"model_name", "model_config", "state_dict", **extra} with torch.save."""
    path = Path(path)
    state = {
        "model_name": model_name,
        "model_config": open_clip.get_model_config(model_name),
        "state_dict": unwrap(model).state_dict(),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def _step_of(path: Path) -> int:
    match = re.search(r"(\d+)", path.stem)
    return int(match.group(1)) if match else -1


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint file as given, or a run directory's latest checkpoint."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    latest = path / LATEST
    if latest.exists():
        target = latest.resolve() if latest.is_symlink() else path / latest.read_text().strip()
        if not target.is_file() and (path / CHECKPOINT_DIR / target.name).is_file():
            target = path / CHECKPOINT_DIR / target.name
        if target.is_file():
            return target
    candidates = sorted((path / CHECKPOINT_DIR).glob("*.pt")) + sorted(path.glob("*.pt"))
    if not candidates:
        raise CheckpointError(f"{path}: run directory has no checkpoint (looked for {LATEST} and *.pt)")
    return max(candidates, key=_step_of)


def read_checkpoint(path: Path | str) -> dict:
    """The checkpoint dict, loaded without executing pickled code; clear errors for anything else."""
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, or not a torch file): {exc}"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model_name" not in ckpt:
        raise CheckpointError(
            f"{path}: not a CLIP checkpoint written by this project (no model_name/state_dict)"
        )
    return ckpt


MODEL_NAME = re.compile(r"^[\w.-]+$")


def _ensure_config(name: str, config: dict | None) -> None:
    """Make a checkpoint's embedded config known to open_clip when it is not registered here."""
    if not MODEL_NAME.match(name) or name in (".", ".."):
        raise CheckpointError(
            f"model name {name!r} in the checkpoint is not a plain name (letters, digits, _ . -)"
        )
    if name in model_names() or not config:
        _check_name(name)
        return
    with tempfile.TemporaryDirectory(prefix="clip_cfg_") as folder:  # open_clip reads it at once
        (Path(folder) / f"{name}.json").write_text(json.dumps(config))
        register_configs(folder)


def load_state(model: torch.nn.Module, ckpt: dict, source: str, expected_name: str | None = None) -> None:
    """Load a checkpoint's weights into `model`, naming both configs when they do not fit."""
    name = ckpt["model_name"]
    if expected_name is not None and name != expected_name:
        raise CheckpointError(
            f"{source}: checkpoint is for model {name!r}, but the model is {expected_name!r}"
        )
    try:
        unwrap(model).load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{source}: weights do not fit: checkpoint config {name!r} {ckpt.get('model_config')} vs "
            f"model config {expected_name!r}: {str(exc).splitlines()[0]}"
        ) from exc


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> LoadedCLIP:
    """A CLIP from one of our checkpoints (file or run directory), in eval mode on `device`."""
    file = resolve_checkpoint(path)
    ckpt = read_checkpoint(file)
    name = ckpt["model_name"]
    _ensure_config(name, ckpt.get("model_config"))
    with quiet_random_init():  # the weights come next: open_clip's "initialized randomly" would mislead
        model, _, preprocess, tokenizer = create_model(name, device="cpu")
    load_state(model, ckpt, str(file), expected_name=name)
    model.to(device).eval()
    return loaded_clip(model, preprocess, tokenizer, name, str(file))


def load_pretrained(name: str, pretrained: str | None, device: str | torch.device = "cpu") -> LoadedCLIP:
    """An open_clip model by name with a tag or weights file (or random init when `pretrained` is None)."""
    model, _, preprocess, tokenizer = create_model(name, pretrained=pretrained, device=device)
    model.eval()
    return loaded_clip(model, preprocess, tokenizer, name, f"{name}:{pretrained}" if pretrained else None)


def loaded_clip(
    model, preprocess, tokenizer, name: str, path: str | None, config: dict | None = None
) -> LoadedCLIP:
    """Bundle a model with what apps need to feed it (`config` when `name` is not registered here)."""
    size = model.visual.image_size
    image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
    embed_dim = int((config or open_clip.get_model_config(name))["embed_dim"])
    return LoadedCLIP(model, preprocess, tokenizer, name, image_size, embed_dim, path)
