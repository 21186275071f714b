"""CLIPDraw: a text prompt pulls coloured strokes (points, widths and colours) towards its embedding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.clipasso.svg import read_svg
from apps.clipdraw.__main__ import draw_to_files, main
from apps.clipdraw.draw import DrawConfig, draw_prompt, prompt_stem, random_strokes
from models import load_clip

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py, with tiny_checkpoint


def test_drawing_moves_points_widths_and_colours_towards_the_text(tiny_checkpoint):
    config = DrawConfig(strokes=8, iterations=15, size=64, eval_every=5, patience=100)
    start_points, start_widths, start_colors = random_strokes(config, np.random.default_rng(config.seed))
    result = draw_prompt("a red circle", load_clip(tiny_checkpoint), config, progress=False)
    losses = [loss for _, loss in result.evaluations[0]]
    assert result.best_loss < losses[0], losses
    s = result.sketch
    assert not torch.allclose(s.points, start_points) and not torch.allclose(s.colors, start_colors)
    assert not torch.allclose(s.widths, start_widths)
    assert float(s.colors.min()) >= 0 and float(s.colors.max()) <= 1 and float(s.widths.min()) > 0


def test_command_writes_the_four_files(tiny_checkpoint, tmp_path):
    out = tmp_path / "drawings"
    files = draw_to_files(
        "A blue square!",
        out,
        DrawConfig(strokes=5, iterations=4, size=64),
        loaded=load_clip(tiny_checkpoint),
        progress=False,
    )
    assert prompt_stem("A blue square!") == "a_blue_square"
    assert sorted(files) == [
        "a_blue_square.json",
        "a_blue_square.png",
        "a_blue_square.svg",
        "a_blue_square_progress.gif",
    ]
    assert read_svg(out / "a_blue_square.svg").points.shape == (5, 4, 2)
    assert json.loads((out / "a_blue_square.json").read_text())["prompt"] == "A blue square!"


@pytest.mark.parametrize(
    "args,message", [(["  "], "prompt is empty"), (["a cat", "--strokes", "0"], "--strokes 0")]
)
def test_bad_arguments_give_one_line(args, message, tmp_path, capsys):
    code = main([*args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
