"""Train a CLIP (any open_clip model or one of our configs) on Parquet shards.

    python -m training.train --data data/web --model clip-small --out runs/demo/train --steps 800
    torchrun --nproc-per-node 2 -m training.train --data data/web --model clip-tiny --out runs/ddp

The step is one function (`train`'s loop) read top to bottom: batch, forward, loss, backward,
clip, step, schedule, log, checkpoint. Loss and model come from open_clip; the rest is here.
A run directory holds checkpoints/step_NNNNNN.pt (last K kept), `latest`, log.csv, loss.png
and config.json; `--resume` continues from `latest` exactly (same weights as an unbroken run).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss, SigLipLoss
from open_clip.transform import PreprocessCfg, image_transform_v2
from tqdm import tqdm

from common.atomic import atomic_write_bytes, output_lock
from common.errors import UserError
from common.settings import ConfigError, to_dict
from curation.shards import load_manifest, manifest_checksum
from models import (
    CHECKPOINT_DIR,
    EXPORT_DIR,
    LATEST,
    CheckpointError,
    create_model,
    export_local_dir,
    load_state,
    quiet_random_init,
    read_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    unwrap,
)
from models.memory import keep_freed_memory
from training.config import TrainConfig
from training.data import DatasetError, ShardStream, data_version_of, find_row_groups, train_batches

LOG_FIELDS = [
    "step",
    "epoch",
    "loss",
    "lr",
    "logit_scale",
    "grad_norm",
    "samples_per_s",
    "data_wait_s",
    "step_s",
    "skipped_rows",
]
MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps the temperature so logits are scaled by at most 100


class TrainingDiverged(UserError, RuntimeError):
    """The loss or the gradients became NaN/inf; the weights of the last checkpoint are untouched."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    checkpoint: Path
    steps: int
    final_loss: float
    samples_per_s: float
    data_wait_fraction: float
    skipped_rows: int
    seconds: float


