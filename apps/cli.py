"""What every app's command line shares: choosing the CLIP, --threads, and the one error tail.

add_model_arguments(parser)                      # --checkpoint/--model/--pretrained/--device/--threads
return run_command("clipasso", args.threads, lambda: write_things(..., model_choice(args)))
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from common.errors import UserError, run_cli
from common.settings import add_arguments, from_namespace
from models import DEFAULT_CHECKPOINT, LoadedCLIP, load_clip


class ThreadsError(UserError, ValueError):
    """--threads out of range."""


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """Which CLIP to use: a checkpoint (file, run dir or export), else an open_clip name + tag, else the demo's."""

    checkpoint: Path | None = dataclasses.field(
        default=None, metadata={"help": "checkpoint file, training run directory or its export/ folder"}
    )
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "open_clip model name, e.g. ViT-B-32 (with --pretrained)"}
    )
    pretrained: str | None = dataclasses.field(
        default=None, metadata={"help": "open_clip pretrained tag or weights file, e.g. openai"}
    )
    device: str = dataclasses.field(default="cpu", metadata={"help": "cpu, cuda or auto"})

    def load(self) -> LoadedCLIP:
        return load_clip(
            self.checkpoint,
            self.device,
            model=self.model,
            pretrained=self.pretrained,
            default=DEFAULT_CHECKPOINT,
        )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint/--model/--pretrained/--device (from ModelChoice) and --threads."""
    group = parser.add_argument_group("model (default: the checkpoint `make demo` trained, runs/demo/train)")
    add_arguments(group, ModelChoice)
    group.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default: 1; the models are small, and on a busy machine a second "
        "thread made each step 10x slower)",
    )


def set_threads(threads: int) -> None:
    """Apply --threads; raises ThreadsError for values that make no sense."""
    if not 1 <= threads <= 256:
        raise ThreadsError(f"--threads {threads}: must be between 1 and 256")
    torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_threads(threads: int | None = 1) -> Iterator[None]:
    """Run the block with `threads` torch threads (None: leave the count alone), then restore the count
    from before, also when the block raises. One thread is the default: the models here are small, and on
    2 busy cores a second intra-op thread made each step 10x slower."""
    previous = torch.get_num_threads()
    if threads:
        set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def model_choice(args: argparse.Namespace) -> ModelChoice:
    """The model the `add_model_arguments` options name."""
    return from_namespace(ModelChoice, args)


def run_command(name: str, threads: int, produce: Callable[[], dict[str, Path]]) -> int:
    """Apply --threads, call `produce` and print the files it wrote (exit 0). A user error is one line
    on stderr (exit 2); Ctrl-C says nothing was written (exit 130, the writers are atomic)."""

    def body() -> None:
        set_threads(threads)
        for path in produce().values():
            print(path)

    return run_cli(body, interrupted=f"{name}: interrupted; nothing written")
