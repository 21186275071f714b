"""Evaluate a CLIP checkpoint: zero-shot classification, image-text retrieval, linear probe.

    python -m training.evaluate --checkpoint runs/demo/train --zeroshot data/shapes_test \
        --retrieval data/held_out --linear-probe data/shapes_test --out runs/demo/eval.json

An IMAGE_FOLDER is torchvision's layout: one sub-folder per class, the folder name is the class
name (underscores read as spaces). Zero-shot uses open_clip's `build_zero_shot_classifier` with
the single prompt "a photo of a {}." and with the 80 OpenAI ImageNet prompts (the ensemble).
Retrieval reads held-out shards; a caption shared by several images (common in small, templated
datasets) counts as a hit for any of them. The linear probe fits scikit-learn logistic regression
on frozen image features, choosing C on a validation split, and reports accuracy on a test split.
Results go to a JSON file and a markdown table beside it, and the table is printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES, build_zero_shot_classifier
from tqdm import tqdm

from common.atomic import atomic_write_bytes
from common.errors import UserError
from common.settings import to_dict
from models import LoadedCLIP, load_clip, resolve_checkpoint
from training.config import EvalConfig
from training.data import DatasetError, data_version_of, decode_image, iter_pairs

SINGLE_PROMPT = ("a photo of a {}.",)
# The class name alone, no template: CLIP's baseline prompt. Where the training captions never say
# "photo" (the emoji web: "An emoji of a ...", "... icon", bare names), it tells a model that knows the
# pictures by name from one that knows the photo templates' wording (docs/corpus.md).
NAME_PROMPT = ("{}",)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
PROBE_C = (0.01, 0.0316, 0.1, 0.316, 1.0, 3.16, 10.0, 100.0)


class EvalError(UserError, ValueError):
    """An evaluation input is unusable (missing folder, no classes, too few images); says which and why."""


def _device(name: str) -> torch.device:
    return torch.device(
        "cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name)
    )


def read_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of a torchvision ImageFolder-style directory."""
    root = Path(root)
    if not root.is_dir():
        raise EvalError(f"{root}: no such image folder (expected one sub-folder per class)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise EvalError(f"{root}: no class sub-folders (expected e.g. {root}/red_circle/0001.png)")
    files, labels = [], []
    for label, folder in enumerate(class_dirs):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
                labels.append(label)
    if not files:
        raise EvalError(f"{root}: class folders hold no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files, labels, [d.name.replace("_", " ") for d in class_dirs]


@torch.no_grad()
def _encode_images(
    clip: LoadedCLIP, images, batch_size: int, device, desc: str, progress: bool
) -> torch.Tensor:
    feats, chunk = [], []
    for image in tqdm(images, desc=desc, unit="img", disable=not progress, leave=False):
        chunk.append(clip.preprocess(image))
        if len(chunk) == batch_size:
            feats.append(clip.model.encode_image(torch.stack(chunk).to(device), normalize=True).float().cpu())
            chunk = []
    if chunk:
        feats.append(clip.model.encode_image(torch.stack(chunk).to(device), normalize=True).float().cpu())
    return torch.cat(feats)


@torch.no_grad()
def _encode_texts(clip: LoadedCLIP, texts: Sequence[str], batch_size: int, device) -> torch.Tensor:
    feats = []
    for i in range(0, len(texts), batch_size):
        tokens = clip.tokenizer(list(texts[i : i + batch_size])).to(device)
        feats.append(clip.model.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(feats)


def _folder_features(
    clip: LoadedCLIP, folder: Path, cfg: EvalConfig, device
) -> tuple[torch.Tensor, np.ndarray, list[str], int]:
    files, labels, classes = read_image_folder(folder)
    images, kept, unreadable = [], [], 0
    for path, label in zip(files, labels):
        image = decode_image(path.read_bytes())
        if image is None:
            unreadable += 1
            print(f"warning: {path}: not a readable image, skipped", file=sys.stderr)
            continue
        images.append(image)
        kept.append(label)
    if not images:
        raise EvalError(f"{folder}: none of its {len(files)} images could be read")
    feats = _encode_images(clip, images, cfg.batch_size, device, f"encode {folder.name}", cfg.progress)
    return feats, np.array(kept), classes, unreadable


def _topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return hits.float().mean().item()


# A classifier maps unit-norm image features [N, D] and class names to logits [N, C]. The hand prompt and
# the ensemble are two; apps add their own (apps.coop's learned prompts) through `extra`.
Classifier = Callable[[torch.Tensor, list[str]], torch.Tensor]


def prompt_classifier(clip: LoadedCLIP, templates: Sequence[str], device) -> Classifier:
    """open_clip's `build_zero_shot_classifier` over `templates` (mean of the prompts' text features)."""

    @torch.no_grad()
    def logits(feats: torch.Tensor, classes: list[str]) -> torch.Tensor:
        weights = build_zero_shot_classifier(
            clip.model, clip.tokenizer, classes, templates, num_classes_per_batch=10, device=device
        )
        return feats @ weights.float().cpu()

    return logits


# An image folder may name each class's subclasses (`subclasses.json`: {"animals and nature": ["frog",
# "cat face", ...], ...}): a wide class ("animals and nature") is then also scored through the names of
# what it holds, as in CHiLS (Novack et al., ICML 2023, "Zero-Shot Image Classification with Hierarchical
# Label Sets"). A class's probability is the sum of its subclasses' (softmax over every subclass name at the
# model's own logit scale): the marginal. On the emoji groups it beat CHiLS's best-subclass rule (46 -> 50 %,
# docs/corpus.md).
SUBCLASSES_FILE = "subclasses.json"
# the prompts a class is scored with through its subclass names (open_clip's 7 selected prompts rather than
# the 80: the 80 over ~1,800 names cost minutes on a CPU), each reported as via_subclasses(kind)
SUBCLASS_PROMPTS = {
    "single": SINGLE_PROMPT,
    "7-prompt ensemble": SIMPLE_IMAGENET_TEMPLATES,
    "name alone": NAME_PROMPT,
}
VIA_SUBCLASSES = ", via subclass names"


def via_subclasses(kind: str) -> str:
    """The zero-shot report's key for a SUBCLASS_PROMPTS kind scored through the subclass names."""
    return kind + VIA_SUBCLASSES


def read_subclasses(folder: Path, classes: Sequence[str]) -> dict[str, list[str]] | None:
    """`FOLDER/subclasses.json` checked against the folder's classes, or None when the folder has none."""
    path = Path(folder) / SUBCLASSES_FILE
    if not path.is_file():
        return None
    fix = f'; expected {{"class name": ["subclass name", ...], ...}} for every class of {folder}'
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalError(f"{path}: not readable JSON ({exc}){fix}") from None
    if not isinstance(table, dict):
        raise EvalError(f"{path}: not a JSON object{fix}")
    missing = [c for c in classes if c not in table]
    bad = [
        c
        for c in classes
        if c in table
        and (
            not isinstance(table[c], list)
            or not table[c]
            or not all(isinstance(n, str) and n for n in table[c])
        )
    ]
    if missing or bad:
        what = (
            f"no subclasses for {missing[:3]}" if missing else f"not a non-empty list of names for {bad[:3]}"
        )
        raise EvalError(f"{path}: {what}{fix}")
    return {c: list(table[c]) for c in classes}


def subclass_classifier(
    base: Classifier, subclasses: Mapping[str, Sequence[str]], scale: float
) -> Classifier:
    """`base` over every subclass name; a class's log-probability is the log of its subclasses' summed
    probabilities (softmax of `scale` x the subclass logits)."""

    def logits(feats: torch.Tensor, classes: list[str]) -> torch.Tensor:
        names = [n for c in classes for n in subclasses[c]]
        owner = torch.tensor([i for i, c in enumerate(classes) for _ in subclasses[c]])
        probs = (scale * base(feats, names).float()).softmax(dim=1)
        summed = torch.zeros(probs.shape[0], len(classes)).index_add_(1, owner, probs)
        return summed.clamp_min(1e-30).log()

    return logits


@torch.no_grad()
def zero_shot_scores(
    clip: LoadedCLIP,
    feats: torch.Tensor,
    labels: np.ndarray,
    classes: list[str],
    device,
    extra: Mapping[str, Classifier] | None = None,
) -> dict:
    """Top-1/top-5 and per-class top-1 of the single prompt, the 80-prompt ensemble, the class name alone
    and any `extra` classifier."""
    labels_t = torch.from_numpy(np.asarray(labels))
    classifiers: dict[str, tuple[Classifier, int | None]] = {
        "single": (prompt_classifier(clip, SINGLE_PROMPT, device), len(SINGLE_PROMPT)),
        "ensemble": (
            prompt_classifier(clip, OPENAI_IMAGENET_TEMPLATES, device),
            len(OPENAI_IMAGENET_TEMPLATES),
        ),
        "name": (prompt_classifier(clip, NAME_PROMPT, device), len(NAME_PROMPT)),
    }
    classifiers.update({name: (clf, None) for name, clf in (extra or {}).items()})
    result: dict = {}
    for name, (classifier, templates) in classifiers.items():
        logits = classifier(feats, list(classes)).float().cpu()
        pred = logits.argmax(dim=1)
        per_class = {
            c: (pred[labels_t == i] == i).float().mean().item()
            for i, c in enumerate(classes)
            if (labels_t == i).any()
        }
        result[name] = {
            "templates": templates,
            "top1": _topk(logits, labels_t, 1),
            "top5": _topk(logits, labels_t, 5),
            "per_class_top1": per_class,
        }
    return result


@torch.no_grad()
def zero_shot(
    clip: LoadedCLIP, folder: Path, cfg: EvalConfig, device, extra: Mapping[str, Classifier] | None = None
) -> dict:
    """Top-1/top-5 with the single prompt and with the 80-prompt ensemble (and `extra`), plus per-class top-1."""
    feats, labels, classes, unreadable = _folder_features(clip, folder, cfg, device)
    subclasses = read_subclasses(folder, classes)
    if subclasses is not None:
        scale = float(clip.model.logit_scale.exp())
        extra = {
            **(extra or {}),
            **{
                via_subclasses(kind): subclass_classifier(
                    prompt_classifier(clip, templates, device), subclasses, scale
                )
                for kind, templates in SUBCLASS_PROMPTS.items()
            },
        }
    result: dict = {
        "folder": str(folder),
        "images": len(labels),
        "classes": len(classes),
        "unreadable": unreadable,
    }
    if subclasses is not None:
        result["subclass_names"] = sum(len(names) for names in subclasses.values())
    result.update(zero_shot_scores(clip, feats, labels, classes, device, extra))
    return result


def _recalls(sim: torch.Tensor, positive: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """R@k and median rank for queries (rows) against candidates (cols); `positive` marks hits."""
    order = sim.argsort(dim=1, descending=True)
    hit_sorted = torch.gather(positive, 1, order)
    first = hit_sorted.float().argmax(dim=1)  # rank (0-based) of the best-ranked positive
    out = {f"R@{k}": (first < k).float().mean().item() for k in ks}
    out["median_rank"] = float(first.float().median().item() + 1)
    return out


@torch.no_grad()
def retrieval(clip: LoadedCLIP, data_dir: Path, cfg: EvalConfig, device) -> dict:
    """Image->text and text->image R@1/5/10 on the pairs of a held-out dataset directory."""
    try:
        version = data_version_of(data_dir, cfg.data_version)
        pairs = list(iter_pairs([data_dir], limit=cfg.max_retrieval, version=version))
    except DatasetError as exc:
        raise EvalError(str(exc)) from exc
    if len(pairs) < 2:
        raise EvalError(f"{data_dir}: {len(pairs)} decodable pairs; retrieval needs at least 2")
    images, captions = zip(*pairs)
    image_f = _encode_images(clip, images, cfg.batch_size, device, "encode retrieval images", cfg.progress)
    text_f = _encode_texts(clip, captions, cfg.batch_size, device)
    sim = image_f @ text_f.T
    same = np.array(captions, dtype=object)
    positive = torch.from_numpy(same[:, None] == same[None, :])
    return {
        "dir": str(data_dir),
        "data_version": version,
        "pairs": len(pairs),
        "unique_captions": len(set(captions)),
        "image_to_text": _recalls(sim, positive),
        "text_to_image": _recalls(sim.T, positive.T),
    }


def _probe_split(
    labels: np.ndarray, classes: list[str], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 3:
            raise EvalError(
                f"class {classes[c]!r} has {len(idx)} image(s); the linear probe needs at least 3 per class "
                "(train / validation / test)"
            )
        n_test = n_val = max(1, round(0.2 * len(idx)))
        test.extend(idx[:n_test])
        val.extend(idx[n_test : n_test + n_val])
        train.extend(idx[n_test + n_val :])
    return np.array(train), np.array(val), np.array(test)


def linear_probe(clip: LoadedCLIP, folder: Path, cfg: EvalConfig, device) -> dict:
    """Logistic regression on frozen image features: C chosen on validation, accuracy on test."""
    from sklearn.linear_model import LogisticRegression

    feats, labels, classes, unreadable = _folder_features(clip, folder, cfg, device)
    x = feats.numpy()
    train, val, test = _probe_split(labels, classes, cfg.seed)
    sweep = {}
    for c in tqdm(PROBE_C, desc="probe C sweep", disable=not cfg.progress, leave=False):
        clf = LogisticRegression(C=c, max_iter=2000).fit(x[train], labels[train])
        sweep[c] = float(clf.score(x[val], labels[val]))
    best_c = max(sweep, key=lambda c: (sweep[c], -c))  # ties: the stronger regularisation
    trainval = np.concatenate([train, val])
    clf = LogisticRegression(C=best_c, max_iter=2000).fit(x[trainval], labels[trainval])
    return {
        "folder": str(folder),
        "images": len(labels),
        "classes": len(classes),
        "unreadable": unreadable,
        "split": {"train": len(train), "val": len(val), "test": len(test)},
        "c_sweep_val_accuracy": {str(c): a for c, a in sweep.items()},
        "best_c": best_c,
        "test_accuracy": float(clf.score(x[test], labels[test])),
    }


def markdown_table(report: dict) -> str:
    """The headline numbers of a report as a markdown table."""
    rows = []
    if "zeroshot" in report:
        z = report["zeroshot"]
        names = [n for n, v in z.items() if isinstance(v, dict) and "top1" in v]
        for name in names:
            label = {
                "single": 'single prompt "a photo of a {}."',
                "ensemble": f"ensemble of {z[name]['templates']} prompts",
                "name": 'the class name alone "{}"',
            }.get(name, name)
            if name.endswith(VIA_SUBCLASSES):
                label = (
                    f"{name.removesuffix(VIA_SUBCLASSES)} over {z['subclass_names']} subclass names "
                    "(a class: its subclasses' summed probability)"
                )
            rows.append((f"zero-shot top-1, {label}", f"{100 * z[name]['top1']:.1f} %"))
            rows.append((f"zero-shot top-5, {label}", f"{100 * z[name]['top5']:.1f} %"))
    if "retrieval" in report:
        r = report["retrieval"]
        for direction in ("image_to_text", "text_to_image"):
            recalls = ", ".join(f"{100 * r[direction][k]:.1f}" for k in ("R@1", "R@5", "R@10"))
            rows.append((f"{direction.replace('_', ' ')} R@1 / R@5 / R@10 ({r['pairs']} pairs)", recalls))
    if "linear_probe" in report:
        p = report["linear_probe"]
        rows.append((f"linear probe test accuracy (C={p['best_c']})", f"{100 * p['test_accuracy']:.1f} %"))
    lines = [
        f"Checkpoint `{report['checkpoint']}` (model `{report['model']}`)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {m} | {v} |" for m, v in rows]
    return "\n".join(lines) + "\n"


def evaluate(cfg: EvalConfig, classifiers: Mapping[str, Classifier] | None = None) -> dict:
    """Run the evaluations `cfg` asks for; write REPORT.json and REPORT.md; return the report.

    `classifiers` adds zero-shot classifiers beside the hand prompt and the ensemble (e.g. learned prompts).
    """
    device = _device(cfg.device)
    checkpoint = resolve_checkpoint(cfg.checkpoint)
    clip = load_clip(checkpoint, device)
    report: dict = {"checkpoint": str(checkpoint), "model": clip.model_name, "config": to_dict(cfg)}
    if cfg.zeroshot is not None:
        report["zeroshot"] = zero_shot(clip, Path(cfg.zeroshot), cfg, device, classifiers)
    if cfg.retrieval is not None:
        report["retrieval"] = retrieval(clip, Path(cfg.retrieval), cfg, device)
    if cfg.linear_probe is not None:
        report["linear_probe"] = linear_probe(clip, Path(cfg.linear_probe), cfg, device)
    out = Path(cfg.out) if cfg.out else checkpoint.parent / "eval.json"
    atomic_write_bytes(out, (json.dumps(report, indent=2) + "\n").encode())
    atomic_write_bytes(out.with_suffix(".md"), markdown_table(report).encode())
    report["report_path"] = str(out)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from common.errors import run_cli
    from common.settings import add_arguments, from_namespace

    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Zero-shot, retrieval and linear-probe evaluation of a CLIP checkpoint; "
        "prints a table and writes JSON + markdown (default: eval.json beside the checkpoint).",
    )
    add_arguments(parser, EvalConfig)
    args = parser.parse_args(argv)

    def body() -> None:
        report = evaluate(from_namespace(EvalConfig, args))
        print(markdown_table(report))
        print(f"report: {report['report_path']} (+ .md)")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
