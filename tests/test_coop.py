"""apps.coop: learned prompts through CLIP's own text tower, CLIP frozen, saved/loaded, hostile inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apps.coop import load_classifier
from apps.coop.__main__ import run
from apps.coop.config import CoopTrainConfig
from apps.coop.data import CoopDataError, folder_features
from apps.coop.evaluate import learned_classifier
from apps.coop.prompts import LearnedPrompts, PromptClassifier, PromptError, PromptSpec, save_prompts
from apps.coop.train import Schedule, shot_features, split_indices, train, train_prompts
from models import load_clip
from testbed.hues import HUE_CLASSES, write_hue_folder
from training.config import EvalConfig
from training.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip(tiny_checkpoint):
    return load_clip(tiny_checkpoint)


@pytest.fixture(scope="module")
def hues(tmp_path_factory) -> Path:
    """The 12-colour task, 4 pictures per class at the tiny model's 32 px."""
    return write_hue_folder(tmp_path_factory.mktemp("hues") / "train", 4, seed=0, size=32, progress=False)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_context_from_hand_words_reproduces_encode_text(clip):
    """With the context set to "a photo of a" the learned-prompt path is CLIP.encode_text, bit for bit."""
    names = ["yellow green", "red", "blue purple"]
    prompts = LearnedPrompts.initial(clip, names, PromptSpec(n_ctx=4, ctx_init="a photo of a"))
    ours = PromptClassifier(clip, prompts).text_features_for(names)
    with torch.no_grad():
        ref = clip.model.encode_text(clip.tokenizer([f"a photo of a {n}." for n in names]), normalize=True)
    assert torch.allclose(ours, ref, atol=1e-6)
    # In the middle the class name splits the context: "a photo" + name + "of a" is another sentence.
    middle = LearnedPrompts.initial(
        clip, names, PromptSpec(n_ctx=4, ctx_init="a photo of a", position="middle")
    )
    with torch.no_grad():
        ref_mid = clip.model.encode_text(
            clip.tokenizer([f"a photo {n} of a." for n in names]), normalize=True
        )
    assert torch.allclose(PromptClassifier(clip, middle).text_features_for(names), ref_mid, atol=1e-6)


def test_training_learns_only_the_prompts(clip, hues):
    """CoOp and CoCoOp lower their loss; every CLIP weight is bit-identical afterwards."""
    data = folder_features(clip, hues, progress=False)
    shots = shot_features(data, 4, seed=0)
    before = _state(clip.model)
    for spec, schedule in (
        (PromptSpec(n_ctx=4), Schedule(epochs=15, batch_size=16, lr=0.02)),
        (
            PromptSpec(n_ctx=4, class_specific=True, position="middle"),
            Schedule(epochs=15, batch_size=16, lr=0.02),
        ),
        (
            PromptSpec(n_ctx=4, ctx_init="a photo of a", cocoop=True),
            Schedule(epochs=4, batch_size=4, lr=0.02),
        ),
    ):
        initial = LearnedPrompts.initial(clip, shots.classnames, spec, seed=0)
        prompts, log = train_prompts(clip, shots, spec, schedule, seed=0, progress=False)
        assert log[-1]["loss"] < log[0]["loss"], (spec, log[0], log[-1])
        assert not torch.equal(prompts.ctx, initial.ctx)
        if spec.cocoop:
            assert not torch.equal(prompts.meta_net[2].weight, initial.meta_net[2].weight)
    after = clip.model.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert not any(p.requires_grad for p in clip.model.parameters())


