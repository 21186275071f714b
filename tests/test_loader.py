"""The Parquet loader: split by rank and worker, shuffle per epoch, bad rows skipped and counted, resume skip."""

from __future__ import annotations

import collections
import hashlib
import os
import random

import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

import training.data
from common.atomic import file_sha256
from common.settings import ConfigError
from curation.shards import ShardEntry, load_manifest, save_manifest, shard_path, write_shard
from models import create_model
from testbed.datasets import make_shape_dataset, rows_table, shape_rows
from training.config import TrainConfig
from training.data import (
    GENERIC_CAPTIONS,
    DatasetError,
    ShardStream,
    _Crop,
    _Kept,
    crop_box,
    decode_image,
    find_row_groups,
    train_loader,
)


@pytest.fixture(scope="module")
def tiny():
    model, preprocess_train, preprocess_val, tokenizer = create_model("clip-tiny")
    return preprocess_train, tokenizer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 3 shards x 2 row groups: fewer row groups than 2 ranks x 4 workers, so row groups get sliced too.
    return make_shape_dataset(
        tmp_path_factory.mktemp("loader") / "data", n=150, seed=3, size=32, shards=3, row_group_size=25
    )


def _digest(jpg: bytes) -> str:
    return hashlib.sha256(jpg).hexdigest()


@pytest.mark.parametrize("world_size,workers", [(1, 1), (2, 2), (2, 4)])
def test_every_row_once_per_epoch_across_ranks_and_workers(dataset, tiny, world_size, workers):
    refs = find_row_groups([dataset])
    expected = collections.Counter(_digest(r["jpg"]) for r in shape_rows(150, 3, 32))
    for epoch in (0, 1):
        seen = collections.Counter()
        for rank in range(world_size):
            stream = ShardStream(
                refs, *tiny, batch_size=4, seed=5, rank=rank, world_size=world_size, num_workers=workers
            )
            for worker in range(workers):
                seen.update(_digest(jpg) for jpg, _ in stream.epoch_rows(rank * workers + worker, epoch))
        assert seen == expected


def test_epochs_are_shuffled_differently_and_reproducibly(dataset, tiny):
    refs = find_row_groups([dataset])
    stream = ShardStream(refs, *tiny, batch_size=4, seed=5, shuffle_buffer=50)
    epoch0 = [c for _, c in stream.epoch_rows(0, 0)]
    epoch1 = [c for _, c in stream.epoch_rows(0, 1)]
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1)
    assert epoch0 == [
        c for _, c in ShardStream(refs, *tiny, batch_size=4, seed=5, shuffle_buffer=50).epoch_rows(0, 0)
    ]
    assert epoch0 != [
        c for _, c in ShardStream(refs, *tiny, batch_size=4, seed=6, shuffle_buffer=50).epoch_rows(0, 0)
    ]


def test_batches_through_dataloader_workers(dataset, tiny):
    stream = ShardStream(
        find_row_groups([dataset]), *tiny, batch_size=8, seed=0, num_workers=2, image_size=32
    )
    batches = iter(train_loader(stream, num_workers=2))
    for _ in range(3):
        batch = next(batches)
        assert batch.images.shape == (8, 3, 32, 32) and torch.isfinite(batch.images).all()
        assert batch.texts.shape == (8, tiny[1].context_length) and batch.texts.dtype == torch.long
        assert batch.skipped == 0


def test_workers_run_at_the_niceness_asked_and_give_the_same_batches(dataset, tiny):
    """worker_nice lowers the workers' priority (they read os.nice in their process) and changes no batch."""
    preprocess, tokenizer = tiny
    refs = find_row_groups([dataset])

    def first_batches(nice):
        def transform(image):  # runs in the worker: the picture and the worker's niceness, both kept
            seen_nice = torch.full((1, 32, 32), float(os.nice(0)))
            return torch.cat([preprocess(image), seen_nice])

        stream = ShardStream(refs, transform, tokenizer, batch_size=8, seed=0, num_workers=1, image_size=32)
        it = iter(train_loader(stream, num_workers=1, worker_nice=nice))
        return [next(it) for _ in range(3)]

    base = os.nice(0)
    plain, lowered = first_batches(0), first_batches(19 - base)
    assert all((b.images[:, 3] == base).all() for b in plain)
    assert all((b.images[:, 3] == 19).all() for b in lowered)
    for a, b in zip(plain, lowered):
        assert torch.equal(a.images[:, :3], b.images[:, :3]) and torch.equal(a.texts, b.texts)
    with pytest.raises(ConfigError, match="worker_nice must be in 0-19"):
        TrainConfig(data=[dataset], out=dataset / "unused", worker_nice=20)


