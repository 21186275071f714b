"""The record schema: one image-text pair, as a row of a Parquet shard.

The columns are a superset of what img2dataset writes with ``output_format="parquet"``,
so tools that read img2dataset output read ours. WIT text columns ride along, then what
curation adds. The version is written into every shard's metadata; bump it when a column
changes meaning or type.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from common.errors import UserError

SCHEMA_VERSION = "1.0"
SCHEMA_METADATA_KEY = b"clip_workbench.schema_version"

IMG2DATASET_FIELDS = [
    pa.field("key", pa.string()),
    pa.field("url", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("status", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    pa.field("original_width", pa.int64()),
    pa.field("original_height", pa.int64()),
    pa.field("exif", pa.string()),
    pa.field("sha256", pa.string()),
    pa.field("jpg", pa.binary()),
]

WIT_TEXT_FIELDS = [
    pa.field("page_url", pa.string()),
    pa.field("page_title", pa.string()),
    pa.field("section_title", pa.string()),
    pa.field("caption_reference_description", pa.string()),
    pa.field("caption_alt_text_description", pa.string()),
    pa.field("caption_attribution_description", pa.string()),
    pa.field("context_page_description", pa.string()),
    pa.field("language", pa.string()),
]

CURATION_FIELDS = [
    # which WIT field the caption was taken from (policy recorded per row)
    pa.field("text_source", pa.string()),
    # 64-bit perceptual hash as 16 hex digits
    pa.field("phash", pa.string()),
    pa.field("clip_score", pa.float32()),
    # the --source the row came from (wit:PATH or crawl:URL)
    pa.field("source", pa.string()),
]

# The 17 columns of the public WIT release, in its order (a WIT TSV's header).
WIT_COLUMNS = (
    "language",
    "page_url",
    "image_url",
    "page_title",
    "section_title",
    "hierarchical_section_title",
    "caption_reference_description",
    "caption_attribution_description",
    "caption_alt_text_description",
    "mime_type",
    "original_height",
    "original_width",
    "is_main_image",
    "attribution_passes_lang_id",
    "page_changed_recently",
    "context_page_description",
    "context_section_description",
)
# The WIT text columns that ride along into every record.
WIT_TEXT_COLUMNS = tuple(f.name for f in WIT_TEXT_FIELDS)

REJECT_FIELDS = [
    pa.field("reject_stage", pa.string()),
    pa.field("reject_reason", pa.string()),
]

RECORD_SCHEMA = pa.schema(IMG2DATASET_FIELDS + WIT_TEXT_FIELDS + CURATION_FIELDS)
REJECT_SCHEMA = pa.schema(list(RECORD_SCHEMA) + REJECT_FIELDS)

# What a trainer cannot do without.
TRAINING_COLUMNS = ("key", "caption", "jpg")


class SchemaError(UserError, ValueError):
    """A table or file does not match the record schema; the message names file, column and expectation."""


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected or pa.types.is_null(actual):
        return True
    families = [
        (pa.types.is_string, pa.types.is_large_string),
        (pa.types.is_binary, pa.types.is_large_binary),
    ]
    for a, b in families:
        if (a(actual) or b(actual)) and (a(expected) or b(expected)):
            return True
    if pa.types.is_integer(expected) and pa.types.is_integer(actual):
        return True
    if pa.types.is_floating(expected) and (pa.types.is_floating(actual) or pa.types.is_integer(actual)):
        return True
    return False


def validate(
    table_or_schema: pa.Table | pa.Schema,
    source: str,
    required: Iterable[str] = TRAINING_COLUMNS,
    schema: pa.Schema = RECORD_SCHEMA,
) -> None:
    """Check that the required columns exist and that every known column has a compatible type.

    Raises SchemaError naming `source` (a file path or description), the column, and what was expected.
    """
    actual = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    names = set(actual.names)
    for name in required:
        if name not in names:
            hint = ""
            if name == "jpg":
                hint = (
                    " (was it written by img2dataset with output_format='parquet' and encode_format='jpg'?)"
                )
            expected = f"`{name}: {schema.field(name).type}`" if name in schema.names else f"`{name}`"
            raise SchemaError(f"{source}: missing column `{name}`; expected {expected}{hint}")
    for field in schema:
        if field.name in names:
            got = actual.field(field.name).type
            if not _compatible(got, field.type):
                raise SchemaError(f"{source}: column `{field.name}` has type {got}; expected {field.type}")


def conform(table: pa.Table, schema: pa.Schema = RECORD_SCHEMA, source: str = "table") -> pa.Table:
    """Return `table` with every schema column present (nulls where missing), cast and in schema order.

    Columns the schema does not know are kept after the known ones, so extra data rides along.
    """
    validate(table, source, required=(), schema=schema)
    columns, fields = [], []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
        else:
            col = pa.nulls(table.num_rows, type=field.type)
        columns.append(col)
        fields.append(field)
    for name in table.column_names:
        if schema.get_field_index(name) == -1:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def with_version(schema: pa.Schema) -> pa.Schema:
    """The schema with our version in its metadata (readers check it)."""
    meta = dict(schema.metadata or {})
    meta[SCHEMA_METADATA_KEY] = SCHEMA_VERSION.encode()
    return schema.with_metadata(meta)


def schema_version_of(schema: pa.Schema) -> str | None:
    meta = schema.metadata or {}
    value = meta.get(SCHEMA_METADATA_KEY)
    return value.decode() if value is not None else None
