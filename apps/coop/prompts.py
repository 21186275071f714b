"""Learned prompts: CoOp's context vectors and CoCoOp's meta-network, run through CLIP's own text tower.

CoOp (Zhou et al., IJCV 2022) replaces the words of a hand prompt ("a photo of a") with M vectors
in the token-embedding space, learned by gradient descent while CLIP stays frozen:

    [SOS] [V]_1 ... [V]_M  yellow green . [EOS]        class token at the end
    [SOS] [V]_1 ... [V]_M/2  yellow green  [V]_M/2+1 ... [V]_M . [EOS]     in the middle

One set of vectors for all classes (unified) or one per class (class-specific). CoCoOp (CVPR 2022)
adds a small meta-network (Linear -> ReLU -> Linear, hidden width D/16) that maps each image's
feature to a shift added to every context vector, so the prompt depends on the image.

The text tower is run exactly as open_clip's `CLIP.encode_text` does, with the learned vectors in
place of the token embeddings of the context slots (see `encode_token_embeddings`); with the
context initialised from "a photo of a" it gives the hand prompt's features (a test checks this).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool
from torch import nn

from apps.coop.data import check_classnames
from common.errors import UserError
from models import LoadedCLIP
from models.states import read_state, save_state, state_file

FORMAT = "coop-prompts/1"
Position = Literal["end", "middle"]


class PromptError(UserError, ValueError):
    """Prompts cannot be built, loaded or used with this CLIP; the message names the input and the fix."""


@dataclass(frozen=True)
class PromptSpec:
    """What is learned: M context vectors, unified or per class, where the class name goes, CoCoOp or not."""

    n_ctx: int = 4
    ctx_init: str | None = None  # e.g. "a photo of a": start from these words' embeddings (M = their count)
    class_specific: bool = False
    position: Position = "end"
    cocoop: bool = False

    def __post_init__(self) -> None:
        if self.n_ctx < 1:
            raise PromptError(f"--ctx {self.n_ctx}: need at least 1 context vector")
        if self.position not in ("end", "middle"):
            raise PromptError(f"--class-token {self.position!r}: use end or middle")
        if self.cocoop and self.class_specific:
            raise PromptError("--cocoop uses one context for all classes; drop --class-specific")

    @property
    def method(self) -> str:
        if self.cocoop:
            return "CoCoOp"
        return "CoOp (class-specific)" if self.class_specific else "CoOp"


def text_tower(model: nn.Module) -> CLIP:
    """The CLIP whose built-in text tower we run; other architectures are named and refused."""
    if not isinstance(model, CLIP) or getattr(model, "text_pool_type", "argmax") not in (
        "argmax",
        "eos",
        "last",
    ):
        raise PromptError(
            f"learned prompts need an open_clip CLIP with its own text transformer; {type(model).__name__} "
            "(e.g. an HF text tower) is not supported"
        )
    return model


def encode_token_embeddings(model: CLIP, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`CLIP.encode_text` from token embeddings [N, L, W] instead of token ids; `tokens` [N, L] picks the pooled slot."""
    cast_dtype = model.transformer.get_cast_dtype()
    x = embeddings.to(cast_dtype) + model.positional_embedding.to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, nn.Linear)
            else x @ model.text_projection
        )
    return x


@dataclass
class PromptLayout:
    """Token ids of the prompts of a list of classes and where the context slots are."""

    tokens: torch.Tensor  # [C, L] ids; context slots hold a placeholder
    ctx_mask: torch.Tensor  # [C, L] bool, exactly M True per row, in context order


def prompt_layout(tokenizer, classnames: list[str], n_ctx: int, position: Position) -> PromptLayout:
    """[SOS] ctx name . [EOS] (end) or [SOS] ctx[:M/2] name ctx[M/2:] . [EOS] (middle), padded to L."""
    length = tokenizer.context_length
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    dot = tokenizer.encode(".")
    placeholder = tokenizer.encode("X")[0]
    rows, masks = [], []
    for name in classnames:
        name_ids = tokenizer.encode(name)
        half = n_ctx // 2 if position == "middle" else n_ctx
        ids = [sot] + [placeholder] * half + name_ids + [placeholder] * (n_ctx - half) + dot + [eot]
        mask = [False] + [True] * half + [False] * len(name_ids) + [True] * (n_ctx - half)
        if len(ids) > length:
            room = length - (len(ids) - n_ctx)
            raise PromptError(
                f"class {name!r} ({len(name_ids)} tokens) with {n_ctx} context vectors needs {len(ids)} tokens, "
                f"but this CLIP's text context is {length}: use --ctx {max(room, 0)} or fewer, or a shorter name"
            )
        rows.append(ids + [0] * (length - len(ids)))
        masks.append(mask + [False] * (length - len(mask)))
    return PromptLayout(torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.bool))


