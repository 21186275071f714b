"""Train and evaluate a similarity head on video-caption pairs (CLIP4Clip recipe, on cached frames).

The CLIP image encoder is frozen: its frame features come from the cache (apps.clip4clip.cache),
which is what makes training a head cheap. The text encoder is fine-tuned with its own, small
learning rate (`lr_clip`, CLIP4Clip: 1e-7) while the head's new modules get `lr_head` (1e-4).
Loss: symmetric cross-entropy over the batch's caption x video score matrix, logit scale fixed
(CLIP4Clip: 100). Each epoch sees every training video once, with one of its captions drawn at
random, so no batch holds two positives for one caption.

A head checkpoint (`head.pt`) holds the head's weights, the fine-tuned text encoder weights (when
`lr_clip` > 0), the frame sampling, and the identity of the image encoder it was trained on.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from apps.clip4clip.cache import FrameFeatures, Rejected, compute_frame_features, visual_fingerprint
from apps.clip4clip.errors import Clip4ClipError
from apps.clip4clip.heads import HeadConfig, SimilarityHead, build_head, dual_softmax
from apps.clip4clip.metrics import RetrievalMetrics, format_table, retrieval_metrics
from apps.clip4clip.video import FrameSampling, find_videos
from common.errors import UserError
from curation.video_captions import Caption, CaptionSet, read_captions
from models.states import check_width, read_state, save_state, state_file

HEAD_FILE = "head.pt"
HEAD_FORMAT = "clip4clip-head/1"
# Parameters of an open_clip CLIP that belong to the text encoder (fine-tuned at lr_clip).
TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


class HeadCheckpointError(UserError, RuntimeError):
    """A head checkpoint is missing, unreadable, or was trained for another CLIP."""


@dataclass(frozen=True)
class TrainConfig:
    head: HeadConfig = field(default_factory=lambda: HeadConfig("seqTransf"))
    sampling: FrameSampling = field(default_factory=FrameSampling)
    epochs: int = field(default=5, metadata={"help": "passes over the training videos"})
    batch_size: int = field(default=32, metadata={"help": "video-caption pairs per step"})
    lr_head: float = field(
        default=1e-4, metadata={"help": "learning rate of the head's new modules (CLIP4Clip's)"}
    )
    lr_clip: float = field(
        default=1e-7, metadata={"help": "learning rate of the CLIP text encoder (0 freezes it)"}
    )
    weight_decay: float = field(default=0.2, metadata={"help": "AdamW weight decay"})
    warmup_fraction: float = field(default=0.1, metadata={"help": "fraction of steps spent warming up"})
    logit_scale: float = field(default=100.0, metadata={"help": "fixed logit scale, as in CLIP4Clip"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    split: str | None = field(
        default="train", metadata={"help": "split of the caption file to train on; 'all' for every video"}
    )

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise Clip4ClipError(
                f"epochs={self.epochs}, batch_size={self.batch_size}: need epochs >= 1, batch >= 2"
            )


@dataclass
class VideoBank:
    """Frame features of a set of videos, padded to [videos, frames, dim] with a mask."""

    ids: list[str]
    items: list[FrameFeatures]
    frames: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_features(cls, ids: list[str], items: list[FrameFeatures], max_frames: int) -> VideoBank:
        if not items:
            raise Clip4ClipError("no readable video to build a bank from")
        dim = items[0].features.shape[1]
        frames = torch.zeros(len(items), max_frames, dim)
        mask = torch.zeros(len(items), max_frames, dtype=torch.bool)
        for i, item in enumerate(items):
            n = min(max_frames, len(item.features))
            frames[i, :n] = torch.from_numpy(item.features[:n])
            mask[i, :n] = True
        return cls(ids, items, frames, mask)


@dataclass(frozen=True)
class VideoCaptionData:
    bank: VideoBank
    captions: list[Caption]  # only captions whose video was read
    rejected: list[Rejected]
    missing: list[str]  # caption video ids with no file in the folder
    groups: dict[str, str] = field(default_factory=dict)  # video id -> hard-negative group


def load_video_captions(
    videos_dir: str | Path,
    captions: str | Path | CaptionSet,
    model: torch.nn.Module,
    preprocess,
    sampling: FrameSampling,
    split: str | None = None,
    cache_dir: str | Path | None = None,
) -> VideoCaptionData:
    """Match captions to video files (by file stem), compute frame features, drop unreadable videos."""
    caption_set = captions if isinstance(captions, CaptionSet) else read_captions(captions)
    by_stem = {p.stem: p for p in find_videos(videos_dir)}
    wanted = caption_set.video_ids(split)
    if split is not None and not wanted:
        raise Clip4ClipError(
            f"the caption file has no video in split {split!r} (it names splits: {sorted(set(caption_set.splits.values())) or 'none'}): pass --split all to use every video"
        )
    missing = [v for v in wanted if v not in by_stem]
    present = [v for v in wanted if v in by_stem]
    results = compute_frame_features([by_stem[v] for v in present], model, preprocess, sampling, cache_dir)
    ids, items, rejected = [], [], []
    for video_id, result in zip(present, results):
        if isinstance(result, Rejected):
            rejected.append(result)
        else:
            ids.append(video_id)
            items.append(result)
    if not items:
        raise Clip4ClipError(
            f"no caption's video could be read from {videos_dir} ({len(missing)} missing, {len(rejected)} unreadable)"
        )
    kept = set(ids)
    return VideoCaptionData(
        VideoBank.from_features(ids, items, sampling.max_frames),
        [c for c in caption_set.captions if c.video_id in kept],
        rejected,
        missing,
        {v: g for v, g in caption_set.groups.items() if v in kept},
    )


def text_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if n.startswith(TEXT_PREFIXES)]


def encode_captions(
    model: torch.nn.Module, tokenizer, texts: list[str], batch_size: int = 256
) -> torch.Tensor:
    """Raw CLIP text features [n, dim] (gradients flow when enabled by the caller)."""
    device = next(model.parameters()).device
    out = [
        model.encode_text(tokenizer(texts[i : i + batch_size]).to(device))
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(out).float()


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainedHead:
    head: SimilarityHead
    clip: object  # LoadedCLIP whose text encoder is the fine-tuned copy (the caller's is untouched)
    losses: list[float]


def _grouped_order(videos: np.ndarray, group_of: dict[int, str], rng: np.random.Generator) -> np.ndarray:
    """Videos in random order, a group's videos next to each other (so mostly in one batch).

    Groups are hard negatives, e.g. videos that differ only in the order of events: in a batch of
    random videos they would rarely meet, and the loss would never need the order.
    """
    groups: dict[str, list[int]] = {}
    for video in videos.tolist():
        groups.setdefault(group_of.get(video, f"#{video}"), []).append(video)
    keys = list(groups)
    return np.array([v for k in rng.permutation(len(keys)) for v in groups[keys[k]]])


def train_head(
    clip,
    data: VideoCaptionData,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> TrainedHead:
    """Train `config.head` on `data` with `clip` (a LoadedCLIP), fine-tuning a copy of its text encoder.

    With `out_dir`, writes head.pt, log.jsonl and loss.png there.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    clip = replace(clip, model=copy.deepcopy(clip.model))
    model, tokenizer = clip.model, clip.tokenizer
    device = next(model.parameters()).device
    head = build_head(config.head, clip.embed_dim, model).to(device)

    train_text = config.lr_clip > 0
    for _, param in model.named_parameters():
        param.requires_grad_(False)
    text_params = [p for _, p in text_parameters(model)] if train_text else []
    for param in text_params:
        param.requires_grad_(True)
    groups = [{"params": [p for p in head.parameters()], "lr": config.lr_head, "base_lr": config.lr_head}]
    if text_params:
        groups.append({"params": text_params, "lr": config.lr_clip, "base_lr": config.lr_clip})
    has_head_params = any(True for _ in head.parameters())
    optimizer = (
        torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=config.weight_decay)
        if (has_head_params or text_params)
        else None
    )

    captions_of: dict[int, list[str]] = {}
    index_of = {v: i for i, v in enumerate(data.bank.ids)}
    for caption in data.captions:
        captions_of.setdefault(index_of[caption.video_id], []).append(caption.text)
    videos = np.array(sorted(captions_of))
    if len(videos) < 2:
        raise Clip4ClipError("training needs at least 2 videos with captions")
    batch = min(config.batch_size, len(videos))
    steps_per_epoch = len(videos) // batch
    group_of = {index_of[v]: g for v, g in data.groups.items()}
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(total * config.warmup_fraction))
    frames, mask = data.bank.frames.to(device), data.bank.mask.to(device)
    losses: list[float] = []
    log_lines: list[str] = []
    started = time.perf_counter()
    model.train(train_text)
    head.train()
    bar = tqdm(total=total, desc=f"train {config.head.name}", unit="step", disable=not progress)
    step = 0
    for epoch in range(config.epochs):
        order = _grouped_order(videos, group_of, rng)
        for start in range(0, steps_per_epoch * batch, batch):
            chosen = order[start : start + batch]
            texts = [captions_of[v][rng.integers(len(captions_of[v]))] for v in chosen]
            with torch.set_grad_enabled(train_text):
                text = encode_captions(model, tokenizer, texts)
            scores = head.similarity(text, frames[chosen], mask[chosen])
            logits = scores if head.cross_encoder else scores * config.logit_scale
            target = torch.arange(len(chosen), device=device)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
            if optimizer is not None:
                factor = _lr_factor(step, total, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in optimizer.param_groups for p in g["params"]], config.grad_clip
                    )
                optimizer.step()
            losses.append(float(loss.detach()))
            log_lines.append(json.dumps({"step": step, "epoch": epoch, "loss": losses[-1]}))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            step += 1
    bar.close()
    model.eval()
    head.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if out_dir is not None:
        out = Path(out_dir)
        save_head(out / HEAD_FILE, head, clip, config, step=step, seconds=time.perf_counter() - started)
        (out / "log.jsonl").write_text("\n".join(log_lines) + "\n")
        plot_losses(losses, out / "loss.png", f"{config.head.name} training loss")
    return TrainedHead(head, clip, losses)