def test_resume_skips_consumed_batches_exactly(dataset, tiny):
    """A stream told it already consumed k batches yields what an unbroken stream yields from batch k on."""
    refs = find_row_groups([dataset])

    def batches(skip, workers):
        stream = ShardStream(refs, *tiny, batch_size=6, seed=1, num_workers=workers, skip_batches=skip)
        it = iter(train_loader(stream, num_workers=workers))
        return [next(it) for _ in range(4)]

    for workers in (0, 2):
        full = batches(0, workers)
        resumed = batches(3, workers)
        assert torch.equal(full[3].images, resumed[0].images)  # same rows, same random crops
        assert torch.equal(full[3].texts, resumed[0].texts)


def test_undecodable_rows_are_skipped_and_counted(tmp_path, tiny):
    rows = shape_rows(40, seed=0, size=32)
    rows[3]["jpg"] = b"not a jpeg at all"
    rows[10]["jpg"] = rows[10]["jpg"][: len(rows[10]["jpg"]) // 3]  # truncated JPEG
    rows[17]["jpg"] = None
    rows[25]["caption"] = None
    rows[31]["caption"] = "   "
    write_shard(tmp_path, "bad", rows_table(rows))
    # A one-row shuffle buffer keeps file order, so the 35 good rows of the first epoch fill 5 batches.
    stream = ShardStream(find_row_groups([tmp_path]), *tiny, batch_size=7, seed=0, shuffle_buffer=1)
    it = iter(stream)
    got = [next(it) for _ in range(5)]
    assert sum(b.skipped for b in got) == 5
    assert all(torch.isfinite(b.images).all() for b in got)
    assert decode_image(rows[10]["jpg"]) is None and decode_image(rows[0]["jpg"]).size == (32, 32)


def test_empty_and_missing_dataset_directories(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset directory"):
        find_row_groups([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="manifest"):
        find_row_groups([tmp_path / "empty"])
    # A finished build that kept nothing: a manifest without shards.
    save_manifest(tmp_path / "kept_nothing", load_manifest(tmp_path / "kept_nothing"))
    with pytest.raises(DatasetError, match="no rows"):
        find_row_groups([tmp_path / "kept_nothing"])


@pytest.mark.parametrize("missing", ["caption", "jpg"])
def test_shard_missing_a_column_names_file_and_column(tmp_path, missing):
    table = rows_table(shape_rows(8, seed=0, size=32)).drop_columns([missing])
    path = shard_path(tmp_path, "partial")
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    manifest = load_manifest(tmp_path)
    manifest.shards[path.name] = ShardEntry(rows=8, sha256=file_sha256(path), bytes=path.stat().st_size)
    save_manifest(tmp_path, manifest)
    with pytest.raises(DatasetError, match=rf"partial\.parquet.*`{missing}`"):
        find_row_groups([tmp_path])


def test_more_readers_than_rows_is_an_error_not_a_hang(tmp_path, tiny):
    write_shard(tmp_path, "two", pa.Table.from_pylist(shape_rows(2, seed=0, size=32)))
    stream = ShardStream(
        find_row_groups([tmp_path]), *tiny, batch_size=1, world_size=2, rank=1, num_workers=2
    )
    with pytest.raises(DatasetError, match="fewer --workers"):
        next(iter(stream))


def test_caption_columns_draw_one_of_a_rows_texts_per_read(tmp_path, tiny):
    """--captions A --captions B: each read of a row takes one of its non-empty texts, reproducibly;
    a row with only one of them always takes it; a column the shards lack is a clear error."""
    rows = shape_rows(30, seed=0, size=32)
    for i, row in enumerate(rows):
        row["alt"] = None if i % 3 == 0 else f"alt text {i}"
    write_shard(tmp_path, "two_texts", rows_table(rows))
    refs = find_row_groups([tmp_path], captions=("caption", "alt"))

    def reads(seed):
        stream = ShardStream(refs, *tiny, batch_size=5, seed=seed, captions=("caption", "alt"))
        rows_read = stream._rows(0)
        return [next(rows_read) for _ in range(30 * 8)]  # 8 epochs

    got = reads(0)
    by_key = collections.defaultdict(set)
    for _, jpg, caption in got:
        by_key[_digest(jpg)].add(caption)
    for i, row in enumerate(rows):
        expected = {row["caption"]} if row["alt"] is None else {row["caption"], row["alt"]}
        assert by_key[_digest(row["jpg"])] == expected, i
    assert got == reads(0) and [c for *_, c in got] != [c for *_, c in reads(1)]
    # one column (the default): always the caption, as before
    single = ShardStream(find_row_groups([tmp_path]), *tiny, batch_size=5, seed=0)._rows(0)
    assert {next(single)[2] for _ in range(60)} <= {r["caption"] for r in rows}
    with pytest.raises(DatasetError, match=r"two_texts\.parquet.*`nope`"):
        find_row_groups([tmp_path], captions=("caption", "nope"))


def test_joined_caption_choice_reads_both_texts_as_sentences(tmp_path, tiny):
    """--captions caption+alt: one choice whose text is the caption and the alt text as two sentences;
    a row without its alt text reads the caption alone; both columns must be in the shards."""
    rows = shape_rows(12, seed=0, size=32)
    for i, row in enumerate(rows):
        row["alt"] = None if i % 3 == 0 else f"Alt text {i}."
    write_shard(tmp_path, "joined", rows_table(rows))
    choices = ("caption+alt",)
    stream = ShardStream(find_row_groups([tmp_path], captions=choices), *tiny, batch_size=4, captions=choices)
    read = stream._rows(0)
    got = {_digest(jpg): caption for _, jpg, caption in (next(read) for _ in range(12))}
    for row in rows:
        own = row["caption"].strip()
        expected = own if row["alt"] is None else f"{own.rstrip('. ')}. {row['alt']}"
        assert got[_digest(row["jpg"])] == expected
    with pytest.raises(DatasetError, match=r"joined\.parquet.*`nope`"):
        find_row_groups([tmp_path], captions=("caption+nope",))


def test_generic_captions_replace_a_fraction_of_reads(tmp_path, tiny):
    """--generic-captions F: about F of the reads are captioned "image", "picture" or "photo", on pictures
    of every kind, reproducibly per seed; the rest keep their own caption; 0 changes nothing."""
    rows = shape_rows(40, seed=0, size=32)
    write_shard(tmp_path, "generic", rows_table(rows))
    refs = find_row_groups([tmp_path])
    own = {_digest(r["jpg"]): r["caption"] for r in rows}

    def reads(fraction, seed=0, n=40 * 50):
        stream = ShardStream(refs, *tiny, batch_size=5, seed=seed, generic_captions=fraction)
        rows_read = stream._rows(0)
        return [next(rows_read) for _ in range(n)]

    got = reads(0.1)
    generic = [(jpg, c) for _, jpg, c in got if c != own[_digest(jpg)]]
    assert {c for _, c in generic} == set(GENERIC_CAPTIONS)
    assert 0.07 < len(generic) / len(got) < 0.13
    assert len({_digest(jpg) for jpg, _ in generic}) > 30  # not the same few pictures every epoch
    assert got == reads(0.1) and got != reads(0.1, seed=1)
    assert all(c == own[_digest(jpg)] for _, jpg, c in reads(0.0, n=400))
    with pytest.raises(DatasetError, match="generic_captions"):
        ShardStream(refs, *tiny, batch_size=5, generic_captions=1.0)


def test_low_res_batches_come_first_with_the_same_rows_and_captions(dataset, tiny):
    """--low-res-steps: the process's first N batches at the small size (from either worker, and after a
    resume), then the model's size; the rows, captions and crop boxes are those of a plain stream."""
    preprocess, tokenizer = tiny
    refs = find_row_groups([dataset])
    small = open_clip.image_transform(16, is_train=True)

    def batches(low_res_batches, skip=0, workers=2):
        stream = ShardStream(
            refs,
            preprocess,
            tokenizer,
            batch_size=6,
            seed=1,
            num_workers=workers,
            skip_batches=skip,
            low_res_transform=small,
            low_res_batches=low_res_batches,
        )
        it = iter(train_loader(stream, num_workers=workers))
        return [next(it) for _ in range(6 - skip)]

    for workers in (0, 2):
        plain = batches(0, workers=workers)
        assert all(b.images.shape[-1] == 32 for b in plain)
        mixed = batches(3, workers=workers)
        assert [b.images.shape[-1] for b in mixed] == [16, 16, 16, 32, 32, 32]
        resumed = batches(3, skip=2, workers=workers)  # batches 2..5 of the same run
        assert [b.images.shape[-1] for b in resumed] == [16, 32, 32, 32]
        for a, b in zip(mixed[2:], resumed):
            assert torch.equal(a.images, b.images) and torch.equal(a.texts, b.texts)
        for a, b in zip(plain, mixed):
            assert torch.equal(a.texts, b.texts)
        for a, b in zip(plain[3:], mixed[3:]):
            assert torch.equal(a.images, b.images)
        # the small pictures are the plain ones' crops at another size: close after downscaling
        for a, b in zip(plain[:3], mixed[:3]):
            down = torch.nn.functional.interpolate(a.images, size=16, mode="area")
            assert (down - b.images).abs().mean() < 0.15


def test_crop_boxes_follow_torchvisions_random_resized_crop(tiny):
    """The reader crops open_clip's training pictures with boxes drawn from the row's own random.Random
    (not torch's generator, seeded and restored per picture): every box inside the picture with an
    allowed area and shape, and over 20,000 draws the same mean box and area as torchvision's RandomResizedCrop,
    on a square picture and on a wide one (where some draws fall back to the central crop)."""
    assert isinstance(ShardStream([], *tiny, batch_size=2).transform.picture, _Crop)
    crop = RandomResizedCrop(32, scale=(0.5, 1.0))
    for width, height in ((64, 64), (96, 40)):
        ours = torch.tensor(
            [crop_box(width, height, crop, random.Random(k)) for k in range(20_000)], dtype=torch.float
        )
        torch.manual_seed(0)
        picture = Image.new("RGB", (width, height))
        theirs = torch.tensor(
            [crop.get_params(picture, crop.scale, crop.ratio) for _ in range(20_000)], dtype=torch.float
        )
        top, left, h, w = ours.T
        assert (
            (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
        )
        assert (h * w >= 0.5 * width * height - width - height).all()
        assert ((ours - theirs).mean(0).abs() < 0.6).all(), (ours.mean(0), theirs.mean(0))
        assert (ours.std(0) - theirs.std(0)).abs().max() < 0.6
        area, their_area = h * w, theirs[:, 2] * theirs[:, 3]
        error = ((area.var() + their_area.var()) / len(area)).sqrt()  # of the difference of the means
        assert (area.mean() - their_area.mean()).abs() < 4 * error, (area.mean(), their_area.mean())


def test_kept_pictures_and_tokens_give_the_same_batches(dataset, tiny, monkeypatch):
    """keep_mb: over 3 epochs a reader decodes each picture and tokenises each caption once, and its
    batches equal those of a stream that keeps nothing and runs the transform whole on each picture
    (not batch-wise, torchvision's own crop given the same boxes); a reader keeps no more than its budget."""
    preprocess, tokenizer = tiny
    refs = find_row_groups([dataset])
    decoded, tokenised = collections.Counter(), collections.Counter()
    decode, draw = training.data.decode_image, training.data.crop_box
    boxes = []

    def counting_decode(data, draft_size=None):
        decoded[_digest(data)] += 1
        return decode(data, draft_size)

    def counting_tokenizer(texts):
        tokenised.update(texts)
        return tokenizer(texts)

    def recording_draw(*args):
        boxes.append(draw(*args))
        return boxes[-1]

    monkeypatch.setattr(training.data, "decode_image", counting_decode)
    monkeypatch.setattr(training.data, "crop_box", recording_draw)

    def batches(keep_mb, transform):
        decoded.clear()
        tokenised.clear()
        stream = ShardStream(refs, transform, counting_tokenizer, batch_size=15, seed=2, keep_mb=keep_mb)
        it = iter(stream)
        return [next(it) for _ in range(30)]  # 450 rows: 3 epochs of 150

    kept = batches(64, preprocess)
    assert set(decoded.values()) == {1} and set(tokenised.values()) == {1} and len(boxes) == 450
    # not a Compose: no batch stage, and torchvision's RandomResizedCrop draws the box (given the same ones)
    replay = iter(list(boxes))
    monkeypatch.setattr(RandomResizedCrop, "get_params", staticmethod(lambda *_: next(replay)))
    plain = batches(0, lambda image: preprocess(image))
    assert sum(decoded.values()) == 450 and sum(tokenised.values()) == 450
    for a, b in zip(kept, plain):
        assert torch.equal(a.images, b.images) and torch.equal(a.texts, b.texts)

    budget = _Kept(budget=20_000)  # room for ~6 of the 32 px pictures (3 KB each with their keys)
    jpgs = [jpg for jpg, _ in ShardStream(refs, *tiny, batch_size=4).epoch_rows(0, 0)][:20]
    for jpg in jpgs * 2:
        budget.decode(jpg, None)
    assert 3 <= len(budget.pictures) <= 7 and budget.used <= 20_000
