"""Streaming image-caption batches from Parquet shards for CLIP training.

The unit of work is a Parquet row group (or a slice of one when there are fewer row groups
than readers). Every epoch the units are permuted with the same seed on every process, and
unit i goes to global reader i % (world_size * workers): each row is read once per epoch
across all processes and DataLoader workers. A shuffle buffer mixes rows inside a reader.

Everything random is a function of (seed, epoch, reader, position): the unit order, the
shuffle buffer and the per-sample crop. So a resumed run can skip the batches it already
consumed without decoding them and continue with exactly the batches it would have seen.

A row whose JPEG does not decode, or that has no caption, is skipped and counted: each batch
carries the number of rows skipped while it was assembled, and the trainer logs the total.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import math
import os
import random
import threading
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from open_clip.transform import MaybeConvertMode
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import Compose, Normalize, RandomResizedCrop, ToTensor
from torchvision.transforms import functional as TF

from common.errors import UserError
from curation import versions
from curation.schema import SchemaError
from curation.shards import RowGroupRef, ShardError, read_row_group, row_groups

COLUMNS = ("jpg", "caption")


class DatasetError(UserError, ValueError):
    """A dataset directory cannot be trained on (empty, missing columns, too small); the message says why."""


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of one row group: what one reader reads at a time."""

    ref: RowGroupRef
    start: int
    stop: int


class Batch(NamedTuple):
    images: torch.Tensor  # [B, 3, H, W], preprocessed
    texts: torch.Tensor  # [B, context_length] token ids
    skipped: int  # rows skipped (undecodable image or no caption) while assembling this batch


def data_version_of(source: Path | str, version: int | None = None) -> int | None:
    """The dataset version `version` means for `source` (None: its latest); None for a dataset without versions."""
    try:
        if not Path(source).is_dir() or (version is None and not versions.has_versions(source)):
            return None  # find_row_groups says what is wrong with a missing directory
        return versions.resolve(source, version).version
    except versions.VersionError as exc:
        raise DatasetError(str(exc)) from exc


def caption_columns(captions: Sequence[str]) -> tuple[str, ...]:
    """The shard columns that caption choices read: "caption+page_title" joins two of them."""
    return tuple(dict.fromkeys(column for choice in captions for column in choice.split("+")))


def join_texts(parts: Sequence[object]) -> str:
    """The non-empty texts of a caption choice, joined as sentences ("" when none; one text: as it is)."""
    texts = [p.strip() for p in parts if isinstance(p, str) and p.strip()]
    return ". ".join([t.rstrip(". ") or t for t in texts[:-1]] + texts[-1:])


def find_row_groups(
    sources: Sequence[Path | str], version: int | None = None, captions: Sequence[str] = ("caption",)
) -> list[RowGroupRef]:
    """All row groups of the trusted shards of `sources` (of dataset `version`, default the latest) that
    have the picture and every column `captions` read, with clear errors for unusable input."""
    refs: list[RowGroupRef] = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise DatasetError(
                f"{path}: no such dataset directory; build one with `python -m curation build`"
            )
        try:
            found = row_groups(path, required=("jpg", *caption_columns(captions)), version=version)
        except (ShardError, SchemaError, versions.VersionError) as exc:
            raise DatasetError(str(exc)) from exc
        if sum(r.num_rows for r in found) == 0:
            raise DatasetError(
                f"{path}: dataset has no rows (no trusted shards in shards/); "
                "build it with `python -m curation build` or check its filters"
            )
        refs.extend(found)
    return refs


