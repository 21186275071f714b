"""The training loop: run directory, checkpoints that open_clip loads, resume, hostile inputs, accumulation."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet

from common.settings import ConfigError
from models import CheckpointError, create_model, load_clip, read_checkpoint, register_configs
from testbed.datasets import make_shape_dataset
from training.config import TrainConfig
from training.data import DatasetError
from training.train import TrainingDiverged, _forward_backward, main, train

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(REPO),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shape_dataset(
        tmp_path_factory.mktemp("train") / "data", n=96, seed=0, size=32, shards=2, row_group_size=24
    )


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=[data],
        out=out,
        model="clip-tiny",
        steps=6,
        batch_size=16,
        workers=0,
        warmup=2,
        lr=2e-3,
        checkpoint_every=2,
        keep_checkpoints=2,
        threads=1,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def _log(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_writes_run_dir_and_open_clip_loads_the_checkpoint(data, tmp_path):
    result = train(_cfg(data, tmp_path / "run", steps=12, checkpoint_every=4))
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000008.pt", "step_000012.pt"]
    assert (run / "latest").read_text().strip() == "checkpoints/step_000012.pt"
    assert result.checkpoint == run / "checkpoints" / "step_000012.pt" and result.steps == 12
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "config.json").read_text())["model"] == "clip-tiny"
    rows = _log(run)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    losses = [float(r["loss"]) for r in rows]
    assert all(l == l for l in losses) and losses[-1] < losses[0]  # noqa: E741 (finite, and it learns)
    assert float(rows[-1]["logit_scale"]) <= 100.0 and float(rows[-1]["samples_per_s"]) > 0
    assert all(float(r["grad_norm"]) > 0 for r in rows)  # the norm before clipping, every step

    # Plain open_clip loads it once our configs are registered.
    register_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(
        "clip-tiny", pretrained=str(result.checkpoint)
    )
    saved = read_checkpoint(result.checkpoint)
    assert saved["step"] == 12 and "optimizer" in saved and "rng" in saved and "data_checksums" in saved
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved["state_dict"][name]), name
    assert load_clip(run).model_name == "clip-tiny"  # a run directory resolves to its latest checkpoint


def test_gradient_accumulation_equals_the_full_batch():
    torch.manual_seed(0)
    model, _, _, tokenizer = create_model("clip-tiny")
    images = torch.randn(8, 3, 32, 32)
    texts = tokenizer([f"a {c} thing number {i}" for i, c in enumerate("abcdefgh")])
    loss_fn = open_clip.ClipLoss()

    def grads(micro):
        model.zero_grad()
        loss = _forward_backward(model, loss_fn, micro, torch.autocast("cpu", enabled=False), None, ddp=False)
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_loss, full = grads([(images, texts)])
    acc_loss, acc = grads([(images[:4], texts[:4]), (images[4:], texts[4:])])
    assert torch.allclose(full_loss, acc_loss, atol=1e-5)
    for name in full:
        assert torch.allclose(full[name], acc[name], atol=1e-5, rtol=1e-4), name


@pytest.fixture
def first_step(monkeypatch):
    """Records, for each train() call, the first step's gradients (before clipping) and the dtypes that
    the model's linear and convolution layers computed in. Wraps the real step; nothing is replaced."""
    import training.train as loop

    real = loop._forward_backward
    seen: list[dict] = []

    def recording(model, loss_fn, micro_batches, autocast, scaler, ddp):
        if not seen or seen[-1]:  # only the first step of each run is recorded
            return real(model, loss_fn, micro_batches, autocast, scaler, ddp)
        dtypes: set[torch.dtype] = set()
        hooks = [
            m.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
            for m in model.modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
        ]
        try:
            loss = real(model, loss_fn, micro_batches, autocast, scaler, ddp)
        finally:
            for hook in hooks:
                hook.remove()
        grads = {
            n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None
        }
        seen[-1].update(
            loss=float(loss), grads=grads, dtypes=dtypes, micro=[tuple(i.shape) for i, _ in micro_batches]
        )
        return loss

    monkeypatch.setattr(loop, "_forward_backward", recording)

    class Recorder:
        def run(self, cfg):
            seen.append({})
            result = train(cfg)
            return result, seen[-1]

    return Recorder()