def plot_losses(losses: list[float], path: Path, title: str) -> Path:
    from matplotlib.figure import Figure  # no pyplot: the demo's apps plot from several threads at once

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(losses, lw=1)
    ax.set(xlabel="step", ylabel="symmetric CE", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def save_head(path: Path, head: SimilarityHead, clip, config: TrainConfig, **extra) -> Path:
    """Atomically write the head checkpoint (weights only, loadable with weights_only=True)."""
    text_state = None
    if config.lr_clip > 0:
        text_state = {
            n: p.detach().cpu().clone()
            for n, p in clip.model.state_dict().items()
            if n.startswith(TEXT_PREFIXES)
        }
    state = {
        "format": HEAD_FORMAT,
        "head_config": asdict(config.head),
        "embed_dim": clip.embed_dim,
        "state_dict": {k: v.cpu() for k, v in head.state_dict().items()},
        "text_state": text_state,
        "clip_model_name": clip.model_name,
        "clip_identity": clip.identity,
        "visual_fingerprint": visual_fingerprint(clip.model),
        "sampling": asdict(config.sampling),
        "train_config": {k: v for k, v in asdict(config).items() if k not in ("head", "sampling")},
        **extra,
    }
    return save_state(path, state)


def resolve_head_checkpoint(path: str | Path) -> Path:
    return state_file(path, HEAD_FILE, HeadCheckpointError, "train one with `python -m apps.clip4clip train`")


def _read_head_state(path: Path) -> dict:
    return read_state(path, HEAD_FORMAT, HeadCheckpointError, "clip4clip head checkpoint")


def read_head_sampling(path: str | Path) -> FrameSampling:
    """The frame sampling a head was trained with (index and evaluate default to it)."""
    return FrameSampling(**_read_head_state(resolve_head_checkpoint(path))["sampling"])


def load_head(path: str | Path, clip) -> tuple[SimilarityHead, FrameSampling, dict]:
    """Head (eval mode) from a checkpoint file or run dir; also loads its fine-tuned text encoder into `clip`.

    Raises HeadCheckpointError naming both models when the head was trained for another width.
    """
    path = resolve_head_checkpoint(path)
    state = _read_head_state(path)
    check_width(path, state, clip, HeadCheckpointError)
    config = HeadConfig(**state["head_config"])
    head = build_head(config, clip.embed_dim, None)
    head.load_state_dict(state["state_dict"])
    if state.get("text_state"):
        missing = clip.model.load_state_dict(state["text_state"], strict=False).unexpected_keys
        if missing:
            raise HeadCheckpointError(f"{path}: its text encoder weights do not fit {clip.model_name}")
    device = next(clip.model.parameters()).device
    return head.to(device).eval(), FrameSampling(**state["sampling"]), state


@torch.no_grad()
def similarity_matrix(
    clip, head: SimilarityHead, texts: list[str], bank: VideoBank, chunk: int = 256
) -> torch.Tensor:
    """Scores [texts, videos] of every caption against every video of the bank."""
    device = next(clip.model.parameters()).device
    text = encode_captions(clip.model, clip.tokenizer, texts)
    frames, mask = bank.frames.to(device), bank.mask.to(device)
    if head.cross_encoder:
        return torch.cat(
            [head.similarity(text[i : i + chunk], frames, mask) for i in range(0, len(texts), chunk)]
        ).cpu()
    videos = head.video_embedding(frames, mask)
    return (F.normalize(text, dim=-1) @ videos.t()).cpu()


def evaluate_head(
    clip,
    head: SimilarityHead,
    data: VideoCaptionData,
    kinds: tuple[str | None, ...] = (None,),
    use_dual_softmax: bool = False,
    ties: str = "pessimistic",
) -> dict[str, dict[str, RetrievalMetrics]]:
    """Retrieval metrics per caption kind (None = all captions) over the videos of `data`."""
    results = {}
    index_of = {v: i for i, v in enumerate(data.bank.ids)}
    for kind in kinds:
        captions = [c for c in data.captions if kind is None or c.kind == kind]
        if not captions:
            raise Clip4ClipError(f"no caption of kind {kind!r} to evaluate on")
        similarity = similarity_matrix(clip, head, [c.text for c in captions], data.bank)
        if use_dual_softmax:
            similarity = dual_softmax(similarity)
        text_video = np.array([index_of[c.video_id] for c in captions])
        results[kind or "all"] = retrieval_metrics(similarity.numpy(), text_video, ties)
    return results


def metrics_report(results: dict[str, dict[str, RetrievalMetrics]], head_name: str) -> str:
    return "\n\n".join(format_table(m, f"{head_name}, captions: {kind}") for kind, m in results.items())
