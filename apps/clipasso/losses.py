"""CLIPasso's losses: geometric (L2 of intermediate CLIP activations) + semantic (1 - cosine of embeddings).

Intermediate activations are caught by forward hooks: ResNet stages for ModifiedResNet models (the paper
uses layer2 and layer3 of RN101), transformer block outputs for ViTs (chosen as fractions of the depth, so
one setting fits a 3-block demo model and a 12-block ViT-B-32). Hooks rather than open_clip's
`forward_intermediates`, whose ModifiedResNet version stops at the last requested stage and then fails in
the attention pool (open_clip 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from models import LoadedCLIP

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class LossConfig:
    """Weights as in the paper for a 224 px model: geometric 1.0 on two middle stages, semantic 0.1.

    None means "chosen by the model's input size" (`resolved`): `resnet_stages` by the size of their grid
    (`resnet_stages_for`: the paper's layer2 and layer3 at 224 px, layer1 and layer2 for the 64 px demo
    model), `semantic_weight` by `semantic_weight_for` (0.1 at 224 px and above, 1.0 below).
    """

    geometric_weight: float = field(
        default=1.0, metadata={"help": "weight of the L2 between intermediate CLIP activations (the paper's)"}
    )
    semantic_weight: float | None = field(
        default=None,
        metadata={
            "help": "weight of 1 - cosine of the CLIP embeddings (default: the paper's 0.1 for models of 224 px "
            "and more, 1.0 for smaller inputs such as the demo model; see docs/clipasso.md)"
        },
    )
    resnet_stages: tuple[int, ...] | None = None  # 0 stem, 1..3 layer1..layer3; None: by grid size
    vit_depth_fractions: tuple[float, ...] = (0.5, 0.75)  # block outputs at these fractions of the depth

    def resolved(self, image_size: int) -> LossConfig:
        """The same settings with every None replaced by the choice for a model of this input size."""
        return replace(
            self,
            semantic_weight=(
                semantic_weight_for(image_size) if self.semantic_weight is None else self.semantic_weight
            ),
            resnet_stages=self.resnet_stages or resnet_stages_for(image_size),
        )


# ModifiedResNet downsampling: the stem and layer1 divide the input by 4, each later stage by 2 more.
# layer4 (stride 32) feeds the attention pool and is never a geometric layer, as in the paper.
_RESNET_STRIDES = {0: 4, 1: 4, 2: 8, 3: 16}
MIN_GRID = 8  # cells across: a coarser map cannot tell where a stroke lies (layer4 of RN101 is 7x7)


def resnet_stages_for(image_size: int) -> tuple[int, ...]:
    """The two deepest ResNet stages up to layer3 whose output grid is at least MIN_GRID cells across.

    At 224 px these are layer2 (28 x 28) and layer3 (14 x 14), the paper's choice for RN101. At the demo
    model's 64 px, layer3 is a 4 x 4 grid that cannot place a stroke, so layer1 (16 x 16) and layer2
    (8 x 8) are used: the sketch then traces outlines (docs/clipasso.md).
    """
    fine = [stage for stage, stride in _RESNET_STRIDES.items() if image_size // stride >= MIN_GRID]
    return tuple(fine[-2:])


def _stage_module(stage: int) -> str:
    """ModifiedResNet attribute whose output is `stage`: the stem ends with its average pool."""
    return f"layer{stage}" if stage else "avgpool"


PAPER_INPUT = 224  # ViT-B/32 and RN101, whose activations the paper's weights balance


def semantic_weight_for(image_size: int) -> float:
    """The paper's 0.1 for models of 224 px and more; 1.0 for smaller inputs.

    The paper's balance belongs to its layers. A small-input model's geometric term is measured on its
    early stages (`resnet_stages_for`), and with the 64 px demo model 0.1 left the semantic term too weak
    to tell sketches apart: 6 of 10 sketches closest to their own source with 0.1, 9 of 10 with 1.0
    (3 seeds each; docs/clipasso.md).
    """
    return 0.1 if image_size >= PAPER_INPUT else 1.0


def _normalisation(loaded: LoadedCLIP) -> tuple[tuple[float, ...], tuple[float, ...]]:
    for transform in getattr(loaded.preprocess, "transforms", []):
        if hasattr(transform, "mean") and hasattr(transform, "std"):
            return tuple(transform.mean), tuple(transform.std)
    return _OPENAI_MEAN, _OPENAI_STD


class ClipImageEncoder:
    """Differentiable image features of a frozen CLIP: embeddings and the chosen intermediate activations."""

    def __init__(self, loaded: LoadedCLIP, config: LossConfig) -> None:
        self.model = loaded.model.eval().requires_grad_(False)
        self.visual = self.model.visual
        self.image_size = loaded.image_size
        self.config = config.resolved(self.image_size)  # what the losses use: no None left
        device = next(self.model.parameters()).device
        mean, std = _normalisation(loaded)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.layers = self._layers()
        self._activations: list[torch.Tensor] = []
        self._hooks = [module.register_forward_hook(self._keep) for module in self._layer_modules()]

    def _keep(self, module, args, output) -> None:
        self._activations.append(output)

    def close(self) -> None:
        """Take the hooks off the model: an encoder left hooked keeps every later forward's activations
        (and their graphs), whoever runs it."""
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._activations = [], []

    @property
    def is_vit(self) -> bool:
        return hasattr(self.visual, "transformer") and hasattr(self.visual.transformer, "resblocks")

    def _layers(self) -> list[int]:
        if self.config.geometric_weight == 0:
            return []
        if self.is_vit:
            depth = len(self.visual.transformer.resblocks)
            return sorted(
                {min(depth - 1, max(0, round(f * depth) - 1)) for f in self.config.vit_depth_fractions}
            )
        if hasattr(self.visual, "layer1"):
            return [i for i in self.config.resnet_stages if hasattr(self.visual, _stage_module(i))]
        return []

    def _layer_modules(self) -> list[torch.nn.Module]:
        if self.is_vit:
            return [self.visual.transformer.resblocks[i] for i in self.layers]
        return [getattr(self.visual, _stage_module(i)) for i in self.layers]

    @property
    def description(self) -> str:
        kind = "vit blocks" if self.is_vit else "resnet stages"
        return f"{kind} {self.layers}" if self.layers else "semantic only"

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """images (B, 3, R, R) in [0, 1] at the model's input size -> (unit embeddings, activations)."""
        self._activations = []
        embedding = self.model.encode_image((images - self.mean) / self.std)
        activations, self._activations = self._activations, []
        if self.is_vit and not getattr(self.visual.transformer, "batch_first", True):
            activations = [a.transpose(0, 1) for a in activations]  # (L, B, D) -> (B, L, D)
        return F.normalize(embedding, dim=-1), activations


def sketch_losses(
    sketch: tuple[torch.Tensor, list[torch.Tensor]],
    target: tuple[torch.Tensor, list[torch.Tensor]],
    views: int,
    config: LossConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(geometric, semantic) losses per sketch and view, each (B, views); view 0 is the plain one.

    `sketch` features are for B sketches x `views` (flattened B-major); `target` for the picture's views.
    """
    emb, acts = sketch
    target_emb, target_acts = target
    batch = emb.shape[0] // views
    cosine = (emb.reshape(batch, views, -1) * target_emb.reshape(1, views, -1)).sum(-1)
    semantic = 1.0 - cosine
    geometric = emb.new_zeros(batch, views)
    for act, target_act in zip(acts, target_acts):
        diff = act.reshape(batch, views, -1) - target_act.reshape(1, views, -1)
        geometric = geometric + diff.square().mean(2)
    return geometric, semantic


def total_loss(geometric: torch.Tensor, semantic: torch.Tensor, config: LossConfig) -> torch.Tensor:
    return config.geometric_weight * geometric + config.semantic_weight * semantic
