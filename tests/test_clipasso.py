"""CLIPasso: picture reading, hostile inputs, the optimiser, and the command end to end with a real clip-tiny."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apps.clipasso.__main__ import main
from apps.clipasso.augment import AugmentConfig, apply_views, sample_views
from apps.clipasso.losses import ClipImageEncoder, LossConfig, resnet_stages_for
from apps.clipasso.optimize import SketchConfig, fit_pixels, sketch_picture
from apps.clipasso.picture import PictureError, load_picture
from apps.clipasso.render import BackendUnavailable, black_strokes, get_rasterizer, render
from apps.clipasso.svg import read_svg
from models import load_clip

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py, with tiny_checkpoint


@pytest.fixture(scope="module")
def picture_file(tmp_path_factory) -> Path:
    """A red disc and a blue bar on white: real structure for saliency and edges."""
    yy, xx = np.mgrid[:96, :96]
    image = np.full((96, 96, 3), 255, np.uint8)
    image[(yy - 40) ** 2 + (xx - 36) ** 2 < 18**2] = (220, 30, 30)
    image[70:80, 20:80] = (30, 30, 200)
    path = tmp_path_factory.mktemp("pic") / "shapes.png"
    Image.fromarray(image).save(path)
    return path


def ink_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    ia, ib = (1 - a.mean(0)) > 0.5, (1 - b.mean(0)) > 0.5
    return float((ia & ib).sum() / (ia | ib).sum())


def test_pixel_l2_fits_eight_known_strokes():
    gen = torch.Generator().manual_seed(0)
    centres = torch.rand(1, 8, 1, 2, generator=gen) * 56 + 20
    truth = centres + (torch.rand(1, 8, 4, 2, generator=gen) - 0.5) * 40
    widths, colors = black_strokes(truth, 3.0)
    target = render(truth, widths, colors, 96)
    start = truth + torch.randn(1, 8, 4, 2, generator=gen) * 3
    assert ink_iou(render(start, widths, colors, 96)[0], target[0]) < 0.6
    fitted = fit_pixels(target, start, widths, colors, steps=150, lr=0.3)
    assert ink_iou(render(fitted, widths, colors, 96)[0], target[0]) >= 0.8


def test_augmentations_are_shared_and_plain_view_is_identity():
    grids = sample_views(AugmentConfig(views=4), 32, torch.Generator().manual_seed(0))
    images = torch.rand(2, 3, 32, 32)
    views = apply_views(images, grids)
    assert views.shape == (2, 5, 3, 32, 32)
    assert torch.allclose(views[:, 0], images, atol=1e-5)
    assert not torch.allclose(views[:, 1], images, atol=1e-2)
    # The same grid applied to identical inputs gives identical views: sketch and picture see the same warp.
    assert torch.allclose(apply_views(images[:1], grids), views[:1])


def _save(tmp: Path, name: str, image: Image.Image, **kwargs) -> Path:
    path = tmp / name
    image.save(path, **kwargs)
    return path


def test_picture_modes_are_converted_by_meaning(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))
    sixteen = _save(tmp_path, "g16.png", Image.fromarray((ramp * 65535).astype(np.uint16)))
    assert Image.open(sixteen).mode.startswith("I")
    pic = load_picture(sixteen, 64)
    assert 0.4 < float(pic.rgb.mean()) < 0.6, "16-bit greyscale must not saturate to white"

    cmyk = _save(tmp_path, "c.jpg", Image.new("CMYK", (40, 30), (0, 255, 255, 0)))  # pure red in CMYK
    rgb = load_picture(cmyk, 32).rgb[:, 16, 16]
    assert rgb[0] > 0.8 and rgb[1] < 0.2 and rgb[2] < 0.2

    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 255, 255, 255, 255])
    palette.paste(1, (0, 0, 32, 16))
    pic = load_picture(_save(tmp_path, "p.png", palette), 32)
    assert pic.rgb[2, 24, 16] > 0.9 and pic.rgb[0, 24, 16] < 0.1 and pic.mask is None

    grey = load_picture(_save(tmp_path, "l.png", Image.new("L", (20, 50), 0)), 50)
    assert (
        grey.rgb.shape == (3, 50, 50) and grey.rgb[:, 25, 25].max() < 0.05 and grey.rgb[:, 25, 2].min() > 0.95
    )

    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((0, 200, 0, 255), (10, 10, 30, 30))
    pic = load_picture(_save(tmp_path, "t.png", rgba), 40, mask="auto")
    assert pic.mask is not None and pic.mask[20, 20] == 1 and pic.mask[2, 2] == 0
    assert pic.rgb[:, 2, 2].min() > 0.99, "transparent areas are composited over white"
    with pytest.raises(PictureError, match="no transparent pixels"):
        load_picture(_save(tmp_path, "opaque.png", Image.new("RGB", (40, 40))), 40, mask="alpha")


def _bomb_png(path: Path, side: int = 100_000) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    )
    return path


def _not_a_clip(path: Path) -> Path:
    torch.save({"weights": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize(
    "case,message",
    [
        ("text", "not a picture"),
        ("bomb", "100000 x 100000"),
        ("tiny", "1 x 1 pixels"),
        ("missing", "no such file"),
        ("strokes0", "--strokes 0"),
        ("strokes-neg", "--strokes -5"),
        ("strokes-absurd", "--strokes 1000000"),
        ("width-neg", "--width -1.0"),
        ("iterations0", "--iterations 0"),
        ("threads0", "--threads 0"),
        ("semantic-neg", "--semantic-weight -1.0"),
        ("geometric-nan", "--geometric-weight nan"),
        ("unwritable", "not writable"),
        ("no-checkpoint", "no such checkpoint"),
        ("not-a-clip", "not a CLIP checkpoint"),
        ("diffvg", "pydiffvg is not installed"),
    ],
)
def test_hostile_inputs_give_one_line_and_leave_nothing(case, message, tmp_path, picture_file, capsys):
    image, out, extra = picture_file, tmp_path / "out", []
    if case == "text":
        image = tmp_path / "notes.png"
        image.write_text("this is not an image")
    elif case == "bomb":
        image = _bomb_png(tmp_path / "bomb.png")
    elif case == "tiny":
        image = _save(tmp_path, "one.png", Image.new("RGB", (1, 1)))
    elif case == "missing":
        image = tmp_path / "nope.png"
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"  # a path under a regular file cannot be created, even by root
    elif case == "no-checkpoint":
        extra = ["--checkpoint", str(tmp_path / "missing.pt")]
    elif case == "not-a-clip":
        extra = ["--checkpoint", str(_not_a_clip(tmp_path / "weights.pt"))]
    elif case == "diffvg":
        try:
            get_rasterizer("diffvg")
            pytest.skip("pydiffvg is installed here")
        except BackendUnavailable:
            pass
        extra = ["--backend", "diffvg"]
    else:
        flag, value = {
            "strokes0": ("--strokes", "0"),
            "strokes-neg": ("--strokes", "-5"),
            "strokes-absurd": ("--strokes", "1000000"),
            "width-neg": ("--width", "-1"),
            "iterations0": ("--iterations", "0"),
            "threads0": ("--threads", "0"),
            "semantic-neg": ("--semantic-weight", "-1"),
            "geometric-nan": ("--geometric-weight", "nan"),
        }[case]
        extra = [flag, value]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([str(image), "--out", str(out), "--iterations", "2", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing may be left behind"


def test_sketch_improves_on_its_start_with_every_seed(tiny_checkpoint, picture_file):
    loaded = load_clip(tiny_checkpoint)
    picture = load_picture(picture_file, 64)
    config = SketchConfig(strokes=6, iterations=12, seeds=2, size=64, eval_every=4, patience=100)
    result = sketch_picture(picture, loaded, config, progress=False)
    assert result.steps == 12 and len(result.seeds) == 2 and result.sketch.points.shape == (6, 4, 2)
    for seed in result.seeds:
        first, best = seed.evaluations[0][1], seed.best_loss
        assert best < first, f"seed {seed.seed}: loss {first} -> {best}"
        assert [step for step, _ in seed.evaluations] == [0, 4, 8, 11]
    assert result.best_seed == min(result.seeds, key=lambda s: s.best_loss).seed
    assert len(result.frames) == 4 and result.frames[0].shape == (64, 64, 3)
    # its encoder took its hooks off the model: a later forward feeds no stale encoder's activations
    assert not any(module._forward_hooks for module in loaded.model.modules())


@pytest.mark.parametrize(
    "name,kind,count", [("clip-tiny", "vit blocks", 2), ("clip-small", "resnet stages", 2)]
)
def test_encoder_catches_intermediate_activations_with_gradients(name, kind, count):
    loaded = load_clip(model=name)
    encoder = ClipImageEncoder(loaded, LossConfig())
    images = torch.rand(3, 3, loaded.image_size, loaded.image_size, requires_grad=True)
    embedding, activations = encoder(images)
    assert encoder.description.startswith(kind) and len(activations) == count
    assert all(a.shape[0] == 3 for a in activations)
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(3), atol=1e-5)
    (embedding.sum() + sum(a.square().mean() for a in activations)).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loaded.model.parameters()), "the CLIP stays frozen"


def test_resnet_geometric_stages_follow_the_grid_size():
    """The paper's layer2 + layer3 at 224 px; a 64 px model's layer3 is 4 x 4, so it uses layer1 + layer2."""
    assert resnet_stages_for(224) == (2, 3) and resnet_stages_for(288) == (2, 3)
    assert resnet_stages_for(64) == (1, 2) and resnet_stages_for(48) == (0, 1)
    encoder = ClipImageEncoder(load_clip(model="clip-small"), LossConfig())
    assert encoder.description == "resnet stages [1, 2]"
    _, activations = encoder(torch.rand(1, 3, 64, 64))
    assert [a.shape[-1] for a in activations] == [16, 8]
    stem = ClipImageEncoder(load_clip(model="clip-small"), LossConfig(resnet_stages=(0, 1)))
    assert [a.shape[-1] for a in stem(torch.rand(1, 3, 64, 64))[1]] == [16, 16]


def test_command_end_to_end_with_a_saved_checkpoint(tiny_checkpoint, picture_file, tmp_path):
    out = tmp_path / "sketches"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    args = ["--checkpoint", str(tiny_checkpoint), "--strokes", "5", "--iterations", "6", "--seeds", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "apps.clipasso", str(picture_file), "--out", str(out), "--size", "96", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["shapes.json", "shapes.png", "shapes.svg", "shapes_progress.gif"]
    assert str(out / "shapes.svg") in proc.stdout
    sketch = read_svg(out / "shapes.svg")
    assert sketch.points.shape == (5, 4, 2) and (sketch.width, sketch.height) == (96, 96)
    report = json.loads((out / "shapes.json").read_text())
    assert report["model"] == "clip-tiny" and report["checkpoint"] == str(tiny_checkpoint)
    assert report["best_seed"] in (0, 1) and len(report["seeds"]) == 2 and report["steps"] == 6
    assert report["seeds"][0]["evaluations"][0]["step"] == 0
    png = Image.open(out / "shapes.png")
    assert png.size == (96, 96) and np.asarray(png).min() < 128, "the PNG shows ink"
    gif = Image.open(out / "shapes_progress.gif")
    assert gif.n_frames >= 2


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--strokes" in help_text and "--checkpoint" in help_text
