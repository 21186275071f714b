"""Splits of the corpus: a whole style and some concepts never trained on; evaluation sets that
`training.evaluate` reads (zero-shot at concept and category level, retrieval, linear probe).

A slice of the small corpus (openmoji + Tabler, ~400 pictures) keeps it fast.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from curation.shards import trusted_shards
from testbed.corpus import SMALL, fetch, load_corpus
from testbed.corpus_data import (
    Split,
    SplitError,
    caption,
    captions,
    plan_split,
    readable_group,
    write_datasets,
)
from training.config import EvalConfig
from training.evaluate import evaluate

SPLIT = Split(
    held_out_style="openmoji-black",
    train_styles=("openmoji-color", "tabler-outline"),
    held_out_fraction=0.1,
    eval_concepts=20,
)


@pytest.fixture(scope="module")
def slice_(tmp_path_factory):
    fetch(SMALL, progress=False)
    corpus = load_corpus(require=SMALL)
    emoji = sorted(c for c, x in corpus.concepts.items() if x.kind == "emoji" and x.group != "flags")[::12][
        :130
    ]
    icons = sorted(c for c, x in corpus.concepts.items() if x.kind == "icon")[::60][:80]
    small = corpus.restricted(emoji + icons, styles=("openmoji-color", "openmoji-black", "tabler-outline"))
    out = tmp_path_factory.mktemp("corpus-data")
    summary = write_datasets(small, out, SPLIT, "name+section", size=48, progress=False)
    return small, out, summary


def test_the_held_out_style_and_concepts_never_reach_training(slice_):
    small, out, summary = slice_
    rows = [r for shard in trusted_shards(out / "train") for r in pq.read_table(shard).to_pylist()]
    assert len(rows) == summary["counts"]["train"] > 150
    styles = {r["source"] for r in rows}
    assert styles == {"openmoji-color", "tabler-outline"}
    trained = {r["url"].rsplit("/", 1)[-1] for r in rows}
    held = {c for c in small.concepts if SPLIT.is_held_out(c)}
    assert held and not (held & trained)
    assert set(summary["eval_concepts"]) <= trained  # evaluated concepts were seen, in other styles
    assert not (set(summary["unseen_concepts"]) & trained)


def test_evaluation_folders_hold_the_held_out_style(slice_):
    small, out, summary = slice_
    concepts = out / "eval" / "concepts"
    folders = sorted(p for p in concepts.iterdir())
    assert len(folders) == 20
    assert all(len(list(f.iterdir())) == 1 for f in folders)
    assert all(p.name.startswith("openmoji-black-") for f in folders for p in f.iterdir())
    groups = {p.name.replace("_", " ") for p in (out / "eval" / "categories").iterdir() if p.is_dir()}
    # class names as people say them ("animals and nature"), the words the "grouped" captions use
    readable = {readable_group(c.group) for c in small.concepts.values() if c.kind == "emoji"}
    assert groups <= readable and len(groups) >= 5 and not any("&" in g for g in groups)
    assert json.loads((out / "split.json").read_text())["split"]["held_out_style"] == "openmoji-black"


def test_training_evaluate_reads_every_set(slice_, tiny_checkpoint, one_thread):
    _, out, _ = slice_
    ev = out / "eval"
    report = evaluate(
        EvalConfig(checkpoint=tiny_checkpoint, zeroshot=ev / "concepts", retrieval=ev / "retrieval",
                   out=out / "eval.json", progress=False)
    )  # fmt: skip
    assert report["zeroshot"]["classes"] == 20 and report["retrieval"]["pairs"] == 20
    assert 0 <= report["zeroshot"]["ensemble"]["top1"] <= 1
    # the probe set holds every emoji style of each evaluated concept: 2 in this slice (6 in the full corpus)
    assert all(len(list(f.iterdir())) == 2 for f in (ev / "probe").iterdir())
    cats = evaluate(EvalConfig(checkpoint=tiny_checkpoint, zeroshot=ev / "categories", progress=False))
    assert cats["zeroshot"]["classes"] >= 5
    # each group is also scored through the names of the concepts it holds (subclasses.json)
    subclasses = json.loads((ev / "categories" / "subclasses.json").read_text())
    assert set(subclasses) == {p.name.replace("_", " ") for p in (ev / "categories").iterdir() if p.is_dir()}
    assert "duck" in subclasses["animals and nature"] and "duck" not in subclasses["food and drink"]
    assert cats["zeroshot"]["subclass_names"] == sum(len(v) for v in subclasses.values())
    assert 0 <= cats["zeroshot"]["single, via subclass names"]["top1"] <= 1


def test_captions_and_split_errors(slice_):
    small, _, _ = slice_
    cat = load_corpus(require=SMALL).concepts["emoji:1F431"]
    assert caption(cat, "name") == "cat face"
    assert caption(cat, "name+section") == "cat face, animal mammal, animals & nature"
    assert caption(cat, "name+tags").startswith("cat face (")
    mixed = {
        caption(cat, "mixed", style) for style in ("google", "apple", "facebook", "openmoji-color", "x", "y")
    }
    assert mixed == {"cat face", "cat face, animal mammal, animals & nature"}
    # grouped: three captions per picture, the group said in words in two, the name in two
    for style in ("google", "apple", "facebook"):
        texts = captions(cat, "grouped", style)
        assert len(texts) == 3 and caption(cat, "grouped", style) == texts[0]
        assert ["animals and nature" in t for t in texts] == [False, True, True]
        assert ["cat face" in t for t in texts] == [True, True, False] and "animal mammal" in texts[2]
    # grouped4 adds the group alone; named4 names the concept in 3 of 4, the group alone in the 4th
    four = captions(cat, "grouped4", "google")
    assert four[:3] == captions(cat, "grouped", "google") and "cat face" not in four[3]
    named = captions(cat, "named4", "google")
    assert named[2] == "cat face, animal mammal, animals and nature" and named[3] == four[3]
    assert ["cat face" in t for t in named] == [True, True, True, False]
    assert all("animals and nature" in t for t in named[1:])
    assert captions(cat, "phrased", "google") == [caption(cat, "phrased", "google")]
    with pytest.raises(SplitError, match="no pictures of style"):
        plan_split(small, Split(held_out_style="twitter"))
    with pytest.raises(SplitError, match="too many"):
        plan_split(
            small,
            Split(held_out_style="openmoji-black", train_styles=("openmoji-color",), eval_concepts=5000),
        )


def test_grouped_captions_write_one_row_per_caption(slice_, tmp_path):
    small, _, _ = slice_
    emoji = sorted(c for c, x in small.concepts.items() if x.kind == "emoji")[:40]
    tiny = small.restricted(emoji, styles=("openmoji-color", "openmoji-black"))
    split = Split(held_out_style="openmoji-black", train_styles=("openmoji-color",), eval_concepts=5)
    summary = write_datasets(tiny, tmp_path, split, "grouped", size=32, progress=False)
    rows = [r for shard in trusted_shards(tmp_path / "train") for r in pq.read_table(shard).to_pylist()]
    by_picture: dict[str, list[str]] = {}
    for r in rows:
        by_picture.setdefault(r["url"], []).append(r["caption"])
    assert len(rows) == summary["counts"]["train"] and len(by_picture) >= 20
    for url, texts in by_picture.items():
        concept = tiny.concepts[url.rsplit("/", 1)[-1]]
        assert sorted(texts) == sorted(captions(concept, "grouped", "openmoji-color")), url
