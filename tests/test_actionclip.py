"""apps.actionclip: generated action videos, zero-shot and fine-tuned heads, the CLI and its hostile inputs.

Runs on a randomly initialised clip-tiny (tests/conftest.py) and real H.264 videos written by the
generator; the figures with the demo CLIP are in docs/actionclip.md (and the slow test below).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from apps.actionclip.__main__ import main
from apps.actionclip.data import LabelsFileError, load_labelled_videos, read_labels_file, select_rows
from apps.actionclip.demo import ActionDemoConfig, run_demo
from apps.actionclip.model import ActionHead, FusionConfig, HeadCheckpointError, zero_shot_head
from apps.actionclip.prompts import ACTION_TEMPLATES, LabelError, check_prompt_lengths, parse_labels
from apps.actionclip.train import TrainConfig, evaluate, train_head
from apps.clip4clip.cache import FrameFeatureCache, file_sha256, visual_fingerprint
from apps.clip4clip.video import FrameSampling
from common.errors import UserError
from models import create_model, load_clip, save_checkpoint
from testbed.actions import ACTIONS, ActionSetConfig, render_action, write_action_set

DIRECTION = ("moves right", "moves left", "grows", "shrinks")
SAMPLING = FrameSampling(max_frames=8, fps=None)


@pytest.fixture(scope="module")
def clip(tiny_checkpoint):
    torch.set_num_threads(1)
    return load_clip(tiny_checkpoint)


@pytest.fixture(scope="module")
def action_set(tmp_path_factory):
    config = ActionSetConfig(train_per_action=8, test_per_action=4, size=48, actions=DIRECTION)
    return write_action_set(tmp_path_factory.mktemp("actions"), config)


@pytest.fixture(scope="module")
def splits(action_set, clip, tmp_path_factory):
    rows = read_labels_file(action_set.labels_path)
    cache = tmp_path_factory.mktemp("cache")

    def load(split):
        return load_labelled_videos(
            action_set.videos_dir, select_rows(rows, split), clip, SAMPLING, cache, False
        )

    return load("train"), load("test"), cache


def test_backward_actions_are_their_twins_reversed():
    config = ActionSetConfig()
    forward = render_action("moves right", np.random.default_rng(3), config)
    backward = render_action("moves left", np.random.default_rng(3), config)
    assert len(forward) == len(backward) >= 8
    assert all(np.array_equal(a, b) for a, b in zip(forward, backward[::-1]))
    assert not np.array_equal(forward[0], forward[-1])  # the shape does move


def test_write_action_set_writes_playable_videos_and_labels(action_set):
    rows = read_labels_file(action_set.labels_path)
    assert {r.label for r in rows} == set(DIRECTION)
    assert {r.split for r in rows} == {"train", "test"}
    assert len(rows) == 4 * (8 + 4) == len(list(action_set.videos_dir.glob("*.mp4")))


def test_frame_averaging_cannot_tell_twins_apart(splits, clip):
    """Zero-shot with meanP scores a video and its reversed twin the same: the issue's expected failure."""
    train, _, _ = splits
    index = {v: i for i, v in enumerate(train.bank.ids)}
    pairs = [
        (index[v], index[v.replace("moves_right", "moves_left")])
        for v in train.bank.ids
        if "moves_right" in v
    ]
    head = zero_shot_head(clip.embed_dim, SAMPLING.max_frames)
    video = head.video_embedding(train.bank.frames, train.bank.mask)
    for a, b in pairs:
        # H.264 codes the two orders a little differently: equal up to codec noise, not bit-identical.
        assert torch.allclose(video[a], video[b], atol=2e-2)


def test_untrained_transf_head_is_zero_shot_clip(splits, clip):
    """Zero-initialised adapters: before training, transf scores exactly as frame-averaging CLIP."""
    train, _, _ = splits
    transf = ActionHead(FusionConfig("transf", 8), clip.embed_dim, clip.model).eval()
    transf.set_frame_statistics(train.bank.frames, train.bank.mask)
    zero_shot = zero_shot_head(clip.embed_dim, 8)
    frames, mask = train.bank.frames, train.bank.mask
    assert torch.allclose(
        transf.video_embedding(frames, mask), zero_shot.video_embedding(frames, mask), atol=1e-6
    )


