"""Filters: small named functions that return None to keep a row or a reason string to drop it.

A reason reads "name: detail" (e.g. "too_small: 40x30 < 64"); reports count by stage and name.
Text filters run before download (no bandwidth spent on a caption we would drop); image filters
run on img2dataset's output rows.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image

from curation.config import BuildConfig

TEXT_STAGE = "text"
DOWNLOAD_STAGE = "download"
IMAGE_STAGE = "image"

Row = dict
FilterFn = Callable[[Row, BuildConfig], "str | None"]


@dataclass(frozen=True)
class Filter:
    name: str
    stage: str
    check: FilterFn


def reason_name(reason: str) -> str:
    """The category of a reason string ("too_small: 40x30 < 64" -> "too_small")."""
    return reason.split(":", 1)[0].strip()


# --- text ---------------------------------------------------------------------------------------

_FILE_NAME = re.compile(
    r"^\s*[\w\-. ()%]*\.(jpe?g|png|gif|svg|webp|bmp|tiff?|ico|heic|avif)\s*$|^\s*(img|dsc|dscn|dcim|pxl|screenshot)[_\- ]?\d+",
    re.IGNORECASE,
)
_URL = re.compile(r"(https?://|www\.)\S+", re.IGNORECASE)
# Alt texts that CMSs and cameras fill in when nobody wrote one.
_GENERIC = {
    "image",
    "images",
    "photo",
    "photos",
    "picture",
    "pic",
    "img",
    "thumbnail",
    "thumb",
    "untitled",
    "no image",
    "no caption",
    "placeholder",
    "logo",
    "icon",
    "banner",
    "spacer",
    "click here",
    "click to enlarge",
    "view image",
    "image description",
    "alt text",
    "null",
    "none",
    "undefined",
}
_WORD = re.compile(r"\w+", re.UNICODE)


def _caption(row: Row) -> str:
    return (row.get("caption") or "").strip()


def boilerplate_caption(row: Row, cfg: BuildConfig) -> str | None:
    text = _caption(row)
    if not text:
        return "empty_caption: no caption text"
    lowered = re.sub(r"[\s_\-.:]+", " ", text.lower()).strip()
    if lowered in _GENERIC or re.fullmatch(r"(image|photo|picture|img|file)\s*\d*", lowered):
        return f"boilerplate: generic caption {text[:40]!r}"
    if _FILE_NAME.search(text):
        return f"boilerplate: file name {text[:40]!r}"
    if _URL.fullmatch(text) or (_URL.search(text) and len(_URL.sub("", text).split()) < cfg.min_words):
        return f"boilerplate: URL {text[:40]!r}"
    if not _WORD.search(text) or re.fullmatch(r"[\d\W_]+", text):
        return f"boilerplate: no words {text[:40]!r}"
    return None


def caption_words(row: Row, cfg: BuildConfig) -> str | None:
    words = len(_WORD.findall(_caption(row)))
    if words < cfg.min_words:
        return f"too_few_words: {words} < {cfg.min_words}"
    return None


def caption_chars(row: Row, cfg: BuildConfig) -> str | None:
    chars = len(_caption(row))
    if chars < cfg.min_chars:
        return f"too_short: {chars} chars < {cfg.min_chars}"
    if chars > cfg.max_chars:
        return f"too_long: {chars} chars > {cfg.max_chars}"
    return None


@lru_cache(maxsize=1)
def _language_identifier():
    # py3langid ships its model inside the wheel (no download, no hub): it works offline, is
    # deterministic, and classifies a caption in ~0.1 ms.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> tuple[str, float]:
    """ISO 639-1 code and its probability for a caption."""
    lang, prob = _language_identifier().classify(text)
    return str(lang), float(prob)


def allowed_language_probability(text: str, allowed: list[str]) -> float:
    """The probability the model gives to all `allowed` languages together."""
    return float(sum(p for lang, p in _language_identifier().rank(text) if lang in allowed))


# Short captions carry little evidence ("a purple star" gets P(en) = 0.02, its top guess is not
# English): drop only when the allowed languages together get less than this. Measured on the
# loopback web: English shape captions >= 0.02, German/French/Spanish ones <= 0.0001.
LANGUAGE_MIN_ALLOWED_PROBABILITY = 0.005
ANY_LANGUAGE = ("any", "*")


def caption_language(row: Row, cfg: BuildConfig) -> str | None:
    text = _caption(row)
    if not text:
        return None
    lang, prob = detect_language(text)
    row["caption_language"] = lang
    allowed = [code for code in cfg.languages if code not in ANY_LANGUAGE]
    if not allowed or len(allowed) < len(cfg.languages) or lang in allowed:
        return None
    p_allowed = allowed_language_probability(text, allowed)
    if p_allowed < LANGUAGE_MIN_ALLOWED_PROBABILITY:
        return (
            f"language: {lang} ({prob:.2f}; {','.join(allowed)} {p_allowed:.4f}) not in {','.join(allowed)}"
        )
    return None


TEXT_FILTERS: tuple[Filter, ...] = (
    Filter("boilerplate", TEXT_STAGE, boilerplate_caption),
    Filter("caption_words", TEXT_STAGE, caption_words),
    Filter("caption_chars", TEXT_STAGE, caption_chars),
    Filter("language", TEXT_STAGE, caption_language),
)


# --- download + image ---------------------------------------------------------------------------

# img2dataset's error messages, mapped to reason names (first match wins).
_DOWNLOAD_ERRORS: tuple[tuple[str, str], ...] = (
    # curation/fetch.py's refusals
    ("redirect refused", "refused_redirect"),
    ("refused: ", "refused_address"),
    ("robots.txt disallows", "robots_txt"),
    ("max_image_bytes", "too_large"),
    ("redirects:", "too_many_redirects"),
    ("redirect loop", "redirect_loop"),
    ("x-robots-tag", "noai"),
    ("cv_io_max_image_pixels", "decompression_bomb"),
    ("image area too large", "decompression_bomb"),
    ("decompression", "decompression_bomb"),
    ("image decoding error", "undecodable"),
    ("timed out", "timeout"),
    ("redirect error", "redirect_loop"),
    ("infinite loop", "redirect_loop"),
    ("http error 404", "http_404"),
    ("http error", "http_error"),
    ("connection refused", "unreachable"),
    ("name or service not known", "unreachable"),
    ("unknown url type", "bad_url"),
)


def download_status(row: Row, cfg: BuildConfig) -> str | None:
    if row.get("status") == "success":
        return None
    message = (row.get("error_message") or row.get("status") or "unknown").strip()
    lowered = message.lower()
    for needle, name in _DOWNLOAD_ERRORS:
        if needle in lowered:
            return f"{name}: {message[:160]}"
    if row.get("status") == "failed_to_resize":
        return f"undecodable: {message[:160]}"
    return f"download_failed: {message[:160]}"


def decodes(row: Row, cfg: BuildConfig) -> str | None:
    data = row.get("jpg")
    if not data:
        return "undecodable: no image bytes"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as exc:  # any decoder failure is a reason, not a crash
        return f"undecodable: {type(exc).__name__}: {str(exc)[:100]}"
    return None


def min_side(row: Row, cfg: BuildConfig) -> str | None:
    w, h = row.get("original_width") or 0, row.get("original_height") or 0
    if min(w, h) < cfg.min_side:
        return f"too_small: {w}x{h} < {cfg.min_side}"
    return None


def max_aspect(row: Row, cfg: BuildConfig) -> str | None:
    w, h = row.get("original_width") or 0, row.get("original_height") or 0
    if min(w, h) > 0 and max(w, h) / min(w, h) > cfg.max_aspect:
        return f"aspect_ratio: {max(w, h) / min(w, h):.1f} > {cfg.max_aspect:g}"
    return None


IMAGE_FILTERS: tuple[Filter, ...] = (
    Filter("download_status", DOWNLOAD_STAGE, download_status),
    Filter("decodes", IMAGE_STAGE, decodes),
    # a banner is dropped as a banner even when its short side is also small
    Filter("max_aspect", IMAGE_STAGE, max_aspect),
    Filter("min_side", IMAGE_STAGE, min_side),
)


def first_reject(row: Row, cfg: BuildConfig, filters: tuple[Filter, ...]) -> tuple[str, str] | None:
    """(stage, reason) of the first filter that drops `row`, or None when all keep it."""
    for f in filters:
        reason = f.check(row, cfg)
        if reason is not None:
            return f.stage, reason
    return None
