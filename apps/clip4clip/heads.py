"""CLIP4Clip similarity heads: how a video's frame features and a caption's feature become a score.

- meanP: masked mean of the normalised frame features (no parameters; order-blind);
- seqLSTM: an LSTM over the frames, residual to the frame features, then the masked mean;
- seqTransf: frame position embedding + transformer blocks (initialised from the CLIP text
  transformer when its width equals the embedding width), residual, padded frames masked out;
- tightTransf: a cross-encoder over [caption feature, frames] scoring each pair with a linear
  layer; no video embedding exists on its own, so it cannot use a vector index.

Padded frames never count: a video must have at least one real frame (the reader rejects the
others), and the heads refuse an all-padding row rather than divide by zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.transformer import Transformer
from torch import nn

from apps.clip4clip.errors import Clip4ClipError

HEAD_NAMES: tuple[str, ...] = ("meanP", "seqLSTM", "seqTransf", "tightTransf")


@dataclass(frozen=True)
class HeadConfig:
    name: str = "meanP"
    max_frames: int = 12  # size of the frame position embedding
    layers: int = field(
        default=4, metadata={"help": "transformer blocks of seqTransf/tightTransf (CLIP4Clip: 4)"}
    )

    def __post_init__(self) -> None:
        if self.name not in HEAD_NAMES:
            raise Clip4ClipError(f"unknown head {self.name!r}: use one of {', '.join(HEAD_NAMES)}")
        if self.layers < 1 or self.max_frames < 1:
            raise Clip4ClipError(
                f"head layers={self.layers}, max_frames={self.max_frames}: both must be >= 1"
            )


def _check_mask(mask: torch.Tensor) -> None:
    if not bool(mask.any(dim=1).all()):
        raise Clip4ClipError("a video in the batch has no frame (all padding): reject it before scoring")


def masked_mean(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real frames of [B, T, D] with a [B, T] bool mask, then L2-normalised."""
    _check_mask(mask)
    weights = mask.to(frames.dtype).unsqueeze(-1)
    pooled = (frames * weights).sum(dim=1) / weights.sum(dim=1)
    return F.normalize(pooled, dim=-1)


