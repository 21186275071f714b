"""bench/corpus_gap.py's variants of a round-1 dataset: which parts become clean, which stay the web's."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from testbed.corpus import SMALL, fetch, load_corpus
from testbed.corpus_data import Split, caption
from testbed.corpus_web import CorpusWorld
from tests.benchscripts import load_bench

SPLIT = Split(
    held_out_style="tabler-filled", train_styles=("openmoji-color", "openmoji-black", "tabler-outline")
)


def _bench():
    return load_bench("corpus_gap")


@pytest.fixture(scope="module")
def world():
    fetch(SMALL, progress=False)
    return CorpusWorld(load_corpus(require=SMALL), SPLIT)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_variants_replace_clean_pairs_only_and_drop_icons(world):
    bench = _bench()
    emoji = next(n for n, c in world.concepts.items() if c.kind == "emoji" and len(world.styles[n]) >= 2)
    icon = next(n for n, c in world.concepts.items() if c.kind == "icon")
    truth = {
        "u/clean": {"class": emoji, "style": world.styles[emoji][0].style, "junk": []},
        "u/icon": {"class": icon, "style": "tabler-outline", "junk": []},
        "u/wrong": {"class": emoji, "style": world.styles[emoji][1].style, "junk": ["mismatched_caption"]},
    }
    rows = [{"key": k, "url": k, "caption": f"web {k}", "jpg": _jpeg()} for k in truth]

    def by_url(variant):
        return {r["url"]: r for r in bench.variant_rows(rows, truth, world, variant)}

    web = by_url("web")
    assert all(web[u]["caption"] == f"web {u}" and web[u]["jpg"] == rows[0]["jpg"] for u in truth)
    pictures = by_url("pictures")
    assert (
        pictures["u/clean"]["jpg"].startswith(b"\x89PNG") and pictures["u/clean"]["caption"] == "web u/clean"
    )
    assert pictures["u/wrong"]["jpg"] == rows[0]["jpg"]  # kept junk stays the web's
    concept = world.corpus.concepts[world.styles[emoji][0].concept]
    captions = by_url("captions")
    assert captions["u/clean"]["caption"] == caption(concept, "phrased", truth["u/clean"]["style"])
    assert captions["u/wrong"]["caption"] == "web u/wrong"
    both = by_url("both-noicons")
    assert set(both) == {"u/clean", "u/wrong"}
    assert both["u/clean"]["jpg"].startswith(b"\x89PNG") and both["u/clean"]["caption"] != "web u/clean"


def test_a_missing_demo_is_one_clear_error(tmp_path, capsys):
    assert _bench().main(["--demo", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --demo") and "make demo" in err