def test_temporal_transformer_learns_direction_that_mean_pooling_cannot(splits, clip):
    train, test, _ = splits
    config = TrainConfig(FusionConfig("transf", 8), epochs=40, batch_size=16, lr=3e-3)
    results = {}
    for fusion in ("meanP", "transf"):
        trained = train_head(
            clip, train, replace(config, head=replace(config.head, fusion=fusion)), progress=False
        )
        results[fusion] = evaluate(clip, trained.head, test).top1
    zero_shot = evaluate(clip, zero_shot_head(clip.embed_dim, 8), test).top1
    # Every test video has a twin with the same frames reversed: meanP is at most right on one of the two.
    assert results["meanP"] <= 50.0 + 1e-6
    assert results["transf"] >= results["meanP"] + 20, results
    assert results["transf"] > zero_shot


def test_prompts_fit_the_text_context_and_long_labels_are_refused(clip):
    check_prompt_lengths(clip.tokenizer, list(ACTIONS), ACTION_TEMPLATES)
    with pytest.raises(LabelError, match="too long"):
        check_prompt_lengths(
            clip.tokenizer,
            ["moves slowly and then very quickly towards the far left corner"],
            ACTION_TEMPLATES,
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no label"),
        (" , ", "no label"),
        ("grows,,shrinks", "empty"),
        ("grows,Grows", "twice"),
        ("grows", "only one"),
    ],
)
def test_bad_label_lists_are_refused(text, message):
    with pytest.raises(LabelError, match=message):
        parse_labels(text)


