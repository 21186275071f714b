"""Learn prompts on a few shots per class with CLIP frozen: CoOp's and CoCoOp's training loop.

As the papers: cross-entropy over CLIP's scaled cosine logits, SGD (momentum 0.9, weight decay 5e-4,
lr 0.002), one warmup epoch at a constant 1e-5, then cosine decay; CoOp 50/100/200 epochs for
1-2/4-8/16 shots with batch 32, CoCoOp 10 epochs with batch 1. Image features come from the cache,
so one step is the text tower's forward and backward pass over the classes' prompts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from apps.coop.data import CoopDataError, FolderFeatures, folder_features, read_folder, sample_shots
from apps.coop.prompts import LearnedPrompts, PromptClassifier, PromptSpec, prompt_layout, save_prompts
from models import LoadedCLIP

WARMUP_LR = 1e-5


@dataclass(frozen=True)
class Schedule:
    epochs: int
    batch_size: int
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4


def paper_schedule(
    shots: int, cocoop: bool, epochs: int | None = None, batch_size: int | None = None, lr: float = 0.002
) -> Schedule:
    """CoOp: 50 epochs for 1-2 shots, 100 for 4-8, 200 for 16+, batch 32; CoCoOp: 10 epochs, batch 1."""
    default_epochs = 10 if cocoop else (50 if shots <= 2 else 100 if shots <= 8 else 200)
    return Schedule(epochs or default_epochs, batch_size or (1 if cocoop else 32), lr)


def split_indices(n_classes: int, which: str) -> list[int]:
    """CoOp's base-to-new split: base = the first ceil(n/2) classes (sorted), new = the rest."""
    half = math.ceil(n_classes / 2)
    if which == "all":
        return list(range(n_classes))
    if n_classes < 4:
        raise CoopDataError(
            f"--classes {which}: a base-to-new split needs at least 4 classes, the folder has {n_classes}"
        )
    return list(range(half)) if which == "base" else list(range(half, n_classes))


def freeze(clip: LoadedCLIP) -> None:
    """CLIP never learns here: no gradients, eval mode (no dropout)."""
    clip.model.eval()
    for p in clip.model.parameters():
        p.requires_grad_(False)


def train_prompts(
    clip: LoadedCLIP,
    shots: FolderFeatures,
    spec: PromptSpec,
    schedule: Schedule,
    seed: int = 0,
    progress: bool = True,
) -> tuple[LearnedPrompts, list[dict]]:
    """Learn the context (and CoCoOp's meta-network) on these image features; CLIP stays as it was."""
    freeze(clip)
    prompts = LearnedPrompts.initial(clip, shots.classnames, spec, seed)
    classifier = PromptClassifier(clip, prompts)
    prompts.to(classifier.device).train()
    optimizer = torch.optim.SGD(
        prompts.parameters(), lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    feats = shots.features.to(classifier.device)
    labels = torch.from_numpy(shots.labels).to(classifier.device)
    generator = torch.Generator().manual_seed(seed)
    log = []
    bar = tqdm(range(schedule.epochs), desc=f"{spec.method} epochs", disable=not progress, leave=False)
    for epoch in bar:
        # Epoch 0 warms up at a constant small lr; then cosine from lr to 0 over the remaining epochs.
        lr = (
            WARMUP_LR
            if epoch == 0
            else 0.5 * schedule.lr * (1 + math.cos(math.pi * (epoch - 1) / schedule.epochs))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(len(labels), generator=generator).to(classifier.device)
        total, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), schedule.batch_size):
            batch = order[start : start + schedule.batch_size]
            logits = classifier.logits(feats[batch], shots.classnames)
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            correct += (logits.argmax(1) == labels[batch]).sum().item()
            seen += len(batch)
        log.append({"epoch": epoch, "lr": lr, "loss": total / seen, "train_top1": correct / seen})
        bar.set_postfix(loss=f"{total / seen:.3f}")
    prompts.eval()
    return prompts, log


def train(cfg, clip: LoadedCLIP) -> dict:
    """`python -m apps.coop train`: check everything, learn, then write RUN/prompts.pt and RUN/train.json."""
    from common.atomic import atomic_write_json, output_lock
    from common.settings import to_dict

    spec = PromptSpec(
        n_ctx=len(clip.tokenizer.encode(cfg.init)) if cfg.init else cfg.ctx,
        ctx_init=cfg.init,
        class_specific=cfg.class_specific,
        position=cfg.class_token,
        cocoop=cfg.cocoop,
    )
    started = time.perf_counter()
    # Everything a user can get wrong is checked before the pictures are encoded and before anything is written.
    _, labels, classnames = read_folder(cfg.data)
    chosen_classes = split_indices(len(classnames), cfg.classes)
    names = [classnames[i] for i in chosen_classes]
    prompt_layout(clip.tokenizer, names, spec.n_ctx, spec.position)
    remap = {c: i for i, c in enumerate(chosen_classes)}
    sample_shots(np.array([remap.get(int(c), -1) for c in labels]), names, cfg.shots, cfg.seed)
    data = folder_features(clip, cfg.data, cfg.cache_dir, cfg.progress).subset(chosen_classes)
    shots = shot_features(data, cfg.shots, cfg.seed)
    schedule = paper_schedule(cfg.shots, cfg.cocoop, cfg.epochs, cfg.batch_size, cfg.lr)
    prompts, log = train_prompts(clip, shots, spec, schedule, cfg.seed, cfg.progress)
    summary = {
        "method": spec.method,
        "classes": shots.classnames,
        "shots": cfg.shots,
        "pictures": len(shots.labels),
        "unreadable_in_folder": data.unreadable,
        "schedule": schedule.__dict__,
        "final_loss": log[-1]["loss"],
        "final_train_top1": log[-1]["train_top1"],
        "seconds": round(time.perf_counter() - started, 2),
        "config": to_dict(cfg),
        "log": log,
    }
    out = Path(cfg.out)
    with output_lock(out, "apps.coop train"):  # a second run writing the same folder fails at once
        atomic_write_json(out / "train.json", summary)
        save_prompts(
            out / "prompts.pt",
            prompts,
            clip,
            {k: v for k, v in summary.items() if k not in ("log", "config")},
        )
    summary["prompts_path"] = str(out / "prompts.pt")
    return summary


def shot_features(data: FolderFeatures, shots: int, seed: int) -> FolderFeatures:
    """The few-shot training set drawn from a folder's features (same draw as `train`)."""
    chosen = sample_shots(data.labels, data.classnames, shots, seed)
    return FolderFeatures(
        data.features[torch.from_numpy(chosen)],
        data.labels[chosen],
        data.classnames,
        [data.files[i] for i in chosen],
        0,
    )
