"""Fine-tune an ActionCLIP head on cached frame features, and evaluate any head as a classifier.

The CLIP stays frozen, its text encoder included: frame features come from the cache and prompt
features are encoded once, so a step is a few small matrix products (seconds to a minute for a
whole run on a CPU). A frozen text side is also what lets label names never trained land where
their words put them (measured with the demo CLIP, 3 held-out actions: 67-92 % over 3 seeds with
the text frozen, 54-83 % with a trained text adapter).
Loss: ActionCLIP's symmetric KL between the batch's video x prompt similarity and the
ground-truth matrix (videos of one label are all positives of each other's prompts), each video
paired with its label in a randomly drawn template.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from apps.actionclip.data import LabelledVideos
from apps.actionclip.errors import ActionClipError
from apps.actionclip.model import HEAD_FILE, ActionHead, FusionConfig, save_head
from apps.actionclip.prompts import ACTION_TEMPLATES, encode_prompts, parse_labels
from apps.clip4clip.train import VideoBank, plot_losses
from common.atomic import atomic_path


@dataclass(frozen=True)
class TrainConfig:
    head: FusionConfig = field(default_factory=FusionConfig)
    epochs: int = field(default=60, metadata={"help": "passes over the training videos"})
    batch_size: int = field(default=32, metadata={"help": "videos per step"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate of the head"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    seed: int = field(default=0, metadata={"help": "random seed (batches, templates, initialisation)"})
    templates: tuple[str, ...] = ACTION_TEMPLATES

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or not self.lr > 0:
            raise ActionClipError(
                f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}: need >= 1, >= 2, > 0"
            )


def kl_to_ground_truth(logits: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """ActionCLIP's KLLoss: KL(ground truth || softmax(logits)) per row, ground truth = positives, uniform."""
    target = same.float() / same.float().sum(dim=1, keepdim=True)
    return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")


@dataclass
class TrainedHead:
    head: ActionHead
    labels: list[str]
    losses: list[float]
    seconds: float


def train_head(
    clip, data: LabelledVideos, config: TrainConfig, out_dir: str | Path | None = None, progress: bool = True
) -> TrainedHead:
    """Fit `config.head` and the adapters on `data`; with `out_dir`, write head.pt, log.jsonl, loss.png."""
    labels = parse_labels(sorted(set(data.labels)), "the training videos' labels")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    prompts = encode_prompts(clip, labels, config.templates)  # [labels, templates, dim], frozen
    head = ActionHead(config.head, clip.embed_dim, clip.model)
    label_index = torch.tensor([labels.index(label) for label in data.labels])
    frames, mask = data.bank.frames, data.bank.mask
    head.set_frame_statistics(frames, mask)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batch = min(config.batch_size, len(label_index))
    steps_per_epoch = max(1, len(label_index) // batch)
    total = steps_per_epoch * config.epochs
    warmup = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total))),
    )
    losses: list[float] = []
    head.train()
    bar = tqdm(total=total, desc=f"train {config.head.fusion}", unit="step", disable=not progress)
    for _ in range(config.epochs):
        order = torch.from_numpy(rng.permutation(len(label_index)))
        for start in range(0, steps_per_epoch * batch, batch):
            chosen = order[start : start + batch]
            y = label_index[chosen]
            template = torch.from_numpy(rng.integers(len(config.templates), size=len(chosen)))
            text = head.prompt_embedding(prompts[y, template])
            video = head.video_embedding(frames[chosen], mask[chosen])
            logits = head.logit_scale.exp().clamp(max=100.0) * video @ text.t()
            same = y[:, None] == y[None, :]
            loss = (kl_to_ground_truth(logits, same) + kl_to_ground_truth(logits.t(), same)) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    head.eval()
    seconds = time.perf_counter() - started
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.jsonl").write_text(
            "".join(json.dumps({"step": i, "loss": v}) + "\n" for i, v in enumerate(losses))
        )
        plot_losses(losses, out / "loss.png", f"actionclip {config.head.fusion} training loss")
        train_config = {k: v for k, v in asdict(config).items() if k != "head"}
        save_head(
            out / HEAD_FILE,
            head,
            clip,
            data.sampling,
            labels=labels,
            templates=list(config.templates),
            train_config=train_config,
            seconds=seconds,
            steps=total,
        )
    return TrainedHead(head, labels, losses, seconds)


