"""Image folders for prompt learning: class names checked, few-shot samples drawn, image features cached.

CLIP stays frozen while prompts learn, so every picture is encoded once; the features are kept in a
cache file keyed by the image tower's weights and the pictures' bytes, and prompt training is the
text tower's forward and backward pass only.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from apps.clip4clip.cache import visual_fingerprint
from common.atomic import atomic_path
from common.errors import UserError
from models import LoadedCLIP
from training.data import decode_image
from training.evaluate import EvalError, read_image_folder


class CoopDataError(UserError, ValueError):
    """An image folder or class list cannot be used for prompt learning; the message says which and why."""


def check_classnames(
    names: list[str], source: str = "class names", minimum: int = 2, shown: list[str] | None = None
) -> list[str]:
    """Class names with whitespace collapsed; errors for an empty name, a duplicate, or fewer than `minimum`.

    `shown` are what the user wrote (e.g. the folder names) for the messages.
    """
    clean = [" ".join(str(n).split()) for n in names]
    for raw, name in zip(shown or names, clean):
        if not name:
            raise CoopDataError(f"{source}: empty class name {raw!r}: give every class a name of letters")
    seen: dict[str, str] = {}
    for raw, name in zip(shown or names, clean):
        if name.lower() in seen:
            raise CoopDataError(
                f"{source}: class name {name!r} appears twice ({seen[name.lower()]!r} and {raw!r}): "
                "rename one so each class has its own name"
            )
        seen[name.lower()] = raw
    if len(clean) < minimum:
        raise CoopDataError(
            f"{source}: {len(clean)} class(es) ({', '.join(clean) or 'none'}); "
            + (
                "classifying needs at least 2: add another class folder"
                if minimum == 2
                else f"need {minimum}"
            )
        )
    return clean


@dataclass
class FolderFeatures:
    """Normalised CLIP image features of an image folder, with labels and class names."""

    features: torch.Tensor  # [N, D] float32, unit norm
    labels: np.ndarray  # [N] int
    classnames: list[str]
    files: list[Path]
    unreadable: int

    def subset(self, class_indices: list[int]) -> FolderFeatures:
        """Only the pictures of these classes, relabelled 0..k-1 in the given order."""
        remap = {c: i for i, c in enumerate(class_indices)}
        keep = np.flatnonzero(np.isin(self.labels, class_indices))
        return FolderFeatures(
            self.features[torch.from_numpy(keep)],
            np.array([remap[int(c)] for c in self.labels[keep]], dtype=np.int64),
            [self.classnames[c] for c in class_indices],
            [self.files[i] for i in keep],
            self.unreadable,  # of the whole folder: still worth reporting
        )


def read_folder(root: Path | str) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, labels, class names) of an ImageFolder; every class folder must hold a picture."""
    root = Path(root)
    try:
        files, labels, classes = read_image_folder(root)
    except EvalError as exc:
        raise CoopDataError(str(exc)) from exc
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    counts = np.bincount(np.asarray(labels), minlength=len(classes))
    for folder, count in zip(folders, counts):
        if count == 0:
            raise CoopDataError(
                f"{root / folder}: class folder has no images; add pictures or remove the folder"
            )
    return files, np.asarray(labels, dtype=np.int64), check_classnames(classes, str(root), shown=folders)


def sample_shots(labels: np.ndarray, classnames: list[str], shots: int, seed: int) -> np.ndarray:
    """Indices of `shots` pictures per class, drawn without replacement by `seed`."""
    if shots < 1:
        raise CoopDataError(f"--shots {shots}: need at least 1 picture per class")
    rng = np.random.default_rng(seed)
    chosen = []
    for c, name in enumerate(classnames):
        pool = np.flatnonzero(labels == c)
        if len(pool) < shots:
            raise CoopDataError(
                f"--shots {shots} is larger than class {name!r} ({len(pool)} readable pictures): "
                f"use --shots {len(pool)} or fewer, or add pictures"
            )
        chosen.append(rng.choice(pool, size=shots, replace=False))
    return np.sort(np.concatenate(chosen))


def _cache_key(clip: LoadedCLIP, files: list[Path]) -> str:
    digest = hashlib.sha256(visual_fingerprint(clip.model).encode())
    digest.update(repr(clip.preprocess).encode())
    for path in files:
        digest.update(str(path.name).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:24]


@torch.no_grad()
def encode_files(
    clip: LoadedCLIP, files: list[Path], batch_size: int = 128, progress: bool = True
) -> tuple[torch.Tensor, list[int]]:
    """Unit-norm image features of the readable files, and the indices of those that were unreadable."""
    device = next(clip.model.parameters()).device
    feats, batch, bad = [], [], []

    def flush():
        x = torch.stack(batch).to(device)
        feats.append(clip.model.encode_image(x, normalize=True).float().cpu())
        batch.clear()

    for i, path in enumerate(
        tqdm(files, desc="encode images", unit="img", disable=not progress, leave=False)
    ):
        image = decode_image(path.read_bytes())
        if image is None:
            bad.append(i)
            print(f"warning: {path}: not a readable image, skipped", file=sys.stderr)
            continue
        batch.append(clip.preprocess(image))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    dim = clip.embed_dim
    return (torch.cat(feats) if feats else torch.empty(0, dim)), bad


def folder_features(
    clip: LoadedCLIP, root: Path | str, cache_dir: Path | str | None = None, progress: bool = True
) -> FolderFeatures:
    """Features of every readable picture under `root`, read from / written to `cache_dir` when given."""
    files, labels, classnames = read_folder(root)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{_cache_key(clip, files)}.pt"
        if cache.is_file():
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            return FolderFeatures(
                saved["features"],
                saved["labels"].numpy(),
                classnames,
                [files[i] for i in saved["kept"].tolist()],
                int(saved["unreadable"]),
            )
    feats, bad = encode_files(clip, files, progress=progress)
    kept = np.setdiff1d(np.arange(len(files)), np.asarray(bad, dtype=np.int64))
    if len(kept) == 0:
        raise CoopDataError(f"{root}: none of its {len(files)} pictures could be read")
    result = FolderFeatures(feats, labels[kept], classnames, [files[i] for i in kept], len(bad))
    read_folder_counts = np.bincount(result.labels, minlength=len(classnames))
    for name, count in zip(classnames, read_folder_counts):
        if count == 0:
            raise CoopDataError(f"{root}: class {name!r} has no readable picture")
    if cache is not None:
        with atomic_path(cache) as tmp:
            torch.save(
                {
                    "features": feats,
                    "labels": torch.from_numpy(result.labels),
                    "kept": torch.from_numpy(kept),
                    "unreadable": len(bad),
                },
                tmp,
            )
    return result
