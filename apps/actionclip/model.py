"""ActionCLIP's head on a frozen CLIP: frame features fused over time, matched with label prompts.

- visual prompt, post-network (the paper's best): the frame features of the frozen image encoder
  are fused by `meanP` (masked mean, order-blind: frame averaging) or `transf` (meanP plus a
  temporal Transformer with frame positions: CLIP4Clip's seqTransf from apps.clip4clip.heads);
- fine-tuning: a residual linear adapter on the video embedding, starting at zero, so an
  untrained head IS zero-shot CLIP with frame averaging; the text side stays CLIP's own
  prompt ensemble (see apps.actionclip.train for why);
- scores: cosine of the video embedding with each label's embedding (prompts averaged), times a
  learned logit scale (starting at CLIP's 100).

A head checkpoint (`head.pt`) holds the head, the labels and templates it was trained with, the
frame sampling, and the CLIP it belongs to (width and image-encoder fingerprint).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from apps.actionclip.errors import ActionClipError
from apps.clip4clip.cache import visual_fingerprint
from apps.clip4clip.heads import HeadConfig, build_head, masked_mean
from apps.clip4clip.video import FrameSampling
from models.states import check_width, read_state, save_state, state_file

FUSIONS: tuple[str, ...] = ("meanP", "transf")
HEAD_FILE = "head.pt"
HEAD_FORMAT = "actionclip-head/1"


class HeadCheckpointError(ActionClipError):
    """A head checkpoint that is missing, unreadable, or belongs to another CLIP."""


@dataclass(frozen=True)
class FusionConfig:
    fusion: Literal["meanP", "transf"] = field(
        default="transf", metadata={"help": "meanP (frame averaging) or transf (plus a temporal Transformer)"}
    )
    max_frames: int = field(default=8, metadata={"help": "frames per video, uniformly over its length"})
    layers: int = field(
        default=1, metadata={"help": "temporal Transformer blocks (ActionCLIP: 6 on ViT-B/32)"}
    )

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ActionClipError(f"unknown fusion {self.fusion!r}: use one of {', '.join(FUSIONS)}")
        if self.max_frames < 1 or self.layers < 1:
            raise ActionClipError(f"max_frames={self.max_frames}, layers={self.layers}: both must be >= 1")


class ActionHead(nn.Module):
    """video = frame average (+ adapter) [+ temporal Transformer over what changes in the clip].

    The temporal branch (transf) sees the frames standardised with the training frames' statistics
    and centred over time: CLIP features of small shapes are dominated by what the shape IS (a
    norm of about 30), while where it is, how big and how visible move them by a few percent;
    centring removes the identity the average already carries and leaves the motion. Its output
    enters through a zero-initialised projection, so at step 0 transf equals meanP.
    """

    def __init__(self, config: FusionConfig, embed_dim: int, clip_model: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim
        self.video_adapter = _zero_linear(embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))
        self.register_buffer("frame_mean", torch.zeros(embed_dim))
        self.register_buffer("frame_std", torch.ones(embed_dim))
        self.temporal = None
        if config.fusion == "transf":
            self.temporal = build_head(
                HeadConfig("seqTransf", config.max_frames, config.layers), embed_dim, clip_model
            )
            # Positions on the scale of standardised features (clip4clip's 0.01 suits raw CLIP features).
            nn.init.normal_(self.temporal.frame_position.weight, std=0.3)
            self.temporal_projection = _zero_linear(embed_dim)

    def set_frame_statistics(self, frames: torch.Tensor, mask: torch.Tensor) -> None:
        """Standardise the temporal branch's input with the mean and spread of these (training) frames."""
        real = frames[mask]
        self.frame_mean.copy_(real.mean(dim=0))
        self.frame_std.copy_(real.std(dim=0).clamp(min=1e-6))

    def video_embedding(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[videos, dim] unit vectors from raw frame features [videos, frames, dim] and a [videos, frames] mask."""
        static = masked_mean(F.normalize(frames, dim=-1), mask)
        video = static + self.video_adapter(static)
        if self.temporal is not None:
            weights = mask.unsqueeze(-1).to(frames.dtype)
            z = (frames - self.frame_mean) / self.frame_std
            z = (z - (z * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)) * weights
            video = video + self.temporal_projection(self.temporal.video_embedding(z, mask))
        return F.normalize(video, dim=-1)

    @staticmethod
    def prompt_embedding(text: torch.Tensor) -> torch.Tensor:
        """Unit vectors of raw prompt features [..., dim] (the text side stays CLIP's own)."""
        return F.normalize(text, dim=-1)

    def label_embeddings(self, prompts: torch.Tensor) -> torch.Tensor:
        """[labels, dim] from prompt features [labels, templates, dim]: the mean over templates, renormalised
        (open_clip's zero-shot classifier)."""
        return F.normalize(self.prompt_embedding(prompts).mean(dim=1), dim=-1)

    def scores(self, frames, mask, labels: torch.Tensor) -> torch.Tensor:
        """Logits [videos, labels] (label embeddings from `label_embeddings`)."""
        return self.logit_scale.exp().clamp(max=100.0) * self.video_embedding(frames, mask) @ labels.t()


def _zero_linear(dim: int) -> nn.Linear:
    """A linear layer that outputs zeros until trained: a residual adapter that starts as the identity."""
    layer = nn.Linear(dim, dim)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def zero_shot_head(embed_dim: int, max_frames: int) -> ActionHead:
    """CLIP zero-shot with frame averaging: an untrained meanP head (its adapters are zero)."""
    return ActionHead(FusionConfig("meanP", max_frames, 1), embed_dim).eval()


def save_head(path: Path, head: ActionHead, clip, sampling: FrameSampling, **extra) -> Path:
    """Atomically write the head checkpoint (plain tensors and values: loads with weights_only=True)."""
    state = {
        "format": HEAD_FORMAT,
        "fusion": asdict(head.config),
        "embed_dim": head.embed_dim,
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "clip_model_name": clip.model_name,
        "clip_identity": clip.identity,
        "visual_fingerprint": visual_fingerprint(clip.model),
        "sampling": asdict(sampling),
        **extra,
    }
    return save_state(path, state)


def resolve_head(path: str | Path) -> Path:
    return state_file(
        path, HEAD_FILE, HeadCheckpointError, "train one with `python -m apps.actionclip train`"
    )


def read_head_state(path: str | Path) -> dict:
    return read_state(resolve_head(path), HEAD_FORMAT, HeadCheckpointError, "actionclip head checkpoint")


def load_head(path: str | Path, clip) -> tuple[ActionHead, FrameSampling, dict]:
    """(head in eval mode, its frame sampling, the checkpoint's metadata); refuses a head of another width."""
    path = resolve_head(path)
    state = read_head_state(path)
    check_width(path, state, clip, HeadCheckpointError)
    head = ActionHead(FusionConfig(**state["fusion"]), clip.embed_dim)
    head.load_state_dict(state["state_dict"])
    device = next(clip.model.parameters()).device
    return head.to(device).eval(), FrameSampling(**state["sampling"]), state
