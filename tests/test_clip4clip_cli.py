"""`python -m apps.clip4clip index` / `search` end to end on real mp4 files, with hostile inputs mixed in."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.clip4clip.__main__ import main
from models import create_model, save_checkpoint
from testbed.videos import SynthConfig, generate_synthetic_set, write_mp4


def _checkpoint(path: Path, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    model, *_ = create_model(name)
    return save_checkpoint(path, model, name)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("c4c_cli")
    made = generate_synthetic_set(root / "set", SynthConfig(n_train=4, n_test_pairs=2, size=48, seed=3))
    videos = made.videos_dir
    nested = videos / "nested" / "deeper"
    nested.mkdir(parents=True)
    shutil.copy(videos / "train00000a.mp4", nested / "copy.mp4")
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("not a video at all\n" * 10)
    good = (videos / "train00001a.mp4").read_bytes()
    (videos / "corrupt.mp4").write_bytes(
        good[:48] + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8))
    )
    return {
        "videos": videos,
        "tiny": _checkpoint(root / "tiny.pt", "clip-tiny", 0),
        "small": _checkpoint(root / "small.pt", "clip-small", 0),
        "root": root,
    }


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_index_search_update_and_errors(library: dict[str, Path], tmp_path: Path, capsys) -> None:
    index = tmp_path / "index"
    args = [
        "index",
        library["videos"],
        "--out",
        index,
        "--checkpoint",
        library["tiny"],
        "--max-frames",
        "4",
        "--fps",
        "0",
    ]
    code, out, err = _run(args, capsys)
    assert code == 0, err
    # 8 synthetic + 1 nested copy indexed; the three broken files reported, each on its own line.
    assert "9 videos (9 added, 0 unchanged, 0 removed, 3 skipped)" in out
    for name in ("zero.mp4", "notes.mp4", "corrupt.mp4"):
        assert re.search(rf"skipped .*{name}: \S", err), err

    # Re-run: nothing re-embedded; a new video is added, a deleted one dropped.
    code, out, _ = _run(args, capsys)
    assert "9 videos (0 added, 9 unchanged, 0 removed, 3 skipped)" in out
    write_mp4(
        library["videos"] / "new.mp4", [np.full((48, 48, 3), 90 + 9 * i, np.uint8) for i in range(6)], fps=4
    )
    (library["videos"] / "nested" / "deeper" / "copy.mp4").unlink()
    code, out, _ = _run(args, capsys)
    assert "9 videos (1 added, 8 unchanged, 1 removed, 3 skipped)" in out

    html = tmp_path / "hits.html"
    code, out, err = _run(["search", index, "a red circle moves left", "-k", "3", "--html", html], capsys)
    assert code == 0, err
    scores = [float(s) for s in re.findall(r"^\s+\d\. ([+-]\d\.\d+)", out, flags=re.M)]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
    page = html.read_text()
    assert page.count("<section>") == 3 and page.count("data:image/jpeg;base64,") >= 3

    # Hostile queries and a checkpoint of another width: one-line errors, exit status 2.
    code, _, err = _run(["search", index, "   "], capsys)
    assert code == 2 and "empty query" in err and err.count("\n") == 1
    code, _, err = _run(["search", index, "a red circle", "--checkpoint", library["small"]], capsys)
    assert (
        code == 2 and "clip-tiny" in err and "clip-small" in err and "width 64" in err and "width 128" in err
    )
    code, _, err = _run(
        args[:4] + ["--checkpoint", library["small"], "--max-frames", "4", "--fps", "0"], capsys
    )
    assert code == 2 and "clip-tiny" in err and "clip-small" in err


def test_index_refuses_weights_it_cannot_reload_and_bad_folders(tmp_path: Path, capsys) -> None:
    code, _, err = _run(["index", tmp_path, "--out", tmp_path / "i", "--model", "clip-tiny"], capsys)
    assert code == 2 and "randomly initialised" in err
    code, _, err = _run(["search", tmp_path / "nothing", "a query", "--model", "clip-tiny"], capsys)
    assert code == 2 and "not a video index" in err


def test_help_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apps.clip4clip", "search", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "--html" in result.stdout