def test_labels_file_errors(tmp_path):
    cases = {
        "nocols.csv": ("a,b\n1,2\n", "video,label"),
        "empty_label.csv": ("video,label\nx.mp4,\n", "line 2"),
        "two_labels.csv": ("video,label\nx,grows\nx,shrinks\n", "two labels"),
        "header_only.csv": ("video,label\n", "no rows"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(LabelsFileError, match=message):
            read_labels_file(tmp_path / name)
    rows = read_labels_file(
        _write(tmp_path / "ok.csv", "video,label,split\na.mp4,grows,train\nb,shrinks,train\n")
    )
    with pytest.raises(LabelsFileError, match="only 1 videos"):
        select_rows(rows, "train", shots=2)
    with pytest.raises(LabelsFileError, match="no video in split 'test'"):
        select_rows(rows, "test")


def _write(path, text):
    path.write_text(text)
    return path


def test_frame_features_are_shared_with_clip4clip_cache(splits, action_set, clip):
    _, _, cache = splits
    shared = FrameFeatureCache(cache, visual_fingerprint(clip.model), SAMPLING)
    video = next(action_set.videos_dir.glob("*.mp4"))
    assert shared.get(video, file_sha256(video)) is not None


def test_demo_run_writes_its_report_and_figures(tmp_path, tiny_checkpoint, one_thread):
    """`make demo`'s hook end to end, at a toy size (the real figures: docs/actionclip.md)."""
    config = ActionDemoConfig(train_per_action=2, test_per_action=1, epochs=1, batch_size=8)
    figures = run_demo(tmp_path, tiny_checkpoint, config=config)
    assert set(figures["top1_all_actions"]) == {"zero-shot", "meanP", "transf"}
    assert set(figures["top1_held_out_names"]) == {"zero-shot", "meanP", "transf"}
    assert figures["held_out_chance"] == pytest.approx(100 / 3)
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "report.md").read_text()
    assert "| transf |" in report and "moves up, rotates counterclockwise, fades out" in report
    assert json.loads((tmp_path / "report.json").read_text())["videos"] == {"train": 26, "test": 13}


def test_every_refusal_is_a_user_error():
    """Entry points print a UserError as one line (exit 2): every error class of the app is one."""
    for error in (LabelError, LabelsFileError, HeadCheckpointError):
        assert issubclass(error, UserError)


# --- the command line ------------------------------------------------------------------------------


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_train_evaluate_classify_with_an_unreadable_video(tmp_path, action_set, tiny_checkpoint, capsys):
    videos = tmp_path / "videos"
    shutil.copytree(action_set.videos_dir, videos)
    broken = videos / "test_grows_000.mp4"
    broken.write_bytes(b"not a video at all")
    common = ["--checkpoint", tiny_checkpoint, "--threads", "1", "--cache-dir", tmp_path / "cache"]
    data = ["--videos", videos, "--labels", action_set.labels_path]
    code, out, err = _cli(capsys, "train", *data, "--out", tmp_path / "run", "--epochs", "3", *common)
    assert code == 0, err
    assert (tmp_path / "run" / "head.pt").is_file() and "wrote" in out
    state = torch.load(tmp_path / "run" / "head.pt", weights_only=True)
    assert state["labels"] == sorted(DIRECTION) and state["fusion"]["fusion"] == "transf"

    code, out, err = _cli(
        capsys,
        "evaluate",
        *data,
        "--head",
        tmp_path / "run",
        "--json",
        tmp_path / "eval.json",
        "--confusion",
        tmp_path / "confusion.png",
        *common,
    )
    assert code == 0, err
    assert f"skipped {broken}" in err  # reported, and the other test videos still evaluated
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["videos"] == 4 * 4 - 1 and len(metrics["skipped"]) == 1
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    good = videos / "test_shrinks_000.mp4"
    code, out, err = _cli(
        capsys,
        "classify",
        good,
        broken,
        "--labels",
        "grows,shrinks,swims",
        "--head",
        tmp_path / "run",
        "-k",
        "2",
        "--json",
        tmp_path / "classify.json",
        *common,
    )
    assert code == 0, err
    assert str(good) in out and f"skipped {broken}" in err
    result = json.loads((tmp_path / "classify.json").read_text())
    assert len(result["results"]) == 1 and len(result["results"][0]["top"]) == 2
    assert abs(sum(t["probability"] for t in result["results"][0]["top"])) <= 1.0 + 1e-6

    code, out, err = _cli(capsys, "classify", broken, "--labels", "grows,shrinks", *common)
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: none of the 1 videos could be read")


@pytest.mark.parametrize(
    ("labels", "message"),
    [("", "no label"), ("grows,grows", "twice"), ("grows", "only one"), ("grows,,shrinks", "empty")],
)
def test_cli_refuses_bad_labels_in_one_line(labels, message, action_set, tiny_checkpoint, capsys):
    video = next(action_set.videos_dir.glob("*.mp4"))
    code, out, err = _cli(capsys, "classify", video, "--labels", labels, "--checkpoint", tiny_checkpoint)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_refuses_a_head_of_another_width_and_warns_about_other_weights(
    tmp_path, action_set, tiny_checkpoint, capsys
):
    common = ["--threads", "1", "--cache-dir", tmp_path / "cache"]
    code, _, err = _cli(
        capsys,
        "train",
        "--videos",
        action_set.videos_dir,
        "--labels",
        action_set.labels_path,
        "--out",
        tmp_path / "run",
        "--epochs",
        "1",
        "--fusion",
        "meanP",
        "--checkpoint",
        tiny_checkpoint,
        *common,
    )
    assert code == 0, err
    torch.manual_seed(0)
    wide = save_checkpoint(
        tmp_path / "small.pt", create_model("clip-small")[0], "clip-small"
    )  # width 128, not 64
    video = next(action_set.videos_dir.glob("*.mp4"))
    code, _, err = _cli(
        capsys,
        "classify",
        video,
        "--labels",
        "grows,shrinks",
        "--head",
        tmp_path / "run",
        "--checkpoint",
        wide,
        *common,
    )
    assert code == 2 and "width 64" in err and "width 128" in err and err.count("\n") == 1

    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "other-tiny.pt", create_model("clip-tiny")[0], "clip-tiny")
    code, out, err = _cli(
        capsys,
        "classify",
        video,
        "--labels",
        "grows,shrinks",
        "--head",
        tmp_path / "run",
        "--checkpoint",
        other,
        *common,
    )
    assert code == 0 and "warning: head" in err and "same width, other weights" in err


def test_cli_refused_training_writes_nothing(tmp_path, action_set, tiny_checkpoint, capsys):
    data = [
        "--videos",
        action_set.videos_dir,
        "--labels",
        action_set.labels_path,
        "--checkpoint",
        tiny_checkpoint,
    ]
    for extra, message in (
        (["--shots", "99"], "--shots 99"),
        (["--exclude", "grows,flies"], "'flies' is not a label"),
        (["--exclude", "grows,shrinks,moves left"], "only one"),
        (["--split", "validation"], "no video in split"),
    ):
        out_dir = tmp_path / "never"
        code, _, err = _cli(capsys, "train", *data, "--out", out_dir, *extra)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out_dir.exists()


def test_cli_zero_shot_refuses_an_untrained_transformer(action_set, tiny_checkpoint, capsys):
    video = next(action_set.videos_dir.glob("*.mp4"))
    code, _, err = _cli(
        capsys,
        "classify",
        video,
        "--labels",
        "grows,shrinks",
        "--fusion",
        "transf",
        "--checkpoint",
        tiny_checkpoint,
    )
    assert code == 2 and "needs a trained --head" in err


def test_help_explains_every_command(capsys):
    for command in ("classify", "train", "evaluate", "synth"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "--" in capsys.readouterr().out
