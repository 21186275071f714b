"""Evaluation: zero-shot (single prompt + ensemble), retrieval R@k, linear probe, reports, hostile inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.settings import ConfigError
from models import create_model, load_clip, save_checkpoint
from testbed.datasets import make_shape_dataset
from testbed.shapes import write_image_folder
from training.config import EvalConfig, TrainConfig
from training.evaluate import (
    NAME_PROMPT,
    SUBCLASSES_FILE,
    EvalError,
    _recalls,
    evaluate,
    main,
    prompt_classifier,
    read_image_folder,
    subclass_classifier,
)
from training.train import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model, *_ = create_model("clip-tiny")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "random.pt", model, "clip-tiny", step=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("shapes") / "test", n_per_class=3, seed=11, size=32)


def test_recalls_count_the_best_ranked_positive():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.1, 0.7, 0.6]])
    eye = torch.eye(3, dtype=torch.bool)
    r = _recalls(sim, eye, ks=(1, 2, 3))
    # query 0: own item first; query 1: own item second; query 2: own item second
    assert r == {"R@1": pytest.approx(1 / 3), "R@2": 1.0, "R@3": 1.0, "median_rank": 2.0}
    # Items 1 and 2 share a caption: a hit on either counts for both.
    shared = eye.clone()
    shared[1, 2] = shared[2, 1] = True
    assert _recalls(sim, shared, ks=(1,))["R@1"] == 1.0


def test_evaluate_writes_json_and_markdown(checkpoint, folder, tmp_path):
    held_out = make_shape_dataset(tmp_path / "held", n=40, seed=5, size=32)
    cfg = EvalConfig(
        checkpoint=checkpoint,
        zeroshot=folder,
        retrieval=held_out,
        linear_probe=folder,
        out=tmp_path / "report.json",
        progress=False,
    )
    report = evaluate(cfg)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["model"] == "clip-tiny"
    z = saved["zeroshot"]
    assert z["images"] == 108 and z["classes"] == 36
    assert z["single"]["templates"] == 1 and z["ensemble"]["templates"] == 80 and z["name"]["templates"] == 1
    for name in ("single", "ensemble", "name"):
        assert 0.0 <= z[name]["top1"] <= z[name]["top5"] <= 1.0
        assert len(z[name]["per_class_top1"]) == 36 and "red circle" in z[name]["per_class_top1"]
    r = saved["retrieval"]
    assert r["pairs"] == 40
    for direction in ("image_to_text", "text_to_image"):
        assert 0.0 <= r[direction]["R@1"] <= r[direction]["R@5"] <= r[direction]["R@10"] <= 1.0
    p = saved["linear_probe"]
    assert p["split"] == {"train": 36, "val": 36, "test": 36} and p["best_c"] > 0
    assert 0.0 <= p["test_accuracy"] <= 1.0
    table = (tmp_path / "report.md").read_text()
    assert (
        "| zero-shot top-1, single prompt" in table and "ensemble of 80 prompts" in table and "R@1" in table
    )
    assert report["report_path"] == str(tmp_path / "report.json")


@pytest.mark.slow
def test_a_trained_tiny_model_beats_chance_by_far(tmp_path):
    data = make_shape_dataset(tmp_path / "data", n=720, seed=0, size=32, shards=2)
    result = train(
        TrainConfig(
            data=[data],
            out=tmp_path / "run",
            model="clip-tiny",
            steps=300,
            batch_size=64,
            lr=2e-3,
            warmup=30,
            workers=1,
            threads=1,
            progress=False,
        )
    )
    test = write_image_folder(tmp_path / "test", n_per_class=5, seed=3, size=32)
    report = evaluate(
        EvalConfig(checkpoint=result.run_dir, zeroshot=test, out=tmp_path / "r.json", progress=False)
    )
    assert report["zeroshot"]["ensemble"]["top1"] > 5 / 36  # chance is 1/36


def test_hostile_evaluation_inputs(checkpoint, folder, tmp_path, capsys):
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        EvalConfig(checkpoint=checkpoint)
    with pytest.raises(EvalError, match="no such image folder"):
        evaluate(EvalConfig(checkpoint=checkpoint, zeroshot=tmp_path / "nope", out=tmp_path / "r.json"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(EvalError, match="no class sub-folders"):
        read_image_folder(tmp_path / "flat")

    # An unreadable file in a class folder is skipped and counted, not a crash.
    messy = write_image_folder(tmp_path / "messy", n_per_class=1, seed=0, size=32)
    (messy / "red_circle" / "broken.png").write_bytes(b"\x89PNG not really")
    report = evaluate(
        EvalConfig(checkpoint=checkpoint, zeroshot=messy, out=tmp_path / "m.json", progress=False)
    )
    assert report["zeroshot"]["unreadable"] == 1 and report["zeroshot"]["images"] == 36

    # One image per class cannot be split into train / validation / test.
    with pytest.raises(EvalError, match="at least 3 per class"):
        evaluate(
            EvalConfig(checkpoint=checkpoint, linear_probe=messy, out=tmp_path / "p.json", progress=False)
        )

    # A truncated checkpoint: one line on stderr, exit status 2.
    broken = tmp_path / "broken.pt"
    broken.write_bytes(checkpoint.read_bytes()[:3000])
    capsys.readouterr()
    assert main(["--checkpoint", str(broken), "--zeroshot", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "truncated" in err and "\n" not in err


def test_a_class_is_as_likely_as_its_subclasses_together():
    # a stand-in text side: each name's logit is fixed, so the class choice is plain to check
    scores = {"frog": 0.5, "cat face": 0.5, "duck": 0.5, "bus": 0.9, "rocket": 0.0}

    def base(feats, names):
        return torch.tensor([[scores[n] for n in names]] * feats.shape[0])

    subclasses = {"animals": ["frog", "cat face", "duck"], "travel": ["bus", "rocket"]}
    logits = subclass_classifier(base, subclasses, scale=1.0)(torch.zeros(2, 4), ["travel", "animals"])
    # the best single name is "bus", but the three animals together are likelier
    e = torch.tensor([0.5, 0.5, 0.5, 0.9, 0.0]).exp()
    expected = [float((e[3] + e[4]) / e.sum()), float(e[:3].sum() / e.sum())]
    assert logits.exp().tolist() == [[pytest.approx(expected[0]), pytest.approx(expected[1])]] * 2
    assert logits.argmax(1).tolist() == [1, 1]


def test_subclasses_json_adds_the_subclass_classifiers(checkpoint, tmp_path):
    # shapes grouped by their shape: "circle" holds "red circle", "blue circle", ...
    flat = write_image_folder(tmp_path / "flat", n_per_class=1, seed=3, size=32)
    grouped = tmp_path / "grouped"
    subclasses: dict[str, list[str]] = {}
    for cls_dir in sorted(flat.iterdir()):
        colour, shape = cls_dir.name.split("_", 1)
        (grouped / shape).mkdir(parents=True, exist_ok=True)
        for picture in cls_dir.iterdir():
            picture.rename(grouped / shape / f"{cls_dir.name}-{picture.name}")
        subclasses.setdefault(shape.replace("_", " "), []).append(f"{colour} {shape.replace('_', ' ')}")
    (grouped / SUBCLASSES_FILE).write_text(json.dumps(subclasses))
    out = tmp_path / "r.json"
    z = evaluate(EvalConfig(checkpoint=checkpoint, zeroshot=grouped, out=out, progress=False))["zeroshot"]
    assert z["classes"] == len(subclasses) and z["subclass_names"] == 36
    for name in (
        "single, via subclass names",
        "7-prompt ensemble, via subclass names",
        "name alone, via subclass names",
    ):
        assert 0.0 <= z[name]["top1"] <= z[name]["top5"] <= 1.0
    assert "over 36 subclass names" in out.with_suffix(".md").read_text()

    # a file that misses a class, or is not JSON: one clear error naming the file
    (grouped / SUBCLASSES_FILE).write_text(json.dumps({"circle": ["red circle"]}))
    with pytest.raises(EvalError, match=r"subclasses.json: no subclasses for"):
        evaluate(EvalConfig(checkpoint=checkpoint, zeroshot=grouped, out=out, progress=False))
    (grouped / SUBCLASSES_FILE).write_text("{not json")
    with pytest.raises(EvalError, match=r"subclasses.json: not readable JSON"):
        evaluate(EvalConfig(checkpoint=checkpoint, zeroshot=grouped, out=out, progress=False))


def test_the_name_prompt_is_the_class_name_and_nothing_else(checkpoint):
    clip = load_clip(checkpoint)
    feats = torch.nn.functional.normalize(torch.randn(3, clip.model.text_projection.shape[1]), dim=-1)
    classes = ["red circle", "blue star"]
    with torch.no_grad():
        text = clip.model.encode_text(clip.tokenizer(classes), normalize=True)
    got = prompt_classifier(clip, NAME_PROMPT, "cpu")(feats, classes)
    assert torch.allclose(got, feats @ text.T, atol=1e-5)
