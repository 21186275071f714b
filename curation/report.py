"""The build report: report.md (counts per stage and reason) and a contact sheet of kept and rejected pairs."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from common.atomic import atomic_write_bytes
from curation import shards

REPORT_NAME = "report.md"
SHEET_NAME = "contact_sheet.png"
STAGE_ORDER = ["crawl", "read", "text", "download", "image", "dedup", "clip"]
TILE = 128
CAPTION_LINES = 3
COLUMNS = 8


def _samples(out: Path, kind: str, limit: int) -> list[dict]:
    """Up to `limit` rows with pixels; for rejects, spread over reasons (round robin)."""
    columns = ["key", "caption", "jpg"] + (
        ["reject_stage", "reject_reason"] if kind == shards.REJECTS else []
    )
    by_reason: dict[str, list[dict]] = {}
    try:
        paths = shards.trusted_shards(out, kind, verify=False)
    except shards.ShardError:  # nothing written yet
        return []
    for path in paths:
        table = pq.read_table(path, columns=columns)
        for row in table.to_pylist():
            if not row.get("jpg"):
                continue
            reason = (row.get("reject_reason") or "kept").split(":", 1)[0]
            bucket = by_reason.setdefault(reason, [])
            if len(bucket) < limit:
                bucket.append(row)
    picked: list[dict] = []
    buckets = [b for _, b in sorted(by_reason.items())]
    while len(picked) < limit and any(buckets):
        for bucket in buckets:
            if bucket and len(picked) < limit:
                picked.append(bucket.pop(0))
    return picked


def _tile(row: dict, font: ImageFont.ImageFont, label_color: str) -> Image.Image:
    line_height = 12
    tile = Image.new("RGB", (TILE, TILE + line_height * (CAPTION_LINES + 1) + 4), "white")
    try:
        with Image.open(io.BytesIO(row["jpg"])) as im:
            picture = im.convert("RGB")
            scale = TILE / max(picture.size)  # small training-size pictures are shown enlarged
            picture = picture.resize((round(picture.width * scale), round(picture.height * scale)))
            tile.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    except Exception:  # noqa: BLE001 - an unreadable picture still gets its tile and label
        pass
    draw = ImageDraw.Draw(tile)
    y = TILE + 2
    if row.get("reject_reason"):
        draw.text((2, y), row["reject_reason"].split(":", 1)[0][:22], fill=label_color, font=font)
        y += line_height
    for line in textwrap.wrap(row.get("caption") or "(no caption)", 22)[:CAPTION_LINES]:
        draw.text((2, y), line, fill="black", font=font)
        y += line_height
    return tile


def contact_sheet(out: Path, path: Path, per_group: int = 24) -> Path | None:
    """A PNG: kept pairs on top, rejected pairs with pictures (dedup, CLIP, image filters) below."""
    kept = _samples(out, shards.SHARDS, per_group)
    rejected = _samples(out, shards.REJECTS, per_group)
    if not kept and not rejected:
        return None
    try:
        font = ImageFont.load_default(size=10)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    groups = [("kept", kept, "darkgreen"), ("rejected", rejected, "darkred")]
    tiles = {name: [_tile(r, font, color) for r in rows] for name, rows, color in groups}
    tile_h = TILE + 12 * (CAPTION_LINES + 1) + 4
    header = 20
    height = sum(header + max(1, -(-len(t) // COLUMNS)) * tile_h for t in tiles.values())
    sheet = Image.new("RGB", (COLUMNS * TILE + (COLUMNS + 1) * 4, height + 8), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    y = 4
    for name, rows, color in groups:
        draw.text((6, y + 4), f"{name} ({len(rows)} samples)", fill=color, font=font)
        y += header
        for i, tile in enumerate(tiles[name]):
            sheet.paste(tile, (4 + (i % COLUMNS) * (TILE + 4), y + (i // COLUMNS) * tile_h))
        y += max(1, -(-len(rows) // COLUMNS)) * tile_h
    atomic_write_bytes(path, _png(sheet))
    return path


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


_MARKDOWN_SPECIAL = str.maketrans(
    {"\\": "\\\\", "|": "\\|", "`": "\\`", "[": "\\[", "]": "\\]", "<": "&lt;", ">": "&gt;", "&": "&amp;"}
)


def markdown_cell(value: object, limit: int = 200) -> str:
    """Text for one markdown table cell, whoever wrote it (reject reasons can quote a server's words).

    One line, at most `limit` characters, no control characters, and nothing that markdown or the
    HTML inside it would act on: `|` cannot add a column, `<script>` or `[link](...)` stay text.
    """
    text = "".join(c if c.isprintable() else " " for c in str(value))
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.translate(_MARKDOWN_SPECIAL)


def _stage_key(stage: str) -> tuple:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def render_report(
    kept: int, counts: dict[str, dict[str, int]], settings: dict, scored: bool, sheet: str | None
) -> str:
    rejected = sum(n for reasons in counts.values() for n in reasons.values())
    total = kept + rejected
    lines = [
        "# Dataset build report",
        "",
        f"- input rows: {total}",
        f"- kept: {kept} ({100 * kept / max(total, 1):.1f} %)",
        f"- rejected: {rejected} (every one in `rejects/` with its stage and reason)",
        f"- CLIP score: {'computed' if scored else 'not computed (no model given)'}",
        "",
        "## Rejects per stage and reason",
        "",
        "| stage | reason | rows | share of input |",
        "|---|---|---:|---:|",
    ]
    for stage in sorted(counts, key=_stage_key):
        for reason, n in sorted(counts[stage].items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(
                f"| {markdown_cell(stage)} | {markdown_cell(reason)} | {n} | {100 * n / max(total, 1):.1f} % |"
            )
    if not counts:
        lines.append("| - | - | 0 | 0 % |")
    lines += ["", "## Samples", ""]
    lines.append(f"![kept and rejected samples]({sheet})" if sheet else "(no samples with pictures)")
    lines += ["", "## Settings", "", "```"]
    lines += [f"{k} = {v!r}".replace("`", "'") for k, v in sorted(settings.items())]  # cannot close the block
    lines += ["```", ""]
    return "\n".join(lines)


def write_report(
    out: Path, kept: int, counts: dict[str, dict[str, int]], settings: dict, scored: bool
) -> tuple[Path, Path | None]:
    """Write DIR/report.md and DIR/contact_sheet.png; returns their paths."""
    out = Path(out)
    sheet = contact_sheet(out, out / SHEET_NAME)
    report = out / REPORT_NAME
    text = render_report(kept, counts, settings, scored, sheet.name if sheet else None)
    atomic_write_bytes(report, text.encode())
    return report, sheet
