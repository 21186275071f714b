"""Accuracy of learned prompts beside the hand prompt and the 80-prompt ensemble, on the same features.

The scoring is `training.evaluate.zero_shot_scores` with the learned prompts added as one more
classifier, so all three are counted the same way. For a base-to-new split each half is scored
on its own classes only, and the harmonic mean of base and new accuracy is CoCoOp's headline.
"""

from __future__ import annotations

from pathlib import Path

import torch

from apps.coop.data import FolderFeatures, folder_features
from apps.coop.prompts import PromptClassifier, load_prompts
from apps.coop.train import split_indices
from common.atomic import atomic_write_json
from models import LoadedCLIP
from training.evaluate import Classifier, zero_shot_scores


def learned_classifier(classifier: PromptClassifier) -> Classifier:
    """The learned prompts as a `training.evaluate` classifier: (image features, class names) -> logits."""

    @torch.no_grad()
    def logits(feats: torch.Tensor, classes: list[str]) -> torch.Tensor:
        out = [classifier.logits(feats[i : i + 256], classes).cpu() for i in range(0, len(feats), 256)]
        return torch.cat(out)

    return logits


def score(
    clip: LoadedCLIP, classifier: PromptClassifier, data: FolderFeatures, name: str = "learned"
) -> dict:
    """Top-1 (and top-5, per class) of the hand prompt, the ensemble and the learned prompts on `data`."""
    device = classifier.device
    return zero_shot_scores(
        clip, data.features, data.labels, data.classnames, device, {name: learned_classifier(classifier)}
    )


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def evaluate(cfg, clip: LoadedCLIP) -> dict:
    """`python -m apps.coop evaluate`: score the prompts on a test folder (a split of it), write JSON."""
    prompts, state = load_prompts(cfg.prompts, clip)
    classifier = PromptClassifier(clip, prompts)
    data = folder_features(clip, cfg.data, cfg.cache_dir, cfg.progress)
    data = data.subset(split_indices(len(data.classnames), cfg.classes))
    scores = score(clip, classifier, data)
    report = {
        "prompts": str(cfg.prompts),
        "method": prompts.spec.method,
        "trained_classes": prompts.classnames,
        "data": str(cfg.data),
        "classes": cfg.classes,
        "class_names": data.classnames,
        "pictures": len(data.labels),
        "unreadable": data.unreadable,
        **scores,
    }
    run = Path(cfg.prompts) if Path(cfg.prompts).is_dir() else Path(cfg.prompts).parent
    out = Path(cfg.out) if cfg.out else run / f"eval_{Path(cfg.data).name}_{cfg.classes}.json"
    atomic_write_json(out, report)
    report["report_path"] = str(out)
    return report


def table(report: dict) -> str:
    rows = [
        ('hand prompt "a photo of a {}."', report["single"]),
        (f"ensemble of {report['ensemble']['templates']} prompts", report["ensemble"]),
        (f"learned: {report['method']}", report["learned"]),
    ]
    lines = [
        f"{report['pictures']} pictures, {len(report['class_names'])} classes ({report['classes']})",
        "",
        "| classifier | top-1 | top-5 |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {100 * r['top1']:.1f} % | {100 * r['top5']:.1f} % |" for name, r in rows]
    return "\n".join(lines) + "\n"
