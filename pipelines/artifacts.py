"""Prefect artifacts: what a person sees of a run in the Prefect UI without opening files.

Markdown tables for counts and metrics, and pictures (contact sheets, loss curves) as an image
artifact with the picture inlined as a JPEG data URI plus a link to the file on disk.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from curation.report import markdown_cell

# Larger pictures are shrunk before inlining: the Prefect database keeps every artifact.
MAX_INLINE_SIDE = 640
JPEG_QUALITY = 85


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    key = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return key or "artifact"


def _cell(value: Any) -> str:
    # Values can quote a server (reject reasons): escaped like report.md's cells.
    return markdown_cell(f"{value:.4g}" if isinstance(value, float) else value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table of dict rows (columns in first-seen order unless given)."""
    if not rows:
        return "_(no rows)_\n"
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def mapping_table(values: Mapping[str, Any], key_name: str = "name", value_name: str = "value") -> str:
    return markdown_table([{key_name: k, value_name: v} for k, v in values.items()])


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (metrics JSON -> one table)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat


def image_data_uri(path: Path | str, max_side: int = MAX_INLINE_SIDE) -> str:
    """The picture as a JPEG data URI (quality 85), shrunk so its longer side is at most `max_side`.

    JPEG, not optimised PNG: on the 2-core machine an optimised PNG of a 640 px contact sheet took
    about 1.8 s of every build flow and 430 kB in the Prefect database; JPEG takes 0.2 s and 90 kB
    (bench/artifact_picture.py). The full-size file stays linked next to it.
    """
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def publish_markdown(key: str, markdown: str, description: str | None = None) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description)


def publish_table(key: str, title: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table artifact with a heading; returns the markdown (reports reuse it)."""
    markdown = f"### {title}\n\n{markdown_table(rows)}"
    publish_markdown(key, markdown, description=title)
    return markdown


def publish_picture(key: str, path: Path | str, title: str) -> None:
    """An image artifact (inlined thumbnail) and a link artifact to the full-size file."""
    from prefect.artifacts import create_image_artifact, create_link_artifact

    path = Path(path).resolve()
    if not path.exists():
        return
    create_image_artifact(image_url=image_data_uri(path), key=artifact_key(key), description=title)
    create_link_artifact(
        key=artifact_key(key + "-file"), link=path.as_uri(), link_text=f"{title}: {path}", description=title
    )


def publish_pictures(items: Iterable[tuple[str, Path | str | None, str]]) -> None:
    for key, path, title in items:
        if path is not None:
            publish_picture(key, path, title)