class SimilarityHead(nn.Module):
    """Base: `video_embedding` for the dual-encoder heads; `similarity` gives [texts, videos] scores."""

    cross_encoder = False

    def __init__(self, config: HeadConfig, embed_dim: int):
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim

    def video_embedding(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def similarity(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cosine similarity [texts, videos] of raw text features [N, D] and frames [B, T, D]."""
        return F.normalize(text, dim=-1) @ self.video_embedding(frames, mask).t()


class MeanPooling(SimilarityHead):
    def video_embedding(self, frames, mask):
        return masked_mean(F.normalize(frames, dim=-1), mask)


class SequenceLSTM(SimilarityHead):
    def __init__(self, config: HeadConfig, embed_dim: int):
        super().__init__(config, embed_dim)
        self.lstm = nn.LSTM(embed_dim, embed_dim, batch_first=True)

    def video_embedding(self, frames, mask):
        _check_mask(mask)
        lengths = mask.sum(dim=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(frames, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        output, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=frames.shape[1])
        return masked_mean(F.normalize(output + frames, dim=-1), mask)


def _text_transformer_init(clip_model: nn.Module | None, width: int, layers: int) -> tuple[dict, int, type]:
    """(state of the first `layers` text blocks, heads, activation) when the widths match, else ({}, 0, GELU)."""
    text = getattr(clip_model, "transformer", None) if clip_model is not None else None
    if text is None or getattr(text, "width", None) != width or not hasattr(text, "resblocks"):
        return {}, 0, nn.GELU
    first = text.resblocks[0]
    state = {k: v for k, v in text.state_dict().items() if int(k.split(".")[1]) < layers}
    return state, first.attn.num_heads, type(first.mlp.gelu)


class TemporalTransformer(SimilarityHead):
    """seqTransf: position embedding, transformer over frames, residual, masked mean."""

    def __init__(self, config: HeadConfig, embed_dim: int, clip_model: nn.Module | None = None):
        super().__init__(config, embed_dim)
        state, heads, act = _text_transformer_init(clip_model, embed_dim, config.layers)
        heads = heads or max(1, embed_dim // 64)
        self.frame_position = nn.Embedding(config.max_frames, embed_dim)
        nn.init.normal_(self.frame_position.weight, std=0.01)
        self.transformer = Transformer(embed_dim, config.layers, heads, act_layer=act)
        self.heads = heads
        loaded = 0
        if state:
            # CLIP4Clip copies CLIP's text blocks into the temporal transformer ("initialised from CLIP").
            result = self.transformer.load_state_dict(state, strict=False)
            loaded = len(state) - len(result.unexpected_keys)
        self.initialised_from_text = loaded > 0

    def video_embedding(self, frames, mask):
        _check_mask(mask)
        batch, length, _ = frames.shape
        if length > self.config.max_frames:
            raise Clip4ClipError(
                f"{length} frames per video but the head has {self.config.max_frames} positions"
            )
        positions = torch.arange(length, device=frames.device)
        x = frames + self.frame_position(positions).unsqueeze(0)
        # Padded frames are keys nobody attends to; real frames always have themselves to attend to.
        blocked = torch.zeros(batch, length, length, device=frames.device, dtype=frames.dtype)
        blocked = blocked.masked_fill(~mask.unsqueeze(1), float("-inf"))
        attn_mask = blocked.repeat_interleave(self.heads, dim=0)
        x = self.transformer(x, attn_mask=attn_mask)
        return masked_mean(F.normalize(x + frames, dim=-1), mask)


class TightTransformer(SimilarityHead):
    """tightTransf: a cross-encoder over [text, frame 1..T] with type and position embeddings."""

    cross_encoder = True

    def __init__(self, config: HeadConfig, embed_dim: int, clip_model: nn.Module | None = None):
        super().__init__(config, embed_dim)
        state, heads, act = _text_transformer_init(clip_model, embed_dim, config.layers)
        heads = heads or max(1, embed_dim // 64)
        self.heads = heads
        self.position = nn.Embedding(config.max_frames + 1, embed_dim)
        self.token_type = nn.Embedding(2, embed_dim)  # 0 text, 1 frame
        for emb in (self.position, self.token_type):
            nn.init.normal_(emb.weight, std=0.01)
        self.transformer = Transformer(embed_dim, config.layers, heads, act_layer=act)
        if state:
            self.transformer.load_state_dict(state, strict=False)
        self.initialised_from_text = bool(state)
        self.norm = nn.LayerNorm(embed_dim)
        self.score = nn.Linear(embed_dim, 1)

    def similarity(self, text, frames, mask, chunk: int = 4096):
        """Scores [texts, videos] from every (text, video) pair through the cross-encoder."""
        _check_mask(mask)
        n_text, (n_video, length, dim) = text.shape[0], frames.shape
        if length > self.config.max_frames:
            raise Clip4ClipError(
                f"{length} frames per video but the head has {self.config.max_frames} positions"
            )
        pair_text = text.unsqueeze(1).expand(n_text, n_video, dim).reshape(-1, 1, dim)
        pair_frames = frames.unsqueeze(0).expand(n_text, -1, -1, -1).reshape(-1, length, dim)
        pair_mask = mask.unsqueeze(0).expand(n_text, -1, -1).reshape(-1, length)
        scores = []
        for start in range(0, pair_text.shape[0], chunk):
            scores.append(
                self._score(
                    pair_text[start : start + chunk],
                    pair_frames[start : start + chunk],
                    pair_mask[start : start + chunk],
                )
            )
        return torch.cat(scores).view(n_text, n_video)

    def _score(self, text, frames, mask):
        x = torch.cat([text, frames], dim=1)
        length = x.shape[1]
        types = torch.ones(length, dtype=torch.long, device=x.device)
        types[0] = 0
        x = x + self.position(torch.arange(length, device=x.device)) + self.token_type(types)
        keep = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        blocked = torch.zeros(x.shape[0], length, length, device=x.device, dtype=x.dtype)
        blocked = blocked.masked_fill(~keep.unsqueeze(1), float("-inf"))
        x = self.transformer(x, attn_mask=blocked.repeat_interleave(self.heads, dim=0))
        return self.score(self.norm(x[:, 0])).squeeze(-1)

    def video_embedding(self, frames, mask):
        raise TypeError(
            "tightTransf is a cross-encoder: it scores (text, video) pairs and has no video embedding"
        )


def build_head(config: HeadConfig, embed_dim: int, clip_model: nn.Module | None = None) -> SimilarityHead:
    """The head named in `config`; transformer heads copy CLIP text blocks when widths match."""
    if config.name == "meanP":
        return MeanPooling(config, embed_dim)
    if config.name == "seqLSTM":
        return SequenceLSTM(config, embed_dim)
    if config.name == "seqTransf":
        return TemporalTransformer(config, embed_dim, clip_model)
    return TightTransformer(config, embed_dim, clip_model)


def dual_softmax(similarity: torch.Tensor, temperature: float = 100.0) -> torch.Tensor:
    """Dual-softmax re-ranking (CAMoE): weight each score by a softmax over the other queries.

    `similarity` is [texts, videos]; the prior is taken over texts (dim 0), so a video that every
    text likes is damped. Only meaningful when many queries are scored together (evaluation).
    """
    return similarity * F.softmax(similarity * temperature, dim=0)
