"""The text prompt: action labels wrapped in templates, encoded once by the CLIP text encoder.

ActionCLIP's "textual prompt" fills each label into several templates ("a video of {}", "{}, an
action", ...) and averages, as open_clip's zero-shot classifier does for ImageNet with
OPENAI_IMAGENET_TEMPLATES. Those are written for photos of objects ("a photo of a {}."); ours are
ActionCLIP's 16 action templates rewritten for shapes, short enough for a 16-token text context.
"""

from __future__ import annotations

import torch

from apps.actionclip.errors import ActionClipError

ACTION_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a video of something that {}",
    "a shape {}",
    "the shape {}",
    "it {}",
    "look, the shape {}",
    "{}, an action",
    "{}, a video of an action",
    "an animation where a shape {}",
    "a clip in which something {}",
    "video classification of: {}",
    "the action of a shape that {}",
)


class LabelError(ActionClipError):
    """A label list that cannot make a classifier (empty, duplicated, a single label, too long)."""


def parse_labels(text: str | list[str], source: str = "--labels", minimum: int = 2) -> list[str]:
    """Labels from "a,b,c" (or a list): stripped, lower-cased; refuses empty or duplicated labels, and
    fewer than `minimum` (a classifier needs 2)."""
    raw = text.split(",") if isinstance(text, str) else list(text)
    labels = [" ".join(label.split()).lower() for label in raw]
    if not any(labels):
        raise LabelError(f'{source}: no label given; pass comma-separated labels, e.g. "grows,shrinks"')
    empty = [i + 1 for i, label in enumerate(labels) if not label]
    if empty:
        raise LabelError(f"{source}: label {empty[0]} of {len(labels)} is empty (a stray comma?); remove it")
    seen: set[str] = set()
    duplicated = [label for label in labels if label in seen or seen.add(label)]
    if duplicated:
        raise LabelError(f"{source}: label {duplicated[0]!r} is given twice; every label must be distinct")
    if len(labels) < minimum:
        raise LabelError(
            f"{source}: only one label ({labels[0]!r}): a classifier needs at least 2 labels to choose between"
        )
    return labels


def check_prompt_lengths(tokenizer, labels: list[str], templates: tuple[str, ...]) -> None:
    """Refuse a label whose prompts the text encoder would cut off (open_clip truncates silently)."""
    context = getattr(tokenizer, "context_length", None)
    if not context:
        return
    for label in labels:
        prompts = [template.format(label) for template in templates]
        lengths = (tokenizer(prompts, context_length=4 * context) != 0).sum(dim=1)
        longest = int(lengths.argmax())
        if int(lengths[longest]) > context:
            raise LabelError(
                f"label {label!r} is too long for this CLIP's {context}-token text context "
                f"(prompt {prompts[longest]!r} needs {int(lengths[longest])}); use a shorter label"
            )


def encode_prompts(clip, labels: list[str], templates: tuple[str, ...] = ACTION_TEMPLATES) -> torch.Tensor:
    """Raw text features [labels, templates, dim] of every label in every template (no gradient)."""
    check_prompt_lengths(clip.tokenizer, labels, templates)
    model = clip.model
    device = next(model.parameters()).device
    texts = [template.format(label) for label in labels for template in templates]
    with torch.no_grad():
        features = torch.cat(
            [
                model.encode_text(clip.tokenizer(texts[i : i + 256]).to(device))
                for i in range(0, len(texts), 256)
            ]
        ).float()
    return features.view(len(labels), len(templates), -1).cpu()