def test_accum_steps_bf16_epochs_and_siglip_train(data, tmp_path, first_step):
    # Accumulation: 2 micro-batches of 32 give the gradients of one batch of 64 (same rows, same weights).
    _, whole = first_step.run(_cfg(data, tmp_path / "full", steps=1, batch_size=64, checkpoint_every=1))
    _, split = first_step.run(
        _cfg(data, tmp_path / "acc", steps=1, batch_size=64, accum_steps=2, checkpoint_every=1)
    )
    assert whole["micro"] == [(64, 3, 32, 32)] and split["micro"] == [(32, 3, 32, 32)] * 2
    assert abs(whole["loss"] - split["loss"]) < 1e-4, (whole["loss"], split["loss"])
    assert whole["grads"].keys() == split["grads"].keys() and len(whole["grads"]) > 10
    for name, grad in whole["grads"].items():
        scale = grad.abs().max().item() + 1e-8
        assert (grad - split["grads"][name]).abs().max().item() <= 1e-3 * scale + 1e-6, name
    assert whole["dtypes"] == {torch.float32}

    # bf16: the layers really compute in bfloat16 (CPU autocast), and an epoch-sized run counts its steps.
    result, bf16 = first_step.run(_cfg(data, tmp_path / "bf16", steps=None, epochs=0.5, precision="bf16"))
    assert result.steps == 3 and result.final_loss == result.final_loss  # 0.5 x 96 rows / batch 16
    assert torch.bfloat16 in bf16["dtypes"], bf16["dtypes"]
    result = train(_cfg(data, tmp_path / "sig", model="clip-tiny-sigmoid", loss="siglip", steps=2))
    assert torch.isfinite(torch.tensor(result.final_loss))
    with pytest.raises(Exception, match="logit bias"):
        train(_cfg(data, tmp_path / "sig2", loss="siglip", steps=1))


