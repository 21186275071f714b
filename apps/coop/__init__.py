"""Learned prompts for a frozen CLIP: CoOp (context vectors) and CoCoOp (image-conditioned context).

Stage per file: `task.py` (a hard generated task), `data.py` (image folders, shots, feature cache),
`prompts.py` (the prompt learner and text tower), `train.py`, `evaluate.py`, `demo.py`.

    from apps.coop import load_classifier
    classifier = load_classifier("runs/coop", clip)          # clip from apps.clip.load_app_clip
    weights = classifier.text_features_for(["yellow green", "red orange"])   # [C, D], unit norm
"""

from __future__ import annotations


def load_classifier(prompts_path, clip):
    """A `PromptClassifier` from a prompts file (or run folder) for this CLIP; errors if it does not fit."""
    from apps.coop.prompts import PromptClassifier, load_prompts

    prompts, _ = load_prompts(prompts_path, clip)
    return PromptClassifier(clip, prompts)
