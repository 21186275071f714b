"""Small torch state files the apps write beside a CLIP (video heads, learned prompts): one way to save,
find and read them.

    save_state(run / "head.pt", {"format": "clip4clip-head/1", ...})      # atomic: never half a file
    path = state_file(run, "head.pt", HeadError, "train one with `python -m apps.clip4clip train`")
    state = read_state(path, "clip4clip-head/1", HeadError, "clip4clip head checkpoint")

A state holds plain tensors and values only, so it loads with `weights_only=True` (no pickled code runs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.atomic import atomic_path
from common.errors import UserError


def save_state(path: str | Path, state: dict) -> Path:
    """Write `state` with torch.save under a temporary name, then rename: a reader never sees half a file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def state_file(path: str | Path, filename: str, error: type[UserError], hint: str) -> Path:
    """The file as given, or FOLDER/filename for a run folder; `error` (ending with `hint`) when absent."""
    path = Path(path)
    if path.is_dir():
        path = path / filename
    if not path.is_file():
        raise error(f"{path}: no {filename} here; {hint}")
    return path


def check_width(path: Path, state: dict, clip, error: type[UserError]) -> None:
    """`error` naming both models when a head saved in `state` was trained for another CLIP width."""
    if state["embed_dim"] != clip.embed_dim:
        raise error(
            f"head {path} was trained on {state['clip_model_name']} ({state['clip_identity']}, width "
            f"{state['embed_dim']}) but the CLIP loaded is {clip.model_name} ({clip.identity}, width "
            f"{clip.embed_dim}): pass the --checkpoint the head was trained with"
        )


def read_state(path: Path, fmt: str, error: type[UserError], what: str) -> dict:
    """The state saved at `path`, checked to carry `"format": fmt`; `error` names the file when it does not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file; all mean "unreadable"
        raise error(f"{path}: not a readable {what} ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise error(f"{path}: not a {what} (no format {fmt!r})")
    return state