def test_hostile_training_inputs(data, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="--resume"):
        train(_cfg(data, tmp_path / "fresh", resume=True))
    with pytest.raises(DatasetError, match="larger than the dataset"):
        train(_cfg(data, tmp_path / "big", batch_size=128))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="manifest"):
        train(_cfg(tmp_path / "empty", tmp_path / "e"))

    # The command line turns each of them into one line on stderr and exit status 2.
    argv = [
        "--data",
        str(data),
        "--model",
        "clip-tiny",
        "--out",
        str(tmp_path / "cli"),
        "--resume",
        "--batch-size",
        "16",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume:") and "\n" not in err

    # Resuming a run with another model names both configs.
    train(_cfg(data, tmp_path / "other", steps=2))
    with pytest.raises(CheckpointError, match="clip-tiny.*clip-small"):
        train(_cfg(data, tmp_path / "other", model="clip-small", resume=True, steps=4))


def test_nan_loss_stops_with_last_good_checkpoint_intact(data, tmp_path):
    # An absurd learning rate blows the weights up after the first step; the loss of step 2 is NaN.
    cfg = _cfg(data, tmp_path / "nan", lr=1e30, warmup=0, steps=6, checkpoint_every=1, grad_clip=0.0)
    with pytest.raises(TrainingDiverged, match="step_000001.pt") as info:
        train(cfg)
    assert "Lower --lr" in str(info.value)
    latest = tmp_path / "nan" / "checkpoints" / "step_000001.pt"
    assert (tmp_path / "nan" / "latest").read_text().strip().endswith(latest.name)
    assert not (tmp_path / "nan" / "checkpoints" / "step_000002.pt").exists()
    assert read_checkpoint(latest)["step"] == 1


def test_truncated_checkpoint_and_offline_pretrained_fail_clearly(data, tmp_path, capsys):
    result = train(_cfg(data, tmp_path / "run", steps=1, checkpoint_every=1))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(result.checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_clip(broken)

    started = time.monotonic()
    argv = [
        "--data",
        str(data),
        "--model",
        "ViT-B-32",
        "--pretrained",
        "openai",
        "--out",
        str(tmp_path / "p"),
        "--batch-size",
        "16",
    ]
    assert main(argv) == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err
    assert "python -m training.train" in err and "checkpoint" in err


def test_sigkill_then_resume_gives_the_weights_of_an_unbroken_run(data, tmp_path):
    common = dict(steps=12, batch_size=16, workers=2, seed=7, checkpoint_every=3, keep_checkpoints=5)
    unbroken = train(_cfg(data, tmp_path / "unbroken", **common))

    run = tmp_path / "killed"
    argv = [
        sys.executable,
        "-m",
        "training.train",
        "--data",
        str(data),
        "--model",
        "clip-tiny",
        "--out",
        str(run),
        "--steps",
        "12",
        "--batch-size",
        "16",
        "--workers",
        "2",
        "--seed",
        "7",
        "--checkpoint-every",
        "3",
        "--keep-checkpoints",
        "5",
        "--warmup",
        "2",
        "--lr",
        "2e-3",
        "--threads",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step_000003.pt").exists():
        assert proc.poll() is None, "training exited before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / "step_000012.pt").exists(), "the run finished before it was killed"

    resumed = train(_cfg(data, run, resume=True, **common))
    assert resumed.steps == 12
    a = read_checkpoint(unbroken.checkpoint)["state_dict"]
    b = read_checkpoint(resumed.checkpoint)["state_dict"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["step"] for r in _log(run)] == [str(s) for s in range(1, 13)]


def test_two_processes_under_torchrun_match_one_process(data, tmp_path):
    """2 ranks x 8 rows under torchrun (gloo) against 1 process x 2 loader workers x 2 accumulated micro-batches.

    Both split the rows over the same two readers and score the same 16 pairs per step, and open_clip's
    gather-with-grad + DDP averaging gives the full-batch gradient, as feature-cached accumulation does:
    the two loss curves agree to float rounding.
    """
    one = train(
        _cfg(
            data,
            tmp_path / "one",
            steps=8,
            batch_size=16,
            workers=2,
            accum_steps=2,
            checkpoint_every=8,
            seed=3,
        )
    )
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "training.train", "--data", str(data), "--model", "clip-tiny", "--out", str(tmp_path / "two"),
        "--steps", "8", "--batch-size", "16", "--workers", "0", "--seed", "3", "--checkpoint-every", "8",
        "--warmup", "2", "--lr", "2e-3", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["world_size"] == 2 and config["micro_batch"] == 8
    loss_one = [float(r["loss"]) for r in _log(one.run_dir)]
    loss_two = [float(r["loss"]) for r in _log(tmp_path / "two")]
    assert len(loss_two) == 8 and loss_two[-1] < loss_two[0]
    assert all(abs(x - y) < 2e-3 for x, y in zip(loss_one, loss_two)), (loss_one, loss_two)
    a = read_checkpoint(one.checkpoint)["state_dict"]
    b = read_checkpoint(tmp_path / "two" / "checkpoints" / "step_000008.pt")["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_help_lists_the_flags(capsys):
    from training.evaluate import main as evaluate_main

    for entry in (main, evaluate_main):
        with pytest.raises(SystemExit) as exit_info:
            entry(["--help"])
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data", "--model", "--out", "--steps", "--epochs", "--batch-size", "--lr", "--warmup",
                 "--precision", "--workers", "--resume", "--seed", "--pretrained", "--config",
                 "--checkpoint", "--zeroshot", "--retrieval", "--linear-probe"):  # fmt: skip
        assert flag in out, flag


def test_config_validation():
    with pytest.raises(ValueError, match="--steps or --epochs"):
        TrainConfig(data=[Path("d")], out=Path("o"), steps=3, epochs=1.0)
    cfg = TrainConfig(data=[Path("d")], out=Path("o"))
    assert replace(cfg, steps=5).steps == 5


def test_augmentation_settings_reach_the_training_transform(tmp_path):
    """--crop-scale and --color-jitter change open_clip's training transform; the jitter keeps the hue."""
    from PIL import Image

    from training.train import augmentation

    red = Image.new("RGB", (64, 64), (200, 30, 30))  # uniform: a crop alone cannot change it

    def outputs(**kwargs) -> list[torch.Tensor]:
        cfg = TrainConfig(data=[tmp_path], out=tmp_path / "run", **kwargs)
        _, preprocess, _, _ = create_model("clip-tiny", aug_cfg=augmentation(cfg))
        crops = [t for t in preprocess.transforms if isinstance(t, open_clip.transform.RandomResizedCrop)]
        assert crops and crops[0].scale == (cfg.crop_scale, 1.0)
        torch.manual_seed(0)
        return [preprocess(red) for _ in range(8)]

    plain = outputs()
    assert all(torch.allclose(plain[0], x) for x in plain)
    jittered = outputs(crop_scale=0.5, color_jitter=0.5)
    means = [x.mean(dim=(1, 2)) for x in jittered]
    assert len({round(float(m.sum()), 3) for m in means}) > 4  # colours vary from picture to picture
    assert all(m[0] > m[1] and m[0] > m[2] for m in means)  # still red: the hue is left alone
    for bad in ({"crop_scale": 0.0}, {"color_jitter": 1.5}):
        with pytest.raises(ConfigError, match="crop_scale"):
            TrainConfig(data=[tmp_path], out=tmp_path / "run", **bad)


def test_fused_optimizer_trains_and_is_recorded(data, tmp_path):
    """--fused-optimizer: AdamW as one kernel; the checkpoint's optimizer says so, and the loss falls."""
    result = train(_cfg(data, tmp_path / "run", steps=6, checkpoint_every=6, fused_optimizer=True))
    losses = [float(r["loss"]) for r in _log(tmp_path / "run")]
    assert losses[-1] < losses[0]
    groups = read_checkpoint(result.checkpoint)["optimizer"]["param_groups"]
    assert groups and all(g["fused"] for g in groups)
    plain = train(_cfg(data, tmp_path / "plain", steps=1, checkpoint_every=1))
    assert not any(g["fused"] for g in read_checkpoint(plain.checkpoint)["optimizer"]["param_groups"])


def test_low_res_steps_train_the_first_steps_on_smaller_pictures(data, tmp_path, monkeypatch):
    """--low-res-steps: a ResNet tower (48 px) trains its first steps on 32 px pictures, then at 48 px;
    a tower that cannot take the small size is refused before any step, naming the fix."""
    kw = dict(model="clip-corpus-ctx16", steps=4, checkpoint_every=4, batch_size=8)
    seen: list[int] = []
    forward = ModifiedResNet.forward

    def watched(self, x):
        if self.training:  # the training steps, not the size check
            seen.append(x.shape[-1])
        return forward(self, x)

    monkeypatch.setattr(ModifiedResNet, "forward", watched)
    result = train(_cfg(data, tmp_path / "low", low_res_steps=2, **kw))
    assert seen == [32, 32, 48, 48]
    seen.clear()
    train(_cfg(data, tmp_path / "plain", **kw))
    assert seen == [48, 48, 48, 48]
    config = json.loads((tmp_path / "low" / "config.json").read_text())
    assert (config["low_res_steps"], config["low_res_size"]) == (2, 32)
    assert read_checkpoint(result.checkpoint)["loader"]["low_res_steps"] == 2
    # a ViT's position table is for its own size; a ResNet at 64 px pools a 2 x 2 grid, at 32 px 1 x 1
    for model_name, size in (("clip-tiny", 16), ("clip-corpus-64-ctx16", 32)):
        with pytest.raises(ConfigError, match=f"does not take {size} px pictures"):
            train(_cfg(data, tmp_path / model_name, model=model_name, low_res_steps=2, low_res_size=size))
        assert not (tmp_path / model_name / "log.csv").exists()
    with pytest.raises(ConfigError, match="low_res_steps must be >= 0"):
        _cfg(data, tmp_path / "bad", low_res_steps=-1)