def test_saved_prompts_reload_and_serve_training_evaluate(clip, hues, tiny_checkpoint, tmp_path):
    cfg = CoopTrainConfig(
        data=hues, out=tmp_path / "run", shots=3, ctx=4, epochs=3, batch_size=12, cocoop=True, progress=False
    )
    summary = train(cfg, clip)
    assert summary["method"] == "CoCoOp" and summary["pictures"] == 36
    assert json.loads((tmp_path / "run" / "train.json").read_text())["shots"] == 3
    classifier = load_classifier(tmp_path / "run", clip)
    data = folder_features(clip, hues, progress=False)
    from apps.coop.prompts import load_prompts

    trained, _ = load_prompts(tmp_path / "run" / "prompts.pt")
    assert classifier.prompts.meta_net is not None
    feats = data.features[:5]
    # CoCoOp's text features depend on the picture: one [C, D] set per image.
    per_image = classifier.text_features_for(data.classnames, feats)
    assert per_image.shape == (5, 12, clip.embed_dim)
    assert not torch.allclose(per_image[0], per_image[1])
    assert torch.equal(trained.ctx, classifier.prompts.ctx)
    # The hook in training.evaluate: the learned classifier is scored beside the hand prompt and the ensemble.
    report = evaluate(
        EvalConfig(checkpoint=tiny_checkpoint, zeroshot=hues, out=tmp_path / "eval.json", progress=False),
        classifiers={"CoCoOp": learned_classifier(classifier)},
    )
    assert set(report["zeroshot"]) >= {"single", "ensemble", "CoCoOp"}
    assert 0.0 <= report["zeroshot"]["CoCoOp"]["top1"] <= 1.0
    assert "zero-shot top-1, CoCoOp" in (tmp_path / "eval.md").read_text()


def test_unified_prompts_name_new_classes_class_specific_refuse(clip):
    unified = PromptClassifier(clip, LearnedPrompts.initial(clip, ["red", "blue"], PromptSpec(n_ctx=2)))
    assert unified.text_features_for(["green", "yellow orange", "purple"]).shape == (3, clip.embed_dim)
    assert unified.classifier_weights(["green", "purple"]).shape == (clip.embed_dim, 2)
    specific = PromptClassifier(
        clip, LearnedPrompts.initial(clip, ["red", "blue"], PromptSpec(n_ctx=2, class_specific=True))
    )
    with pytest.raises(PromptError, match="no context for 'green'"):
        specific.text_features_for(["red", "green"])
    with pytest.raises(CoopDataError, match="appears twice"):
        unified.text_features_for(["red", "Red"])
    with pytest.raises(CoopDataError, match="empty class name"):
        unified.text_features_for(["red", "  "])
    with pytest.raises(PromptError, match="text context is 16"):
        LearnedPrompts.initial(clip, ["red", "blue"], PromptSpec(n_ctx=16))


def test_base_to_new_split():
    assert split_indices(12, "base") == list(range(6)) and split_indices(12, "new") == list(range(6, 12))
    assert split_indices(5, "base") == [0, 1, 2] and split_indices(5, "new") == [3, 4]
    assert len(HUE_CLASSES) == 12 and "yellow green" in HUE_CLASSES


