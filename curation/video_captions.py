"""Caption files in the MSR-VTT style: video id -> one or more captions, as JSON or CSV.

Accepted layouts (the reader sniffs which):
- MSR-VTT JSON: `{"videos": [{"video_id": ..., "split": ...}], "sentences": [{"video_id": ..., "caption": ...}]}`;
- a JSON object `{"video0": ["a caption", ...], ...}` or a JSON list of `{"video_id", "caption"}` rows;
- CSV with a `video_id` column and a `caption` or `sentence` column (MSR-VTT 1k-A test CSV has both
  `video_id` and `sentence`); repeated ids give several captions.
A sentence may carry a `kind` (our synthetic set uses "order" and "free"), kept for evaluation; an
MSR-VTT `videos` entry may carry a `group` (videos the trainer keeps in one batch: hard negatives).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError


class CaptionFileError(UserError, ValueError):
    """A caption file we cannot read; the message names the file and the expected layout."""


@dataclass(frozen=True)
class Caption:
    video_id: str
    text: str
    kind: str = ""  # free-form tag ("order", "free"); empty when the file has none


@dataclass(frozen=True)
class CaptionSet:
    captions: tuple[Caption, ...]
    splits: dict[str, str]  # video id -> split name, where the file says
    groups: dict[str, str] = field(
        default_factory=dict
    )  # video id -> hard-negative group, where the file says

    def video_ids(self, split: str | None = None) -> list[str]:
        """Video ids in first-seen order, optionally only those of one split."""
        seen: dict[str, None] = {}
        for caption in self.captions:
            if split is None or self.splits.get(caption.video_id) == split:
                seen.setdefault(caption.video_id)
        return list(seen)

    def select(self, video_ids: list[str] | None = None, kind: str | None = None) -> list[Caption]:
        wanted = set(video_ids) if video_ids is not None else None
        return [
            c
            for c in self.captions
            if (wanted is None or c.video_id in wanted) and (kind is None or c.kind == kind)
        ]


_LAYOUT_HINT = (
    "expected MSR-VTT JSON ({'sentences': [{'video_id', 'caption'}]}), {video_id: [captions]}, "
    "or CSV with columns video_id and caption (or sentence)"
)


def _from_rows(rows: list[dict], path: Path) -> list[Caption]:
    captions = []
    for number, row in enumerate(rows):
        if not isinstance(row, dict):
            raise CaptionFileError(f"{path}: entry {number} is not an object: {_LAYOUT_HINT}")
        video_id = row.get("video_id", row.get("vid_key"))
        text = row.get("caption", row.get("sentence"))
        if video_id is None or text is None:
            raise CaptionFileError(f"{path}: entry {number} lacks video_id or caption: {_LAYOUT_HINT}")
        text = str(text).strip()
        if text:  # an empty caption cannot be a query; skipping it loses nothing
            captions.append(Caption(str(video_id), text, str(row.get("kind", "") or "")))
    return captions


def read_captions(path: str | Path) -> CaptionSet:
    """Read a caption file (JSON or CSV, see module doc); raises CaptionFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CaptionFileError(f"caption file {path} does not exist")
    splits: dict[str, str] = {}
    groups: dict[str, str] = {}
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        captions = _from_rows(rows, path)
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CaptionFileError(f"{path}: not valid JSON ({err}): {_LAYOUT_HINT}") from None
        if isinstance(data, dict) and "sentences" in data:
            captions = _from_rows(data["sentences"], path)
            for video in data.get("videos", []):
                if isinstance(video, dict) and "video_id" in video:
                    if "split" in video:
                        splits[str(video["video_id"])] = str(video["split"])
                    if "group" in video:
                        groups[str(video["video_id"])] = str(video["group"])
        elif isinstance(data, dict):
            captions = []
            for video_id, texts in data.items():
                texts = [texts] if isinstance(texts, str) else texts
                if not isinstance(texts, list):
                    raise CaptionFileError(f"{path}: captions of {video_id!r} are not a list: {_LAYOUT_HINT}")
                captions += [Caption(str(video_id), str(t).strip()) for t in texts if str(t).strip()]
        elif isinstance(data, list):
            captions = _from_rows(data, path)
        else:
            raise CaptionFileError(f"{path}: unexpected JSON layout: {_LAYOUT_HINT}")
    if not captions:
        raise CaptionFileError(f"{path}: no captions found: {_LAYOUT_HINT}")
    return CaptionSet(tuple(captions), splits, groups)


def write_captions(
    path: str | Path, captions: list[Caption], splits: dict[str, str], groups: dict[str, str] | None = None
) -> Path:
    """Write MSR-VTT style JSON (videos with split and optional group, sentences with sen_id and kind)."""
    path = Path(path)
    groups = groups or {}
    videos = [
        {"video_id": v, "split": s, **({"group": groups[v]} if v in groups else {})}
        for v, s in splits.items()
    ]
    sentences = [
        {"video_id": c.video_id, "caption": c.text, "sen_id": i, "kind": c.kind}
        for i, c in enumerate(captions)
    ]
    path.write_text(json.dumps({"videos": videos, "sentences": sentences}, indent=1), encoding="utf-8")
    return path
