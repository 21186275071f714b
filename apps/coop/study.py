"""The two experiments of the CoOp and CoCoOp papers, on cached image features.

`shots_curve`: accuracy vs shots per class (several seeds) of learned prompts, against the hand
prompt, the 80-prompt ensemble and a linear probe on the same shots. `base_to_new`: train on the
base half of the classes, test on base and on new classes (names never trained), harmonic mean.
`plot` draws both as one PNG. The bench script and the demo call these with different sizes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from apps.coop.data import FolderFeatures
from apps.coop.evaluate import harmonic_mean, learned_classifier
from apps.coop.prompts import PromptClassifier, PromptSpec
from apps.coop.train import Schedule, paper_schedule, shot_features, split_indices, train_prompts
from models import LoadedCLIP
from training.evaluate import zero_shot_scores


def _top1(clip: LoadedCLIP, data: FolderFeatures, extra=None) -> dict[str, float]:
    device = next(clip.model.parameters()).device
    scores = zero_shot_scores(clip, data.features, data.labels, data.classnames, device, extra)
    return {name: s["top1"] for name, s in scores.items()}


def linear_probe_top1(train: FolderFeatures, test: FolderFeatures, c: float = 10.0) -> float:
    """scikit-learn logistic regression on the shots' unit-norm features (fixed C: few shots leave no validation set)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=2000).fit(train.features.numpy(), train.labels)
    return float(clf.score(test.features.numpy(), test.labels))


