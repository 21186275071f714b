"""Settings of `python -m training.train` and `python -m training.evaluate`.

One frozen dataclass per command: the field names are the command-line flags (`batch_size` is
`--batch-size`), the keys of a TOML preset (`training/presets/demo.toml`) and the parameters a
Prefect flow passes. Build them with `common.settings.load_config` or directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.settings import ConfigError, load_config

PRESET_DIR = Path(__file__).parent / "presets"
Precision = Literal["fp32", "bf16", "amp"]


@dataclass(frozen=True)
class TrainConfig:
    data: list[Path] = field(
        metadata={"help": "dataset directory written by `curation build`; repeat for several"}
    )
    out: Path = field(
        metadata={"help": "run directory: checkpoints/, latest, log.csv, loss.png, config.json"}
    )
    data_version: int | None = field(
        default=None,
        metadata={"help": "dataset version to train on (see the dataset's versions; default: the latest)"},
    )
    model: str = field(default="clip-small", metadata={"help": "open_clip model name or one of ours"})
    pretrained: str | None = field(
        default=None, metadata={"help": "open_clip weights tag (e.g. openai) or a weights file to start from"}
    )
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (default: from --epochs)"})
    epochs: float | None = field(
        default=None, metadata={"help": "passes over the data (default 1 without --steps)"}
    )
    batch_size: int = field(
        default=128, metadata={"help": "global batch per optimizer step, over all processes"}
    )
    accum_steps: int = field(
        default=1,
        metadata={"help": "gradient accumulation: micro-batches per step (contrastive over the whole batch)"},
    )
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    warmup: int = field(default=50, metadata={"help": "linear warmup steps, then cosine decay to 0"})
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW decay (never on gains, biases, logit scale)"}
    )
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm; 0 disables clipping"})
    precision: Precision = field(
        default="fp32", metadata={"help": "fp32, bf16 (autocast) or amp (fp16 on GPU)"}
    )
    loss: Literal["clip", "siglip"] = field(
        default="clip", metadata={"help": "open_clip ClipLoss or SigLipLoss"}
    )
    local_loss: bool = field(
        default=False,
        metadata={"help": "ClipLoss local_loss: each process scores its rows against all (less memory)"},
    )
    workers: int = field(default=2, metadata={"help": "DataLoader worker processes per training process"})
    worker_nice: int = field(
        default=0,
        metadata={
            "help": "niceness added to the DataLoader workers, 0-19: where the training's threads and the "
            "workers outnumber the cores, 19 lets the training go first and the workers fill the gaps (the "
            "corpus demo on 2 cores: 0.42 instead of 0.47 s a step, the same batches)"
        },
    )
    keep_data_mb: int = field(
        default=512,
        metadata={
            "help": "each data reader keeps up to this many MB of decoded pictures and tokenised captions for "
            "the next epochs instead of decoding and tokenising every read again (the corpus demo's 7,824 "
            "rows: ~100 MB a worker); the same batches either way; 0 = keep nothing"
        },
    )
    shuffle_buffer: int = field(default=1000, metadata={"help": "rows held for shuffling inside each worker"})
    seed: int = field(default=0, metadata={"help": "seeds init, data order and augmentation"})
    fused_optimizer: bool = field(
        default=False,
        metadata={
            "help": "AdamW as one fused kernel (CPU or CUDA): a CPU step of a 10 M-parameter model 16 instead "
            "of 91 ms; rounding differs from the default loop, so runs are not bit-identical to unfused ones"
        },
    )
    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "keep memory the steps free in the process for the next step (glibc mallopt) instead of "
            "returning it to the kernel, which zero-fills it again page by page: the corpus model's CPU step "
            "0.34 instead of 0.40 s; the same numbers either way (--no-keep-freed-memory: the C library's defaults)"
        },
    )
    captions: list[str] = field(
        default_factory=lambda: ["caption"],
        metadata={
            "help": "text column(s) of the shards a row's caption comes from; repeat for several: each time a "
            "row is read, one of its non-empty ones at random (e.g. --captions caption --captions "
            "caption_alt_text_description: the alt text as a second description); COL+COL joins two "
            "columns' texts as sentences (caption+page_title)"
        },
    )
    generic_captions: float = field(
        default=0.0,
        metadata={
            "help": "fraction of reads captioned with a generic word instead ('image', 'picture' or 'photo', "
            "the captions curation drops from a dataset): the text tower learns that these words name "
            "nothing, so a prompt like 'a photo of a {}.' reads as the name (docs/corpus.md); 0 = off"
        },
    )
    crop_scale: float = field(
        default=0.9,
        metadata={"help": "random resized crop keeps this fraction of the picture or more (open_clip: 0.9)"},
    )
    color_jitter: float = field(
        default=0.0,
        metadata={
            "help": "brightness, contrast and saturation jitter (hue kept: colours name things), "
            "applied to 4 pictures in 5; 0 = off"
        },
    )
    low_res_steps: int = field(
        default=0,
        metadata={
            "help": "train the first N steps on smaller pictures (--low-res-size), then at the model's own "
            "size: a cheaper start, as in CLIPA (Li et al. 2023); the same rows, captions and crops. "
            "The image tower must take both sizes (a ResNet tower whose size // 32 is the same); 0 = off"
        },
    )
    low_res_size: int = field(
        default=32, metadata={"help": "picture size in px of the first --low-res-steps steps"}
    )
    resume: bool = field(
        default=False, metadata={"help": "continue from the run directory's latest checkpoint"}
    )
    checkpoint_every: int = field(
        default=100, metadata={"help": "save a checkpoint every N steps (and at the end)"}
    )
    keep_checkpoints: int = field(default=3, metadata={"help": "keep the last K checkpoints"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    threads: int | None = field(
        default=None,
        metadata={"help": "torch CPU threads per process (default: torch's choice; 1 on a busy machine)"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("TrainConfig: give at least one dataset directory (--data DIR)")
        for name in ("batch_size", "accum_steps", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"TrainConfig: steps must be >= 1, got {self.steps}")
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("TrainConfig: give --steps or --epochs, not both")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"TrainConfig: epochs must be > 0, got {self.epochs}")
        if self.data_version is not None and self.data_version < 0:
            raise ConfigError(f"TrainConfig: data_version must be >= 0, got {self.data_version}")
        if not 0 < self.crop_scale <= 1 or not 0 <= self.color_jitter <= 1:
            raise ConfigError(
                f"TrainConfig: crop_scale must be in (0, 1] and color_jitter in [0, 1], "
                f"got {self.crop_scale} and {self.color_jitter}"
            )
        if not 0 <= self.worker_nice <= 19:
            raise ConfigError(f"TrainConfig: worker_nice must be in 0-19 (os.nice), got {self.worker_nice}")
        if self.low_res_steps < 0 or self.low_res_size < 1:
            raise ConfigError(
                f"TrainConfig: low_res_steps must be >= 0 and low_res_size >= 1, "
                f"got {self.low_res_steps} and {self.low_res_size}"
            )
        if self.keep_data_mb < 0:
            raise ConfigError(f"TrainConfig: keep_data_mb must be >= 0, got {self.keep_data_mb}")
        if self.workers < 0 or self.warmup < 0 or self.lr <= 0:
            raise ConfigError("TrainConfig: workers and warmup must be >= 0 and lr > 0")


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: Path = field(metadata={"help": "checkpoint file, or a run directory (its latest checkpoint)"})
    zeroshot: Path | None = field(
        default=None,
        metadata={"help": "image folder (one sub-folder per class) for zero-shot classification"},
    )
    retrieval: Path | None = field(
        default=None, metadata={"help": "held-out dataset directory (shards) for image-text retrieval"}
    )
    linear_probe: Path | None = field(
        default=None, metadata={"help": "image folder for a logistic-regression probe on frozen features"}
    )
    out: Path | None = field(
        default=None, metadata={"help": "report JSON path (a .md table is written beside it)"}
    )
    batch_size: int = field(default=256, metadata={"help": "images per forward pass"})
    max_retrieval: int = field(default=5000, metadata={"help": "at most this many pairs for retrieval"})
    data_version: int | None = field(
        default=None, metadata={"help": "version of the --retrieval dataset (default: the latest)"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    seed: int = field(default=0, metadata={"help": "seed of the linear-probe split"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        if self.zeroshot is None and self.retrieval is None and self.linear_probe is None:
            raise ConfigError(
                "EvalConfig: nothing to evaluate; give --zeroshot IMAGE_FOLDER, --retrieval DIR or --linear-probe IMAGE_FOLDER"
            )
        if self.batch_size < 1:
            raise ConfigError(f"EvalConfig: batch_size must be >= 1, got {self.batch_size}")


def preset(name: str, **overrides) -> TrainConfig:
    """A TrainConfig from `training/presets/NAME.toml` with overrides (e.g. data=[...], out=...)."""
    path = PRESET_DIR / f"{name}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
        raise ConfigError(f"no training preset {name!r} (known: {known})")
    return load_config(TrainConfig, path, overrides)
