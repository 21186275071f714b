"""Export a checkpoint as an open_clip `local-dir` folder that plain open_clip loads.

RUN/export/open_clip_config.json       {"model_cfg": ..., "preprocess_cfg": ...}
RUN/export/open_clip_model.safetensors the weights

open_clip.create_model_and_transforms("local-dir:RUN/export")   # no import of this project
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

from common.atomic import atomic_path, atomic_write_json
from models.loader import LoadedCLIP, loaded_clip, quiet_random_init, unwrap

EXPORT_DIR = "export"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def export_local_dir(model: torch.nn.Module, model_name: str, folder: Path | str) -> Path:
    """Write `model` (our config `model_name`) as an open_clip local-dir folder; returns the folder.

    The weights go first and the config last, each atomically, so a folder with a config is whole.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bare = unwrap(model)
    state = {k: v.detach().cpu().contiguous() for k, v in bare.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"model_name": model_name})
    visual = bare.visual
    preprocess = {
        "size": open_clip.get_model_config(model_name)["vision_cfg"]["image_size"],
        "mean": list(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
        "std": list(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),
    }
    atomic_write_json(
        folder / CONFIG_FILE,
        {
            "model_name": model_name,
            "model_cfg": open_clip.get_model_config(model_name),
            "preprocess_cfg": preprocess,
        },
    )
    return folder


def is_export(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def load_export(folder: Path, device: str = "cpu") -> LoadedCLIP:
    """Load an exported folder with open_clip's own `local-dir:` loader."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    name = config.get("model_name", folder.name)
    with quiet_random_init():
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device=device)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    return loaded_clip(model, preprocess, tokenizer, name, str(folder), config["model_cfg"])