# --- set-up helpers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> _Dist:
    """Rank, world size and device from torchrun's environment (gloo on CPU, nccl on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return _Dist(rank, world_size, dev)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as CLIP trains: no decay on gains, biases, norms and the logit scale/bias."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup to `peak`, then cosine decay to zero at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def augmentation(cfg: TrainConfig) -> dict:
    """open_clip AugmentationCfg fields for the training transform (its defaults when unchanged)."""
    aug: dict = {"scale": (cfg.crop_scale, 1.0)}
    if cfg.color_jitter:
        j = cfg.color_jitter
        aug.update(color_jitter=(j, j, j, 0.0), color_jitter_prob=0.8)
    return aug


def _make_loss(cfg: TrainConfig, model: torch.nn.Module, d: _Dist) -> torch.nn.Module:
    if cfg.loss == "siglip":
        if getattr(unwrap(model), "logit_bias", None) is None:
            raise ConfigError(
                f"--loss siglip needs a model with a logit bias; {cfg.model!r} has none "
                '(use clip-tiny-sigmoid, or a config with "init_logit_bias")'
            )
        return SigLipLoss(rank=d.rank, world_size=d.world_size)
    return ClipLoss(
        local_loss=cfg.local_loss,
        gather_with_grad=True,
        cache_labels=True,
        rank=d.rank,
        world_size=d.world_size,
    )


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    # "amp" is fp16 + loss scaling on GPU; CPUs have no fast fp16, so it means bf16 there.
    dtype = torch.float16 if precision == "amp" and device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_image_size(model: torch.nn.Module) -> int:
    size = unwrap(model).visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def low_res_transform(cfg: TrainConfig, model: torch.nn.Module) -> Callable | None:
    """The training transform at --low-res-size (None without --low-res-steps), after checking that the
    image tower takes pictures of that size and gives features of the shape it gives at its own size."""
    if not cfg.low_res_steps:
        return None
    size, full, visual = cfg.low_res_size, model_image_size(model), unwrap(model).visual
    device = next(visual.parameters()).device
    was_training = visual.training
    visual.eval()
    try:
        with torch.no_grad():
            shapes = [tuple(visual(torch.zeros(1, 3, s, s, device=device)).shape) for s in (full, size)]
    except Exception as exc:  # a ViT's position table, a ResNet's attention pool on another grid
        shapes = [f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"]
    finally:
        visual.train(was_training)
    if len(shapes) != 2 or shapes[0] != shapes[1]:
        raise ConfigError(
            f"--low-res-steps: the image tower of {cfg.model!r} ({full} px) does not take {size} px pictures "
            f"({shapes[-1]}); choose a --low-res-size it takes (a ResNet tower: one whose size // 32 is "
            f"{full // 32}), or --low-res-steps 0"
        )
    # open_clip's own training transform (create_model_and_transforms), at the small size
    return image_transform_v2(
        PreprocessCfg(**{**visual.preprocess_cfg, "size": size}), is_train=True, aug_cfg=augmentation(cfg)
    )


def warn_small_images(data: Sequence[Path], model_size: int) -> None:
    """Say so when a dataset was built at a smaller image size than the model reads (upscaled blur)."""
    for root in data:
        built = load_manifest(root).config.get("image_size")
        if isinstance(built, int) and built < model_size:
            print(
                f"warning: {root} holds {built} px images but {model_size} px is the model's input size: "
                f"they are upscaled; rebuild the dataset with --image-size {model_size} or pick a smaller model",
                file=sys.stderr,
            )


def _checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"step_{step:06d}.pt"


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    found = sorted((run_dir / CHECKPOINT_DIR).glob("step_*.pt"))
    for old in found[:-keep]:
        old.unlink(missing_ok=True)


def _read_log(path: Path, upto_step: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if int(row["step"]) <= upto_step]


def plot_loss(log_csv: Path, out_png: Path) -> Path | None:
    """Loss (and learning rate) against step, from log.csv."""
    rows = _read_log(log_csv, sys.maxsize)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [float(r["loss"]) for r in rows], lw=1, label="contrastive loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [float(r["lr"]) for r in rows], color="tab:orange", lw=1, alpha=0.6, label="lr")
    lr_ax.set_ylabel("learning rate")
    ax.set_title(f"{log_csv.parent.name}: loss over {steps[-1]} steps")
    fig.legend(loc="upper right")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png


def _forward_backward(model, loss_fn, micro_batches, autocast, scaler, ddp: bool) -> torch.Tensor:
    """Loss over the whole batch and its gradients, however many micro-batches it arrives in.

    With accumulation, features of all micro-batches are first computed without gradients; each
    micro-batch is then recomputed with gradients and scored against all the others, so the
    contrastive loss sees every negative of the full batch (as open_clip_train's accum_freq).
    """
    if len(micro_batches) == 1:
        images, texts = micro_batches[0]
        with autocast:
            loss = loss_fn(*model(images, texts))
        (scaler.scale(loss) if scaler else loss).backward()
        return loss.detach()
    with torch.no_grad(), autocast:
        cached = [model(images, texts)[:2] for images, texts in micro_batches]
    for j, (images, texts) in enumerate(micro_batches):
        sync = contextlib.nullcontext() if (not ddp or j == len(micro_batches) - 1) else model.no_sync()
        with sync:
            with autocast:
                image_f, text_f, *scale_bias = model(images, texts)
                if j < len(micro_batches) - 1:
                    # The temperature (and bias) enter every pass; let only one pass carry their gradient.
                    scale_bias = [t.detach() for t in scale_bias]
                all_images = torch.cat([image_f if k == j else c[0] for k, c in enumerate(cached)])
                all_texts = torch.cat([text_f if k == j else c[1] for k, c in enumerate(cached)])
                loss = loss_fn(all_images, all_texts, *scale_bias)
            (scaler.scale(loss) if scaler else loss).backward()
    return loss.detach()


# --- the run ------------------------------------------------------------------------------------


def _data_settings(cfg: TrainConfig, d: _Dist, micro_batch: int) -> dict:
    """What decides the data order and the captions read: saved with each checkpoint, compared on resume."""
    return {
        "world_size": d.world_size,
        "workers": cfg.workers,
        "micro_batch": micro_batch,
        "seed": cfg.seed,
        "captions": list(cfg.captions),
        "generic_captions": cfg.generic_captions,
        "low_res_steps": cfg.low_res_steps,
        "low_res_size": cfg.low_res_size,
    }


def _resume(
    cfg: TrainConfig,
    run_dir: Path,
    model,
    optimizer,
    scaler,
    d: _Dist,
    micro_batch: int,
    data_checksums: dict,
) -> tuple[int, int, Path]:
    """Load the run's latest checkpoint into model, optimizer, scaler and the RNGs: (step, skipped rows, file).

    Warns (rank 0) when the data settings or the data changed since: training goes on, in another order.
    """
    try:
        resumed_from = resolve_checkpoint(run_dir)
    except CheckpointError as exc:
        raise CheckpointError(f"--resume: {exc}; start without --resume") from exc
    ckpt = read_checkpoint(resumed_from)
    load_state(model, ckpt, str(resumed_from), expected_name=cfg.model)
    if "optimizer" not in ckpt:
        raise CheckpointError(
            f"{resumed_from}: holds weights only (no optimizer state); cannot resume from it"
        )
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    loader_state = ckpt.get("loader", {})
    now = _data_settings(cfg, d, micro_batch)
    # checkpoints from before --captions / --generic-captions / --low-res-steps
    loader_state = {
        "captions": ["caption"],
        "generic_captions": 0.0,
        "low_res_steps": 0,
        "low_res_size": 32,
        **loader_state,
    }
    changed = {k: (loader_state.get(k), v) for k, v in now.items() if loader_state.get(k) != v}
    if changed and d.main:
        print(
            f"warning: resuming with different data settings {changed}: the data order will differ",
            file=sys.stderr,
        )
    old = ckpt.get("data_checksums", {})
    if old and old != data_checksums and d.main:
        print(
            f"warning: {resumed_from} was trained on other data (manifest checksums differ)", file=sys.stderr
        )
    _set_rng_state(ckpt["rng"])
    return int(ckpt["step"]), int(ckpt.get("skipped_rows", 0)), resumed_from


def train(cfg: TrainConfig) -> TrainResult:
    """Train `cfg.model` on `cfg.data`, writing checkpoints, log.csv and loss.png into `cfg.out`.

    One run per folder: a second `train` on the same `out` is refused at once (rank 0 holds the lock).
    """
    first_rank = int(os.environ.get("RANK", "0")) == 0
    with output_lock(cfg.out, "training") if first_rank else contextlib.nullcontext():
        return _train(cfg)


def _train(cfg: TrainConfig) -> TrainResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    d = _init_distributed(cfg.device)
    run_dir = Path(cfg.out)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and on every rerun

    # Data first: a bad dataset should fail before minutes of model set-up.
    # Each dataset pinned to one version now (latest by default): a build committing meanwhile changes nothing.
    data_versions = {str(p): data_version_of(p, cfg.data_version) for p in cfg.data}
    refs = [ref for p in cfg.data for ref in find_row_groups([p], data_versions[str(p)], cfg.captions)]
    num_rows = sum(r.num_rows for r in refs)
    if cfg.batch_size > num_rows:
        raise DatasetError(
            f"--batch-size {cfg.batch_size} is larger than the dataset ({num_rows} rows in "
            f"{', '.join(map(str, cfg.data))}): lower --batch-size or add data"
        )
    if cfg.batch_size % (d.world_size * cfg.accum_steps):
        raise ConfigError(
            f"--batch-size {cfg.batch_size} must divide by processes x --accum-steps "
            f"({d.world_size} x {cfg.accum_steps})"
        )
    micro_batch = cfg.batch_size // (d.world_size * cfg.accum_steps)
    total_steps = cfg.steps or max(1, math.ceil((cfg.epochs or 1.0) * num_rows / cfg.batch_size))
    data_checksums = {str(p): manifest_checksum(p, data_versions[str(p)]) for p in cfg.data}

    with quiet_random_init() if cfg.resume else contextlib.nullcontext():  # resumed weights come next
        model, preprocess_train, _, tokenizer = create_model(
            cfg.model, pretrained=cfg.pretrained, device=d.device, aug_cfg=augmentation(cfg)
        )
    image_size = model_image_size(model)
    if d.main:
        warn_small_images(cfg.data, image_size)
    # NHWC convolutions are about 25 % faster on CPU (oneDNN) for ResNet towers; only 4-D weights change.
    model = model.to(memory_format=torch.channels_last)
    loss_fn = _make_loss(cfg, model, d)
    # fused: one kernel over all parameters; on a CPU 5x faster than the per-tensor loop (10 M
    # parameters: 16 vs 91 ms a step, a tenth of a corpus-preset step; docs/corpus.md)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=cfg.fused_optimizer and d.device.type in ("cpu", "cuda"),
    )
    use_scaler = cfg.precision == "amp" and d.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    start_step, skipped_rows, resumed_from = 0, 0, None
    if cfg.resume:
        start_step, skipped_rows, resumed_from = _resume(
            cfg, run_dir, model, optimizer, scaler, d, micro_batch, data_checksums
        )

    ddp = d.world_size > 1
    train_model = (
        torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device] if d.device.type == "cuda" else None
        )
        if ddp
        else model
    )
    stream = ShardStream(
        refs,
        preprocess_train,
        tokenizer,
        batch_size=micro_batch,
        seed=cfg.seed,
        rank=d.rank,
        world_size=d.world_size,
        num_workers=cfg.workers,
        shuffle_buffer=cfg.shuffle_buffer,
        skip_batches=start_step * cfg.accum_steps,
        image_size=image_size,
        captions=cfg.captions,
        generic_captions=cfg.generic_captions,
        low_res_transform=low_res_transform(cfg, model),
        low_res_batches=cfg.low_res_steps * cfg.accum_steps,
        keep_mb=cfg.keep_data_mb,
    )
    batches = train_batches(
        stream, cfg.workers, pin_memory=d.device.type == "cuda", worker_nice=cfg.worker_nice
    )

    log_path = run_dir / "log.csv"
    latest_checkpoint = resumed_from
    if d.main:
        (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        config = {
            **to_dict(cfg),
            "world_size": d.world_size,
            "micro_batch": micro_batch,
            "total_steps": total_steps,
        }
        config["data_checksums"] = data_checksums
        config["data_versions"] = data_versions  # the version each dataset was pinned to (None: no versions)
        atomic_write_bytes(run_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode())
        # A resumed run rewrites the log up to its checkpoint, so the curve has no duplicate steps.
        kept = _read_log(log_path, start_step)
        with open(log_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(kept)

    def checkpoint(step: int) -> Path:
        path = _checkpoint_path(run_dir, step)
        if d.main:
            save_checkpoint(
                path,
                model,
                cfg.model,
                step=step,
                optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict() if scaler else None,
                schedule={"peak_lr": cfg.lr, "warmup": cfg.warmup, "total_steps": total_steps},
                rng=_rng_state(),
                loader={**_data_settings(cfg, d, micro_batch), "batches_consumed": step * cfg.accum_steps},
                data_checksums=data_checksums,
                skipped_rows=skipped_rows,
                train_config=to_dict(cfg),
            )
            atomic_write_bytes(run_dir / LATEST, f"{CHECKPOINT_DIR}/{path.name}\n".encode())
            if step == total_steps:  # plain open_clip loads this: `local-dir:RUN/export`
                export_local_dir(model, cfg.model, run_dir / EXPORT_DIR)
            _prune_checkpoints(run_dir, cfg.keep_checkpoints)
            plot_loss(log_path, run_dir / "loss.png")
        if ddp:
            dist.barrier()
        return path

    autocast = _autocast(cfg.precision, d.device)
    log_file = open(log_path, "a", newline="") if d.main else None
    log = csv.DictWriter(log_file, LOG_FIELDS) if log_file else None
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=not (d.main and cfg.progress),
    )
    loss_value, samples_per_s, wait_total, time_total = float("nan"), 0.0, 0.0, 0.0
    started = time.perf_counter()
    try:
        for step in range(start_step, total_steps):
            t0 = time.perf_counter()
            micro, step_skipped = [], 0
            for _ in range(cfg.accum_steps):
                batch = next(batches)
                images = batch.images.to(d.device, non_blocking=True, memory_format=torch.channels_last)
                micro.append((images, batch.texts.to(d.device, non_blocking=True)))
                step_skipped += batch.skipped
            data_wait = time.perf_counter() - t0

            lr = lr_at(step, cfg.lr, cfg.warmup, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            train_model.train()
            loss = _forward_backward(train_model, loss_fn, micro, autocast, scaler, ddp)

            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            )
            # One collective per step: mean loss, skipped rows, and whether any rank saw NaN/inf.
            bad = (not torch.isfinite(loss)) or (scaler is None and not torch.isfinite(grad_norm))
            stats = torch.tensor([loss.float().item(), float(step_skipped), float(bad)], dtype=torch.float64)
            if ddp:
                dist.all_reduce(stats)
                stats[0] /= d.world_size
            if stats[2] > 0:
                where = (
                    f"last good checkpoint: {latest_checkpoint}"
                    if latest_checkpoint
                    else "no checkpoint was written"
                )
                raise TrainingDiverged(
                    f"loss became {stats[0].item()} at step {step + 1} (grad norm {float(grad_norm):.3g}); "
                    f"stopped before updating the weights; {where}. Lower --lr or raise --warmup."
                )
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            with torch.no_grad():
                unwrap(model).logit_scale.clamp_(0, MAX_LOGIT_SCALE)

            loss_value = stats[0].item()
            skipped_rows += int(stats[1].item())
            step_time = time.perf_counter() - t0
            samples_per_s = cfg.batch_size / step_time
            wait_total += data_wait
            time_total += step_time
            done = step + 1
            if log is not None:
                log.writerow(
                    {
                        "step": done,
                        "epoch": f"{done * cfg.batch_size / num_rows:.3f}",
                        "loss": f"{loss_value:.5f}",
                        "lr": f"{lr:.3e}",
                        "logit_scale": f"{unwrap(model).logit_scale.exp().item():.3f}",
                        "grad_norm": f"{float(grad_norm):.4g}",  # before clipping to --grad-clip
                        "samples_per_s": f"{samples_per_s:.1f}",
                        "data_wait_s": f"{data_wait:.4f}",
                        "step_s": f"{step_time:.4f}",
                        "skipped_rows": skipped_rows,
                    }
                )
                log_file.flush()
            bar.set_postfix(
                loss=f"{loss_value:.3f}", lr=f"{lr:.1e}", sps=f"{samples_per_s:.0f}", refresh=False
            )
            bar.update(1)
            if done % cfg.checkpoint_every == 0 or done == total_steps:
                if log_file:
                    log_file.flush()
                latest_checkpoint = checkpoint(done)
    finally:
        batches.close()  # stop the loader's workers now, also on error (see train_batches)
        bar.close()
        if log_file:
            log_file.close()
    if latest_checkpoint is None or start_step >= total_steps:
        latest_checkpoint = resolve_checkpoint(run_dir) if start_step >= total_steps else latest_checkpoint
    if d.main and skipped_rows:
        print(f"skipped {skipped_rows} rows with an undecodable image or no caption", file=sys.stderr)
    return TrainResult(
        run_dir=run_dir,
        checkpoint=latest_checkpoint,
        steps=total_steps,
        final_loss=loss_value,
        samples_per_s=(total_steps - start_step) * cfg.batch_size / time_total if time_total else 0.0,
        data_wait_fraction=wait_total / time_total if time_total else 0.0,
        skipped_rows=skipped_rows,
        seconds=time.perf_counter() - started,
    )


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from common.errors import run_cli
    from common.settings import add_arguments, from_namespace

    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a CLIP on Parquet shards (curation build output). "
        "Multi-process: torchrun --nproc-per-node P -m training.train ...",
    )
    parser.add_argument(
        "--config", type=Path, help="TOML preset (e.g. training/presets/demo.toml); flags override it"
    )
    add_arguments(parser, TrainConfig)
    args = parser.parse_args(argv)

    def body() -> None:
        try:
            result = train(from_namespace(TrainConfig, args, toml_path=args.config))
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"trained {result.steps} steps in {result.seconds:.0f} s: final loss {result.final_loss:.4f}, "
                f"{result.samples_per_s:.1f} samples/s, data wait {100 * result.data_wait_fraction:.0f}%\n"
                f"checkpoint: {result.checkpoint}"
            )

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