def _run(argv, capsys) -> tuple[int, str]:
    code = run([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def _other_width_checkpoint(tmp_path: Path) -> Path:
    """A real CLIP checkpoint whose text tower is 32 wide (clip-tiny's is 64)."""
    from models.loader import CONFIG_DIR, register_configs

    config = json.loads((CONFIG_DIR / "clip-tiny.json").read_text())
    config["text_cfg"]["width"] = 32
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "clip-tiny-w32.json").write_text(json.dumps(config))
    register_configs(folder)
    from models import create_model, save_checkpoint

    return save_checkpoint(tmp_path / "w32.pt", create_model("clip-tiny-w32")[0], "clip-tiny-w32")


def test_hostile_inputs_one_line_nothing_written(clip, hues, tiny_checkpoint, tmp_path, capsys):
    common = ["--checkpoint", tiny_checkpoint, "--no-progress", "--epochs", "1"]
    cases = {}
    empty = tmp_path / "empty_class"
    shutil.copytree(hues, empty)
    for f in (empty / "red").iterdir():
        f.unlink()
    cases["no images"] = (["--data", empty], "red: class folder has no images")
    cases["shots"] = (["--data", hues, "--shots", "5"], "--shots 5 is larger than class 'blue' (4 readable")
    dup = tmp_path / "dup"
    shutil.copytree(hues, dup)
    shutil.copytree(hues / "yellow_green", dup / "yellow green")
    cases["duplicate"] = (["--data", dup], "appears twice")
    blank = tmp_path / "blank"
    shutil.copytree(hues / "red", blank / "red")
    shutil.copytree(hues / "blue", blank / "_")
    cases["empty name"] = (["--data", blank], "empty class name '_'")
    one = tmp_path / "one"
    shutil.copytree(hues / "red", one / "red")
    cases["one class"] = (["--data", one], "1 class(es) (red); classifying needs at least 2")
    cases["ctx too long"] = (["--data", hues, "--ctx", "14", "--shots", "2"], "text context is 16: use --ctx")
    for name, (args, message) in cases.items():
        out = tmp_path / f"run_{name.replace(' ', '_')}"
        code, err = _run(["train", *args, "--out", out, *common], capsys)
        assert code == 2, name
        assert err.startswith("error: ") and "\n" not in err and message in err, (name, err)
        assert not out.exists(), name

    # An unreadable picture among good ones is reported and skipped; the run goes on.
    broken = tmp_path / "broken"
    shutil.copytree(hues, broken)
    (broken / "red" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, err = _run(
        ["train", "--data", broken, "--shots", "4", "--out", tmp_path / "run_broken", *common], capsys
    )
    assert code == 0 and "zz_broken.png: not a readable image, skipped" in err, err
    assert json.loads((tmp_path / "run_broken" / "train.json").read_text())["unreadable_in_folder"] == 1

    # Prompts learned on clip-tiny (text width 64) refused by a CLIP 32 wide, before anything is written.
    prompts = LearnedPrompts.initial(clip, ["red", "blue"], PromptSpec(n_ctx=2))
    save_prompts(tmp_path / "p" / "prompts.pt", prompts, clip)
    report = tmp_path / "p" / "eval.json"
    code, err = _run(
        [
            "evaluate",
            "--prompts",
            tmp_path / "p",
            "--data",
            hues,
            "--checkpoint",
            _other_width_checkpoint(tmp_path),
            "--out",
            report,
            "--no-progress",
        ],
        capsys,
    )
    assert code == 2 and "64 wide but CLIP clip-tiny-w32" in err and "\n" not in err, err
    assert not report.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    code, err = _run(
        ["evaluate", "--prompts", tmp_path / "junk.pt", "--data", hues, "--checkpoint", tiny_checkpoint],
        capsys,
    )
    assert code == 2 and "not a readable prompts file" in err


def test_cli_train_then_evaluate(hues, tiny_checkpoint, tmp_path, capsys):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    base = [sys.executable, "-m", "apps.coop"]
    clip_args = ["--checkpoint", str(tiny_checkpoint), "--no-progress", "--threads", "1"]
    done = subprocess.run(
        [
            *base,
            "train",
            "--data",
            str(hues),
            "--shots",
            "2",
            "--epochs",
            "2",
            "--classes",
            "base",
            "--out",
            str(tmp_path / "run"),
            "--cache-dir",
            str(tmp_path / "cache"),
            *clip_args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "prompts.pt").is_file() and "CoOp: 12 pictures of 6 classes" in done.stdout
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    # evaluate in-process (one interpreter start is enough to check the module entry point)
    code = run(
        [
            "evaluate",
            "--prompts",
            str(tmp_path / "run"),
            "--data",
            str(hues),
            "--classes",
            "new",
            "--cache-dir",
            str(tmp_path / "cache"),
            *clip_args,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| learned: CoOp |" in out and "24 pictures, 6 classes (new)" in out
    saved = json.loads((tmp_path / "run" / "eval_train_new.json").read_text())
    assert saved["class_names"] == [
        "red",
        "red orange",
        "red purple",
        "yellow",
        "yellow green",
        "yellow orange",
    ]


@pytest.mark.slow
def test_demo_hook_writes_its_figure(tiny_checkpoint, tmp_path):
    from apps.coop.demo import run_demo

    figures = run_demo(tmp_path / "coop", tiny_checkpoint)
    assert Path(figures["coop_png"]).stat().st_size > 10_000
    assert set(figures["coop_top1_by_shots"]) == {1, 4, 16}
    assert set(figures["base_to_new_hm"]) >= {"CoOp", "CoCoOp"}
    assert json.loads((tmp_path / "coop" / "coop.json").read_text())["figures"]["seconds"] > 0