def _mean_std(values: Sequence[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "runs": list(map(float, arr)),
    }


def shots_curve(
    clip: LoadedCLIP,
    train: FolderFeatures,
    test: FolderFeatures,
    spec: PromptSpec,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (0, 1, 2),
    schedule: Schedule | None = None,
    progress: bool = True,
) -> dict:
    """Test top-1 of learned prompts and of a linear probe per shot count and seed; zero-shot baselines once."""
    zero = _top1(clip, test)
    curve: dict = {"method": spec.method, "spec": spec.__dict__, "zero_shot": zero, "shots": {}}
    started = time.perf_counter()
    for k in shots:
        learned, probe = [], []
        for seed in seeds:
            few = shot_features(train, k, seed)
            sched = schedule or paper_schedule(k, spec.cocoop)
            prompts, _ = train_prompts(clip, few, spec, sched, seed, progress)
            classifier = PromptClassifier(clip, prompts)
            learned.append(_top1(clip, test, {"learned": learned_classifier(classifier)})["learned"])
            probe.append(linear_probe_top1(few, test))
        curve["shots"][k] = {"learned": _mean_std(learned), "linear_probe": _mean_std(probe)}
        if progress:
            print(
                f"  {k:2d} shots: {spec.method} {100 * np.mean(learned):.1f} %, linear probe {100 * np.mean(probe):.1f} %"
            )
    curve["seconds"] = round(time.perf_counter() - started, 1)
    return curve


def base_to_new(
    clip: LoadedCLIP,
    train: FolderFeatures,
    test: FolderFeatures,
    specs: dict[str, PromptSpec],
    shots: int = 16,
    seeds: Sequence[int] = (0, 1, 2),
    schedules: dict[str, Schedule] | None = None,
    progress: bool = True,
) -> dict:
    """Train each spec on the base classes; top-1 on base and new test classes (each among its own) and H."""
    n = len(train.classnames)
    base_idx, new_idx = split_indices(n, "base"), split_indices(n, "new")
    train_base = train.subset(base_idx)
    test_base, test_new = test.subset(base_idx), test.subset(new_idx)
    out: dict = {"base_classes": train_base.classnames, "new_classes": test_new.classnames, "methods": {}}
    zb, zn = _top1(clip, test_base), _top1(clip, test_new)
    for name in ("single", "ensemble"):
        out["methods"][f"zero-shot ({name})"] = {
            "base": _mean_std([zb[name]]),
            "new": _mean_std([zn[name]]),
            "hm": _mean_std([harmonic_mean(zb[name], zn[name])]),
        }
    for label, spec in specs.items():
        base, new, hm = [], [], []
        for seed in seeds:
            few = shot_features(train_base, shots, seed)
            sched = (schedules or {}).get(label) or paper_schedule(shots, spec.cocoop)
            prompts, _ = train_prompts(clip, few, spec, sched, seed, progress)
            clf = {"learned": learned_classifier(PromptClassifier(clip, prompts))}
            b = _top1(clip, test_base, clf)["learned"]
            w = _top1(clip, test_new, clf)["learned"]
            base.append(b)
            new.append(w)
            hm.append(harmonic_mean(b, w))
        out["methods"][label] = {"base": _mean_std(base), "new": _mean_std(new), "hm": _mean_std(hm)}
        if progress:
            print(
                f"  {label}: base {100 * np.mean(base):.1f} %, new {100 * np.mean(new):.1f} %, H {100 * np.mean(hm):.1f} %"
            )
    return out


def plot(curve: dict, b2n: dict | None, path, title: str = "") -> None:
    """Accuracy vs shots (mean, band = min..max over seeds) beside base/new/H bars, as one PNG."""
    from matplotlib.figure import Figure  # no pyplot: the demo's apps plot from several threads at once

    panels = 2 if b2n else 1
    fig = Figure(figsize=(6.4 * panels, 4.8))
    axes = fig.subplots(1, panels, squeeze=False)
    ax = axes[0, 0]
    shots = sorted(curve["shots"], key=int)
    x = [int(k) for k in shots]
    method = f"{curve['method']} (M={curve['spec']['n_ctx']}, learned context)"
    for key, label, colour in (
        ("learned", method, "tab:red"),
        ("linear_probe", "linear probe on the same shots", "tab:gray"),
    ):
        mean = np.array([curve["shots"][k][key]["mean"] for k in shots]) * 100
        lo = np.array([min(curve["shots"][k][key]["runs"]) for k in shots]) * 100
        hi = np.array([max(curve["shots"][k][key]["runs"]) for k in shots]) * 100
        ax.plot(x, mean, "o-", color=colour, label=label)
        ax.fill_between(x, lo, hi, color=colour, alpha=0.2)
    for key, label, style in (
        ("single", 'hand prompt "a photo of a {}."', "--"),
        ("ensemble", "80-prompt ensemble", ":"),
    ):
        ax.axhline(
            100 * curve["zero_shot"][key], color="tab:blue", linestyle=style, label=f"zero-shot, {label}"
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    seeds = len(next(iter(curve["shots"].values()))["learned"]["runs"])
    ax.set_title(f"{title}\naccuracy vs shots ({seeds} seeds: line = mean, band = min..max)", fontsize=10)
    if b2n:
        ax = axes[0, 1]
        names = list(b2n["methods"])
        width = 0.27
        for j, (key, colour) in enumerate(
            (("base", "tab:green"), ("new", "tab:orange"), ("hm", "tab:purple"))
        ):
            vals = [100 * b2n["methods"][n][key]["mean"] for n in names]
            errs = [100 * b2n["methods"][n][key]["std"] for n in names]
            ax.bar(
                np.arange(len(names)) + (j - 1) * width,
                vals,
                width,
                yerr=errs,
                color=colour,
                label=key if key != "hm" else "harmonic mean",
            )
        ax.set_xticks(
            np.arange(len(names)), [n.replace(" (", "\n(").replace(", ", ",\n") for n in names], fontsize=7
        )
        ax.set_ylim(0, 115)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper center", ncol=3)
        runs = max(len(m["hm"]["runs"]) for m in b2n["methods"].values())
        ax.set_title(
            f"base-to-new: trained on the {len(b2n['base_classes'])} base classes only\n"
            f"(16 shots; mean of {runs} seeds, bar = std; zero-shot has no seed)",
            fontsize=10,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