class MetaNet(nn.Sequential):
    """CoCoOp's meta-network: image feature [B, D] -> context shift [B, W] (Linear, ReLU, Linear; hidden D/16)."""

    def __init__(self, vis_dim: int, ctx_dim: int):
        hidden = max(1, vis_dim // 16)
        super().__init__(nn.Linear(vis_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, ctx_dim))


class LearnedPrompts(nn.Module):
    """The learnable part: context vectors [M, W] (or [C, M, W] class-specific) and CoCoOp's meta-network."""

    def __init__(self, spec: PromptSpec, ctx: torch.Tensor, classnames: list[str], embed_dim: int):
        super().__init__()
        self.spec = spec
        self.classnames = list(classnames)  # the trained classes (class-specific prompts know only these)
        self.ctx = nn.Parameter(ctx)
        self.meta_net = MetaNet(embed_dim, ctx.shape[-1]) if spec.cocoop else None

    @property
    def width(self) -> int:
        return self.ctx.shape[-1]

    @classmethod
    def initial(
        cls, clip: LoadedCLIP, classnames: list[str], spec: PromptSpec, seed: int = 0
    ) -> LearnedPrompts:
        """Context from `spec.ctx_init`'s word embeddings, else N(0, 0.02) as in CoOp; meta-net by `seed`."""
        model = text_tower(clip.model)
        classnames = check_classnames(classnames)
        generator = torch.Generator().manual_seed(seed)
        width = model.token_embedding.weight.shape[1]
        if spec.ctx_init:
            ids = clip.tokenizer.encode(spec.ctx_init)
            if len(ids) != spec.n_ctx:
                raise PromptError(
                    f"--init {spec.ctx_init!r} is {len(ids)} tokens but --ctx is {spec.n_ctx}: make them agree"
                )
            with torch.no_grad():
                words = model.token_embedding.weight[torch.tensor(ids)].detach().float().cpu().clone()
            ctx = words.repeat(len(classnames), 1, 1) if spec.class_specific else words
        else:
            shape = (len(classnames), spec.n_ctx, width) if spec.class_specific else (spec.n_ctx, width)
            ctx = torch.randn(shape, generator=generator) * 0.02
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the meta-network's nn.Linear init, from this seed
            prompts = cls(spec, ctx, classnames, clip.embed_dim)
        prompt_layout(
            clip.tokenizer, classnames, spec.n_ctx, spec.position
        )  # fails now if a name does not fit
        return prompts


class PromptClassifier:
    """A frozen CLIP with learned prompts: text features for any class names, logits for image features.

    `text_features_for(names)` is what a search app or `training.evaluate` calls: unit-norm [C, D]
    for CoOp; for CoCoOp pass the images' features to get their own [B, C, D] (without them, the
    context without any image's shift is used).
    """

    def __init__(self, clip: LoadedCLIP, prompts: LearnedPrompts):
        self.clip = clip
        self.model = text_tower(clip.model)
        self.prompts = prompts
        self.device = next(self.model.parameters()).device
        check_compatible(clip, prompts)
        self._layouts: dict[tuple[str, ...], PromptLayout] = {}

    def _layout(self, classnames: tuple[str, ...]) -> tuple[PromptLayout, torch.Tensor]:
        if classnames not in self._layouts:
            spec = self.prompts.spec
            layout = prompt_layout(self.clip.tokenizer, list(classnames), spec.n_ctx, spec.position)
            self._layouts[classnames] = PromptLayout(
                layout.tokens.to(self.device), layout.ctx_mask.to(self.device)
            )
        layout = self._layouts[classnames]
        with torch.no_grad():
            embedded = self.model.token_embedding(layout.tokens)
        return layout, embedded

    def _class_ctx(self, classnames: list[str]) -> torch.Tensor:
        """Context per class [C, M, W]."""
        ctx = self.prompts.ctx
        if not self.prompts.spec.class_specific:
            return ctx.unsqueeze(0).expand(len(classnames), -1, -1)
        known = {n.lower(): i for i, n in enumerate(self.prompts.classnames)}
        unknown = [n for n in classnames if n.lower() not in known]
        if unknown:
            raise PromptError(
                f"class-specific prompts know only their {len(known)} trained classes; no context for "
                f"{', '.join(map(repr, unknown[:5]))}: train unified prompts (without --class-specific) for new classes"
            )
        return ctx[torch.tensor([known[n.lower()] for n in classnames], device=ctx.device)]

    def text_features_for(
        self, classnames: list[str], image_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unit-norm text features: [C, D], or [B, C, D] for CoCoOp given image features [B, D]."""
        classnames = check_classnames(list(classnames), minimum=1)
        layout, embedded = self._layout(tuple(classnames))
        ctx = self._class_ctx(classnames).to(self.device)  # [C, M, W]
        meta = self.prompts.meta_net
        if meta is None or image_features is None:
            x = embedded.clone()
            x[layout.ctx_mask] = ctx.reshape(-1, ctx.shape[-1]).to(x.dtype)
            return F.normalize(encode_token_embeddings(self.model, x, layout.tokens), dim=-1)
        shift = meta(F.normalize(image_features.to(self.device).float(), dim=-1))  # [B, W]
        b, c = shift.shape[0], len(classnames)
        shifted = ctx.unsqueeze(0) + shift[:, None, None, :]  # [B, C, M, W]
        x = embedded.unsqueeze(0).expand(b, -1, -1, -1).clone()
        x[layout.ctx_mask.unsqueeze(0).expand(b, -1, -1)] = shifted.reshape(-1, shifted.shape[-1]).to(x.dtype)
        tokens = layout.tokens.unsqueeze(0).expand(b, -1, -1).reshape(b * c, -1)
        feats = encode_token_embeddings(self.model, x.reshape(b * c, *x.shape[2:]), tokens)
        return F.normalize(feats, dim=-1).reshape(b, c, -1)

    def logits(self, image_features: torch.Tensor, classnames: list[str]) -> torch.Tensor:
        """CLIP's scaled cosine similarities [B, C] between images and the classes' learned prompts."""
        image_features = F.normalize(image_features.to(self.device).float(), dim=-1)
        scale = self.model.logit_scale.exp()
        text = self.text_features_for(
            classnames, image_features if self.prompts.meta_net is not None else None
        )
        if text.dim() == 3:
            return scale * torch.einsum("bd,bcd->bc", image_features, text)
        return scale * image_features @ text.T

    @torch.no_grad()
    def classifier_weights(self, classnames: list[str]) -> torch.Tensor:
        """[D, C] zero-shot weight matrix, as open_clip's `build_zero_shot_classifier` returns (CoOp)."""
        return self.text_features_for(classnames).T


def clip_signature(clip: LoadedCLIP) -> dict:
    model = text_tower(clip.model)
    return {
        "model_name": clip.model_name,
        "identity": clip.identity,
        "text_width": int(model.token_embedding.weight.shape[1]),
        "embed_dim": int(clip.embed_dim),
        "context_length": int(clip.tokenizer.context_length),
    }


def check_compatible(clip: LoadedCLIP, prompts: LearnedPrompts, source: str = "prompts") -> None:
    """One-line error when the prompts were learned for a CLIP of another text width or embedding size."""
    sig = clip_signature(clip)
    if prompts.width != sig["text_width"]:
        raise PromptError(
            f"{source}: context vectors are {prompts.width} wide but CLIP {clip.model_name} ({clip.identity}) "
            f"has a {sig['text_width']}-wide text tower: load the CLIP the prompts were trained with"
        )
    if prompts.meta_net is not None and prompts.meta_net[0].in_features != sig["embed_dim"]:
        raise PromptError(
            f"{source}: CoCoOp meta-network takes {prompts.meta_net[0].in_features}-d image features but CLIP "
            f"{clip.model_name} embeds in {sig['embed_dim']}-d: load the CLIP the prompts were trained with"
        )


def save_prompts(
    path: Path | str, prompts: LearnedPrompts, clip: LoadedCLIP, extra: dict | None = None
) -> Path:
    """Write the prompts atomically (temp name, fsync, rename): a reader never sees half a file."""
    state = {
        "format": FORMAT,
        "spec": asdict(prompts.spec),
        "classnames": prompts.classnames,
        "ctx": prompts.ctx.detach().cpu().clone(),
        "meta_net": None
        if prompts.meta_net is None
        else {k: v.detach().cpu().clone() for k, v in prompts.meta_net.state_dict().items()},
        "clip": clip_signature(clip),
        "extra": extra or {},
    }
    return save_state(path, state)


def resolve_prompts(path: Path | str) -> Path:
    """A prompts file as given, or RUN/prompts.pt of a run folder."""
    return state_file(
        path,
        "prompts.pt",
        PromptError,
        "pass the prompts.pt (or run folder) `python -m apps.coop train` wrote",
    )


def load_prompts(path: Path | str, clip: LoadedCLIP | None = None) -> tuple[LearnedPrompts, dict]:
    """(prompts, saved state) from a prompts file; checked against `clip` when given."""
    path = resolve_prompts(path)
    state = read_state(path, FORMAT, PromptError, "prompts file written by `python -m apps.coop train`")
    spec = PromptSpec(**state["spec"])
    embed_dim = state["clip"]["embed_dim"]
    prompts = LearnedPrompts(spec, state["ctx"], state["classnames"], embed_dim)
    if state["meta_net"] is not None:
        prompts.meta_net.load_state_dict(state["meta_net"])
    if clip is not None:
        check_compatible(clip, prompts, str(path))
        if state["clip"]["identity"] != clip.identity:
            print(
                f"warning: {path} was learned with CLIP {state['clip']['identity']}, now used with {clip.identity}",
                file=sys.stderr,
            )
    return prompts, state