def make_units(refs: Sequence[RowGroupRef], readers: int) -> list[Unit]:
    """Row groups, each cut into equal slices when there are fewer row groups than readers."""
    refs = [r for r in refs if r.num_rows > 0]
    pieces = max(1, math.ceil(readers / max(1, len(refs))))
    units = []
    for ref in refs:
        n = min(pieces, ref.num_rows)
        bounds = [round(k * ref.num_rows / n) for k in range(n + 1)]
        units.extend(Unit(ref, a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a)
    return units


def decode_image(data: bytes | None, draft_size: int | None = None) -> Image.Image | None:
    """RGB picture from JPEG (or any PIL) bytes; None when it does not decode."""
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # truncated/odd files warn before they fail; we count them instead
            image = Image.open(io.BytesIO(data))
            if draft_size and image.format == "JPEG":
                # DCT-domain downscale: a 512 px JPEG decodes at 1/4 size when the model wants 64 px.
                image.draft("RGB", (draft_size, draft_size))
            image = image.convert("RGB")
            image.load()
        return image
    except Exception:  # PIL raises many types for corrupt data (OSError, SyntaxError, ValueError, ...)
        return None


class _SeededTransform:
    """Apply a torchvision transform with the torch RNG seeded per sample, leaving the caller's RNG intact."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image, rng: random.Random) -> torch.Tensor:
        # the CPU generator only: torch.manual_seed also seeds every accelerator's and costs as much as
        # the whole crop (0.2 ms a row, a fifth of the corpus demo's data time)
        generator = torch.default_generator
        state = generator.get_state()
        try:
            generator.manual_seed(rng.getrandbits(63))
            return self.transform(image)
        finally:
            generator.set_state(state)


def crop_box(
    width: int, height: int, crop: RandomResizedCrop, rng: random.Random
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop: torchvision's `RandomResizedCrop.get_params`
    (10 tries at a box of the drawn area and aspect that fits, else the central crop) drawn from `rng`."""
    area = width * height
    low, high = math.log(crop.ratio[0]), math.log(crop.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*crop.scale)
        aspect = math.exp(rng.uniform(low, high))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    shape = width / height
    if shape < min(crop.ratio):
        w, h = width, round(width / min(crop.ratio))
    elif shape > max(crop.ratio):
        w, h = round(height * max(crop.ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _Crop:
    """open_clip's training picture stages (RandomResizedCrop, then RGB) with the box drawn from the
    row's own `random.Random`: the crop torchvision would make of that box, without seeding and restoring
    torch's generator for each picture and drawing through it (half a reader's crop time)."""

    def __init__(self, crop: RandomResizedCrop, to_rgb: bool) -> None:
        self.crop, self.to_rgb = crop, to_rgb

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        top, left, h, w = crop_box(image.width, image.height, self.crop, rng)
        c = self.crop
        picture = TF.resized_crop(image, top, left, h, w, c.size, c.interpolation, antialias=c.antialias)
        return picture.convert("RGB") if self.to_rgb and picture.mode != "RGB" else picture


def seeded_stage(per_picture: Callable) -> Callable[[Image.Image, random.Random], object]:
    """`stage(image, rng)`: `_Crop` for open_clip's training stages on a picture, else the stages with
    torch's generator seeded from `rng` (`_SeededTransform`)."""
    stages = per_picture.transforms if isinstance(per_picture, Compose) else [per_picture]
    if (
        stages
        and isinstance(stages[0], RandomResizedCrop)
        and all(isinstance(s, MaybeConvertMode) and s.mode == "RGB" for s in stages[1:])
    ):
        return _Crop(stages[0], to_rgb=len(stages) > 1)
    return _SeededTransform(per_picture)


def split_batch_stage(transform: Callable) -> tuple[Callable, Callable[[list], torch.Tensor]]:
    """(per-picture stages, batch stage) of a training transform.

    A torchvision Compose that ends in ToTensor and Normalize (open_clip's transforms do) keeps its
    picture stages (crop, resize, mode) per picture and converts and normalises the whole batch at once:
    the same numbers as picture by picture, in a sixth of the time (the corpus demo's batch of 128:
    5 instead of 31 ms of a worker's core). Any other transform runs whole on each picture.
    """
    stages = transform.transforms if isinstance(transform, Compose) else []
    if len(stages) >= 2 and isinstance(stages[-2], ToTensor) and isinstance(stages[-1], Normalize):
        batch = functools.partial(_to_normalised_batch, to_tensor=stages[-2], normalize=stages[-1])
        return Compose(stages[:-2]), batch
    return transform, torch.stack


class _Stages:
    """A transform as `picture(image, rng)` (its per-picture stages, drawing from the row's RNG) and
    `batch(pictures)`."""

    def __init__(self, transform: Callable) -> None:
        per_picture, self.batch = split_batch_stage(transform)
        self.picture = seeded_stage(per_picture)


def _to_normalised_batch(pictures: list, to_tensor: ToTensor, normalize: Normalize) -> torch.Tensor:
    """`to_tensor` then `normalize` of every picture, stacked: as one uint8 array when all are RGB
    pictures of one size (what ToTensor does to each), else picture by picture through the stage itself."""
    if (
        all(isinstance(p, Image.Image) and p.mode == "RGB" for p in pictures)
        and len({p.size for p in pictures}) == 1
    ):
        batch = torch.from_numpy(np.stack([np.asarray(p) for p in pictures])).permute(0, 3, 1, 2)
        return normalize(batch.float().div_(255))
    return normalize(torch.stack([to_tensor(p) for p in pictures]))


class _Kept:
    """A reader's decoded pictures (by a digest of their bytes) and tokenised captions (by their text),
    kept up to `budget` bytes: training reads the same rows every epoch, and the corpus demo's 24 epochs
    decode and tokenise each row 24 times without it. The first ones read stay until the reader ends:
    each epoch reads every row once in a new order, so evicting the least recently used would keep only
    rows that will not come again for most of an epoch. Exact: a kept picture or token row is the one
    decoding or tokenising would give again (the transform's picture stages return new pictures, as
    torchvision's do, so the kept ones are never changed)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.pictures: dict[bytes, Image.Image | None] = {}
        self.tokens: dict[str, torch.Tensor] = {}

    def _fits(self, size: int) -> bool:
        if self.used + size > self.budget:
            return False
        self.used += size
        return True

    def decode(self, data: bytes | None, draft_size: int | None) -> Image.Image | None:
        if not self.budget or not data:
            return decode_image(data, draft_size)
        key = hashlib.blake2b(data, digest_size=16).digest()
        if key in self.pictures:
            return self.pictures[key]
        picture = decode_image(data, draft_size)
        size = 200 + (picture.width * picture.height * len(picture.getbands()) if picture else 0)
        if self._fits(size):
            self.pictures[key] = picture
        return picture

    def tokenize(self, tokenizer: Callable, captions: list[str]) -> torch.Tensor:
        if not self.budget:
            return tokenizer(captions)
        missing = list(dict.fromkeys(c for c in captions if c not in self.tokens))
        fresh = dict(zip(missing, tokenizer(missing))) if missing else {}
        for caption, row in fresh.items():
            row = row.clone()  # not a view that holds the whole batch's tensor
            if self._fits(100 + len(caption) + row.numel() * row.element_size()):
                self.tokens[caption] = row
        return torch.stack([self.tokens[c] if c in self.tokens else fresh[c] for c in captions])


# Captions that name nothing: the web's pictures captioned only "photo" (curation drops them, rightly,
# from a dataset). A text tower that reads them on pictures of every kind learns that these words carry no
# class, so "a photo of a {}." reads as the name; without them it reads the template as noise it never
# saw (measured on the corpus web: docs/corpus.md, "Does curation pay on the corpus web?").
GENERIC_CAPTIONS = ("image", "picture", "photo")


def _mix(*parts: int | str) -> int:
    """A 63-bit seed from several integers (stable across processes, unlike hash())."""
    return random.Random(":".join(map(str, parts))).getrandbits(63)


class ShardStream(IterableDataset):
    """An endless stream of preprocessed, tokenised batches for one training process.

    `batch_size` is this process's micro-batch. `skip_batches` is how many batches this process
    already consumed (resume): they are replayed without decoding their images. `captions`: the text
    columns a row's caption is drawn from, each time the row is read, uniformly among those not empty
    (a row's other descriptions, e.g. its alt text, as caption augmentation); one column: always it.
    "caption+page_title" is one choice that joins the columns' texts as sentences.
    `generic_captions`: the fraction of reads (of rows with a caption) captioned with one of
    GENERIC_CAPTIONS instead, drawn per position like the caption.
    `low_res_transform`, `low_res_batches`: this process's first `low_res_batches` batches go through
    `low_res_transform` (smaller pictures, for a low-resolution start), the rest through `transform`;
    the rows, captions and crops drawn are the same either way.
    `keep_mb`: each reader keeps up to this many MB of decoded pictures and token rows for the next
    epochs (`_Kept`; 0: decode and tokenise every read). The batches are the same either way.
    """

    def __init__(
        self,
        refs: Sequence[RowGroupRef],
        transform: Callable,
        tokenizer: Callable,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        skip_batches: int = 0,
        image_size: int | None = None,
        captions: Sequence[str] = ("caption",),
        generic_captions: float = 0.0,
        low_res_transform: Callable | None = None,
        low_res_batches: int = 0,
        keep_mb: int = 0,
    ) -> None:
        super().__init__()
        if not captions:
            raise DatasetError("give at least one caption column")
        if not 0.0 <= generic_captions < 1.0:
            raise DatasetError(f"generic_captions must be in [0, 1), got {generic_captions}")
        self.captions = tuple(captions)
        self.columns = caption_columns(self.captions)
        self._choices = [[self.columns.index(c) for c in choice.split("+")] for choice in self.captions]
        self.generic_captions = generic_captions
        self.refs = list(refs)
        self.transform = _Stages(transform)
        self.low_res_transform = _Stages(low_res_transform) if low_res_transform else self.transform
        self.keep_mb = keep_mb
        self.low_res_batches = low_res_batches
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = max(1, num_workers)
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.skip_batches = skip_batches
        self.draft_size = 2 * image_size if image_size else None
        self.units = make_units(self.refs, world_size * self.num_workers)
        self.num_rows = sum(u.stop - u.start for u in self.units)

    def _reader(self) -> tuple[int, int]:
        """(global reader index, batches to skip) of the calling process/worker.

        Batch b of this process comes from worker b % K (the DataLoader keeps that order). A resumed
        loader starts again at worker 0 with batch `skip_batches`, so real worker w plays the part of
        worker (w + skip_batches) % K of the unbroken run.
        """
        info = get_worker_info()
        worker = (info.id if info is not None else 0) + self.skip_batches
        worker %= self.num_workers
        return self.rank * self.num_workers + worker, len(range(worker, self.skip_batches, self.num_workers))

    def epoch_rows(self, reader: int, epoch: int) -> Iterator[tuple[bytes | None, tuple]]:
        """(jpg, texts of the caption columns) of reader `reader`'s share of epoch `epoch`, shuffled."""
        readers = self.world_size * self.num_workers
        order = list(range(len(self.units)))
        random.Random(_mix(self.seed, epoch)).shuffle(order)
        mine = [self.units[i] for k, i in enumerate(order) if k % readers == reader]
        rng = random.Random(_mix(self.seed, epoch, reader))
        buffer: list[tuple[bytes | None, tuple]] = []
        for unit in mine:
            table = read_row_group(unit.ref, ("jpg", *self.columns)).slice(unit.start, unit.stop - unit.start)
            texts = zip(*(table.column(c).to_pylist() for c in self.columns))
            for row in zip(table.column("jpg").to_pylist(), texts):
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(row)
                    continue
                k = rng.randrange(len(buffer))
                yield buffer[k]
                buffer[k] = row
        rng.shuffle(buffer)
        yield from buffer

    def _rows(self, reader: int) -> Iterator[tuple[int, bytes | None, str]]:
        """(position, jpg, caption) of this reader, epoch after epoch; position counts from the start.
        The caption: one of the row's non-empty caption texts ("" when none), drawn per position."""
        base = _mix(self.seed, reader, "caption")
        position = 0
        for epoch in itertools.count():
            start = position
            for jpg, texts in self.epoch_rows(reader, epoch):
                joined = (join_texts([texts[i] for i in choice]) for choice in self._choices)
                found = [t for t in joined if t]
                if len(found) > 1 or (found and self.generic_captions):  # a draw to make: the position's RNG
                    rng = random.Random(base ^ position)
                if len(found) > 1:
                    found = [rng.choice(found)]
                if found and self.generic_captions and rng.random() < self.generic_captions:
                    found = [rng.choice(GENERIC_CAPTIONS)]
                yield position, jpg, found[0] if found else ""
                position += 1
            if position == start:
                # Possible only with more readers than rows; an endless loop would hang training.
                raise DatasetError(
                    f"reader {reader} of {self.world_size * self.num_workers} got no rows from "
                    f"{len(self.units)} row-group slices: use fewer --workers or processes for so small a dataset"
                )

    def __iter__(self) -> Iterator[Batch]:
        reader, skip = self._reader()
        worker = reader % self.num_workers  # the worker's part: it makes batches w, w + K, w + 2K, ...
        rows = self._rows(reader)
        crops = _mix(self.seed, reader, "crop")  # a position's crop: drawn from Random(crops ^ position)
        kept = _Kept(self.keep_mb * 2**20)
        for n in itertools.count():
            low_res = worker + n * self.num_workers < self.low_res_batches  # this process's batch number
            transform = self.low_res_transform if low_res else self.transform
            images, captions, skipped = [], [], 0
            replaying = skip > 0
            while len(captions) < self.batch_size:
                position, jpg, caption = next(rows)
                image = kept.decode(jpg, self.draft_size) if caption else None
                if image is None:
                    skipped += 1
                    continue
                captions.append(caption)
                if not replaying:
                    images.append(transform.picture(image, random.Random(crops ^ position)))
            if replaying:
                skip -= 1
                continue
            yield Batch(transform.batch(images), kept.tokenize(self.tokenizer, captions), skipped)


def _collate(batch: Batch) -> Batch:
    return batch


def _forget_parent_thread_exits(worker_id: int) -> None:
    """DataLoader worker_init_fn: drop the thread-exit callbacks the forked worker inherited.

    A library in the training process (Prefect's log and event services, when training runs inside a
    flow) registers `threading._register_atexit` callbacks that drain its own threads. A forked worker
    has none of those threads, so at its exit the callback fails (AssertionError) and the worker exits
    with code 1: torch then reports "DataLoader worker exited unexpectedly" and fails the training
    that had already finished. The callbacks belong to the parent; the worker has nothing to drain.
    """
    del worker_id
    threading._threading_atexits.clear()  # no public API; CPython 3.9+ keeps them here


def _init_worker(worker_id: int, nice: int = 0) -> None:
    """DataLoader worker_init_fn: forget the parent's thread-exit callbacks, then lower the worker's
    priority by `nice` (os.nice). On a machine with fewer cores than the training's threads plus the
    workers, a worker at the training's priority takes a core from its threads in the middle of a
    parallel op, which then waits for the descheduled thread; at 19 it runs when a core is free."""
    _forget_parent_thread_exits(worker_id)
    if nice:
        os.nice(nice)


def train_loader(
    stream: ShardStream, num_workers: int, pin_memory: bool = False, worker_nice: int = 0
) -> DataLoader:
    """A DataLoader over `stream` that keeps batch order deterministic (batch b from worker b % K);
    its workers run `worker_nice` lower in priority than the training (_init_worker)."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        multiprocessing_context="fork" if num_workers else None,
        worker_init_fn=functools.partial(_init_worker, nice=worker_nice) if num_workers else None,
    )


def train_batches(
    stream: ShardStream, num_workers: int, pin_memory: bool = False, worker_nice: int = 0
) -> Generator[Batch, None, None]:
    """The batches of `train_loader(stream, ...)`, with a `close()` that stops its worker processes now.

    The loader starts its workers at the first batch. A DataLoader iterator that is merely dropped stops
    them only once nothing refers to it, and an error's traceback (kept by pytest, a Prefect state, a
    caller's `except ... as exc`) refers to it: its workers go on prefetching until interpreter exit kills
    them. So the training loop closes this in its `finally`; an error raised while fetching a batch closes
    it too. (The "DataLoader worker exited unexpectedly" seen inside flows had another cause: see
    `_forget_parent_thread_exits`.)
    """
    batches = iter(train_loader(stream, num_workers, pin_memory, worker_nice))
    try:
        yield from batches
    finally:
        # torch has no public close; its own __del__ calls this (PyTorch Lightning calls it the same way)
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def iter_pairs(
    sources: Sequence[Path | str], limit: int | None = None, version: int | None = None
) -> Iterator[tuple[Image.Image, str]]:
    """(image, caption) of every decodable row in shard order (evaluation); bad rows are skipped."""
    count = 0
    for ref in find_row_groups(sources, version):
        table = read_row_group(ref, COLUMNS)
        for jpg, caption in zip(table.column("jpg").to_pylist(), table.column("caption").to_pylist()):
            caption = caption.strip() if isinstance(caption, str) else ""
            image = decode_image(jpg) if caption else None
            if image is None:
                continue
            yield image, caption
            count += 1
            if limit is not None and count >= limit:
                return
