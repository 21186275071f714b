"""Settings of `python -m apps.coop train` and `evaluate`: one frozen dataclass each = CLI flags = TOML keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.settings import ConfigError

Split = Literal["all", "base", "new"]
_SPLIT_HELP = "classes to use: all, or CoOp's base-to-new split (base = first half of the sorted classes, new = the rest)"


@dataclass(frozen=True)
class FeatureOptions:
    """Where image features are kept (CLIP is frozen: each picture is encoded once) and whether to show progress.

    The CLIP itself is chosen by `apps.cli.ModelChoice` (--checkpoint/--model/--pretrained/--device).
    """

    cache_dir: Path | None = field(
        default=None, metadata={"help": "image-feature cache folder (default: none, encode every run)"}
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


@dataclass(frozen=True)
class CoopTrainConfig(FeatureOptions):
    data: Path = field(
        default=None, metadata={"help": "ImageFolder: one sub-folder of pictures per class (required)"}
    )
    out: Path = field(default=None, metadata={"help": "run folder: prompts.pt, train.json (required)"})
    shots: int = field(default=16, metadata={"help": "pictures per class to learn from"})
    ctx: int = field(default=8, metadata={"help": "number M of learned context vectors"})
    init: str | None = field(
        default=None,
        metadata={"help": "start the context from these words, e.g. 'a photo of a' (M = word count)"},
    )
    class_specific: bool = field(default=False, metadata={"help": "one context per class (CoOp's CSC)"})
    class_token: Literal["end", "middle"] = field(
        default="end", metadata={"help": "where the class name goes"}
    )
    cocoop: bool = field(
        default=False, metadata={"help": "CoCoOp: a meta-network shifts the context per image"}
    )
    classes: Split = field(default="all", metadata={"help": _SPLIT_HELP})
    epochs: int | None = field(
        default=None,
        metadata={
            "help": "passes over the shots (default as the papers: CoOp 50/100/200 by shots, CoCoOp 10)"
        },
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "pictures per step (default: CoOp 32, CoCoOp 1)"}
    )
    lr: float = field(default=0.002, metadata={"help": "SGD learning rate (momentum 0.9, cosine schedule)"})
    seed: int = field(
        default=0, metadata={"help": "seeds the shots drawn, the initial context and the batch order"}
    )

    def __post_init__(self) -> None:
        if self.data is None or self.out is None:
            raise ConfigError("CoopTrainConfig: give --data IMAGE_FOLDER and --out RUN_FOLDER")
        if self.shots < 1:
            raise ConfigError(f"--shots {self.shots}: need at least 1 picture per class")
        if self.ctx < 1:
            raise ConfigError(f"--ctx {self.ctx}: need at least 1 context vector")
        if self.epochs is not None and self.epochs < 1 or self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("--epochs and --batch-size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"--lr {self.lr}: must be > 0")
        if self.cocoop and self.class_specific:
            raise ConfigError("--cocoop learns one context for all classes; drop --class-specific")


@dataclass(frozen=True)
class CoopEvalConfig(FeatureOptions):
    prompts: Path = field(
        default=None, metadata={"help": "prompts.pt or the run folder `train` wrote (required)"}
    )
    data: Path = field(
        default=None, metadata={"help": "test ImageFolder (class names from its folders) (required)"}
    )
    classes: Split = field(default="all", metadata={"help": _SPLIT_HELP})
    out: Path | None = field(
        default=None, metadata={"help": "report JSON (default: RUN/eval_<folder>_<classes>.json)"}
    )

    def __post_init__(self) -> None:
        if self.prompts is None or self.data is None:
            raise ConfigError("CoopEvalConfig: give --prompts RUN_OR_FILE and --data IMAGE_FOLDER")