@torch.no_grad()
def classify(
    clip, head: ActionHead, bank: VideoBank, labels: list[str], templates: tuple[str, ...] = ACTION_TEMPLATES
) -> torch.Tensor:
    """Probabilities [videos, labels] of each video for each label."""
    label_embeddings = head.label_embeddings(encode_prompts(clip, labels, templates))
    return head.scores(bank.frames, bank.mask, label_embeddings).softmax(dim=1)


@dataclass(frozen=True)
class Evaluation:
    labels: list[str]
    top1: float  # %
    top5: float  # %
    per_label: dict[str, float]  # top-1 % of each label's videos
    confusion: np.ndarray  # [true, predicted] counts
    videos: int

    def subset_top1(self, labels) -> float:
        """Top-1 % over the videos whose true label is in `labels` (their counts weight the mean)."""
        rows = [self.labels.index(label) for label in labels if label in self.labels]
        counts = self.confusion[rows].sum()
        return 100.0 * float(sum(self.confusion[r, r] for r in rows)) / max(1, int(counts))

    def as_dict(self) -> dict:
        return {
            "labels": self.labels,
            "top1": self.top1,
            "top5": self.top5,
            "per_label": self.per_label,
            "confusion": self.confusion.tolist(),
            "videos": self.videos,
        }


def evaluate(
    clip, head: ActionHead, data: LabelledVideos, labels: list[str] | None = None, templates=ACTION_TEMPLATES
) -> Evaluation:
    """Top-1/top-5 and the confusion matrix of `head` on `data`, classifying among `labels` (default: data's)."""
    labels = parse_labels(labels or sorted(set(data.labels)), "the evaluated labels")
    unknown = sorted(set(data.labels) - set(labels))
    if unknown:
        raise ActionClipError(f"videos labelled {unknown[0]!r} cannot be classified among {labels}")
    probs = classify(clip, head, data.bank, labels, templates)
    truth = torch.tensor([labels.index(label) for label in data.labels])
    ranked = probs.argsort(dim=1, descending=True)
    top1 = ranked[:, 0] == truth
    top5 = (ranked[:, : min(5, len(labels))] == truth[:, None]).any(dim=1)
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(confusion, (truth.numpy(), ranked[:, 0].numpy()), 1)
    per_label = {
        label: 100.0 * float(top1[truth == i].float().mean())
        for i, label in enumerate(labels)
        if bool((truth == i).any())
    }
    return Evaluation(
        labels,
        100.0 * float(top1.float().mean()),
        100.0 * float(top5.float().mean()),
        per_label,
        confusion,
        len(truth),
    )


def plot_confusion(
    panels: list[tuple[Evaluation, str]] | Evaluation, path: str | Path, title: str = ""
) -> Path:
    """Confusion matrices (true label per row, counts, shaded by row share) side by side in one PNG."""
    from matplotlib.figure import Figure  # no pyplot: the demo's apps plot from several threads at once

    if isinstance(panels, Evaluation):
        panels = [(panels, title)]
    n = len(panels[0][0].labels)
    fig = Figure(figsize=(len(panels) * (1.6 + 0.42 * n), 1.4 + 0.42 * n))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (evaluation, panel_title) in zip(axes[0], panels):
        counts = evaluation.confusion
        share = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), evaluation.labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), evaluation.labels, fontsize=8)
        for i, j in zip(*np.nonzero(counts)):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
        ax.set(xlabel="predicted", ylabel="true", title=f"{panel_title} (top-1 {evaluation.top1:.0f} %)")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
    return path
