"""Settings of `python -m curation build`: one frozen dataclass for the CLI, TOML files and Prefect flows.

Field names are the command-line flags (`chunk_size` is `--chunk-size`) and the TOML keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.settings import ConfigError, to_dict
from curation.fetch import AGENT_TOKEN, NOAI_DIRECTIVES, USER_AGENT
from curation.netguard import UrlRefused, parse_networks

# WIT's caption fields, best first: the reference description is written for the reader of the
# article, alt text for screen readers, attribution often only names the file or the author.
DEFAULT_CAPTION_POLICY = (
    "caption_reference_description",
    "caption_alt_text_description",
    "caption_attribution_description",
)
CAPTION_FIELDS = DEFAULT_CAPTION_POLICY + ("page_title", "section_title", "context_page_description")
SOURCE_KINDS = ("wit", "crawl")


@dataclass(frozen=True)
class BuildConfig:
    out: Path = field(metadata={"help": "dataset directory to write (or resume)"})
    source: list[str] = field(
        default_factory=list, metadata={"help": "wit:PATH.tsv[.gz] or crawl:URL; repeat for several"}
    )
    config: Path | None = field(default=None, metadata={"help": "TOML file with these same settings"})
    allow_networks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "CIDR of a private/loopback network that pages and images may come from, e.g. "
            "127.0.0.0/8 for a loopback web (repeatable); link-local and metadata addresses stay refused"
        },
    )
    # --- CLIP score
    clip_checkpoint: Path | None = field(default=None, metadata={"help": "our checkpoint file or run dir"})
    clip_model: str | None = field(default=None, metadata={"help": "open_clip model name, e.g. ViT-B-32"})
    clip_pretrained: str | None = field(default=None, metadata={"help": "open_clip pretrained tag or path"})
    min_clip_score: float | None = field(default=None, metadata={"help": "keep pairs with cosine >= X"})
    clip_top_fraction: float | None = field(
        default=None, metadata={"help": "keep the best fraction F (0-1] by CLIP score"}
    )
    clip_batch_size: int = field(default=64, metadata={"help": "pairs per CLIP forward pass"})
    device: str = field(default="cpu", metadata={"help": "torch device for CLIP scoring"})
    # --- download (img2dataset)
    chunk_size: int = field(
        default=5000, metadata={"help": "candidates per img2dataset call (unit of resume)"}
    )
    image_size: int = field(default=224, metadata={"help": "images are resized to this side"})
    resize_mode: Literal["center_crop", "border", "keep_ratio", "keep_ratio_largest", "no"] = field(
        default="center_crop", metadata={"help": "img2dataset resize mode"}
    )
    processes: int = field(default=2, metadata={"help": "img2dataset processes per chunk"})
    threads: int = field(default=16, metadata={"help": "img2dataset download threads per process"})
    timeout: int = field(
        default=10, metadata={"help": "seconds per image download, all of it (redirects and body included)"}
    )
    retries: int = field(default=0, metadata={"help": "img2dataset retries per image"})
    reuse_downloads: list[Path] = field(
        default_factory=list,
        metadata={
            "help": "an earlier build's DIR to take downloaded chunks from (repeatable): a chunk whose "
            "candidate rows and download settings match one of its finished chunks is copied, not fetched "
            "again (to filter the same sources with another CLIP without a second crawl)"
        },
    )
    distributor: Literal["multiprocessing", "pyspark", "ray"] = field(
        default="multiprocessing", metadata={"help": "img2dataset distributor"}
    )
    disallowed_header_directives: list[str] = field(
        default_factory=lambda: list(NOAI_DIRECTIVES),
        metadata={
            "help": "X-Robots-Tag directives that forbid using an image (plain or scoped to our token)"
        },
    )
    max_image_bytes: int = field(
        default=20_000_000, metadata={"help": "bytes per image download at most (enforced while reading)"}
    )
    max_redirects: int = field(default=5, metadata={"help": "redirect hops per image download at most"})
    respect_robots: bool = field(
        default=True,
        metadata={
            "help": "honour the robots.txt of image hosts, for WIT sources too (--no-respect-robots: off)"
        },
    )
    user_agent: str = field(default=USER_AGENT, metadata={"help": "User-Agent header of every request"})
    user_agent_token: str = field(
        default=AGENT_TOKEN,
        metadata={"help": "our robots.txt / X-Robots-Tag agent name (must appear in user_agent)"},
    )
    max_image_pixels: int = field(
        default=100_000_000,
        metadata={"help": "refuse to decode images with more pixels (decompression bombs)"},
    )
    # --- filters
    caption_policy: list[str] = field(
        default_factory=lambda: list(DEFAULT_CAPTION_POLICY),
        metadata={"help": "WIT fields to take the caption from, first non-empty wins"},
    )
    min_side: int = field(default=64, metadata={"help": "minimum original image side in pixels"})
    max_aspect: float = field(default=3.0, metadata={"help": "maximum long/short side ratio"})
    min_words: int = field(default=2, metadata={"help": "minimum words in a caption"})
    min_chars: int = field(default=5, metadata={"help": "minimum characters in a caption"})
    max_chars: int = field(default=1000, metadata={"help": "maximum characters in a caption"})
    # English by default: the open_clip tokenizer and our models are English-only.
    languages: list[str] = field(
        default_factory=lambda: ["en"],
        metadata={"help": "allowed caption languages (ISO 639-1, repeatable); 'any' = no language filter"},
    )
    # 8 of 64 bits is the usual pHash near-duplicate radius (a copy shifted by 3 % differs by 8 bits);
    # a pixel check of each candidate pair keeps look-alike but different pictures apart.
    dedup_radius: int = field(
        default=8,
        metadata={"help": "pHash Hamming radius of near-duplicate candidates (lower = faster at scale)"},
    )
    # --- crawl sources
    crawl_max_pages: int = field(default=1000, metadata={"help": "pages per crawl source"})
    crawl_max_depth: int = field(default=5, metadata={"help": "link depth per crawl source"})

    def __post_init__(self) -> None:
        for spec in self.source:
            kind, sep, rest = spec.partition(":")
            if not sep or kind not in SOURCE_KINDS or not rest:
                raise ConfigError(f"source {spec!r}: expected wit:PATH.tsv[.gz] or crawl:URL")
        if self.min_clip_score is not None and self.clip_top_fraction is not None:
            raise ConfigError("give either min_clip_score or clip_top_fraction, not both")
        if self.clip_top_fraction is not None and not 0 < self.clip_top_fraction <= 1:
            raise ConfigError(f"clip_top_fraction {self.clip_top_fraction} must be in (0, 1]")
        if self.clip_checkpoint is not None and self.clip_model is not None:
            raise ConfigError("give either clip_checkpoint or clip_model, not both")
        for name in self.caption_policy:
            if name not in CAPTION_FIELDS:
                raise ConfigError(f"caption_policy: {name!r} is not one of {', '.join(CAPTION_FIELDS)}")
        for name in ("chunk_size", "image_size", "processes", "threads", "timeout", "clip_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_image_bytes",):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_redirects < 0:
            raise ConfigError(f"max_redirects must not be negative, got {self.max_redirects}")
        try:
            parse_networks(self.allow_networks)
        except UrlRefused as exc:
            raise ConfigError(str(exc)) from exc
        if self.user_agent_token.lower() not in self.user_agent.lower():
            raise ConfigError(
                f"user_agent {self.user_agent!r} does not contain user_agent_token {self.user_agent_token!r}: "
                "hosts must be able to tell which robots.txt group and X-Robots-Tag scope is ours"
            )
        if self.dedup_radius < 0 or self.dedup_radius > 16:
            raise ConfigError(f"dedup_radius must be within 0-16, got {self.dedup_radius}")

    @property
    def wants_clip(self) -> bool:
        return self.clip_checkpoint is not None or self.clip_model is not None

    @property
    def clip_filtering(self) -> bool:
        return self.min_clip_score is not None or self.clip_top_fraction is not None


# Settings that only change speed or where things run: a resumed build may change them freely.
_RUNTIME_ONLY = {
    "out",
    "config",
    "processes",
    "threads",
    "distributor",
    "clip_batch_size",
    "device",
    "timeout",
    "retries",
    "user_agent",
    "reuse_downloads",  # a reused chunk holds what the same settings fetched from the same rows
}

# The output settings that decide what downloading a chunk of candidates gives (fetch bounds, resize,
# image filters): a finished chunk of another build is reused only when these match (build.reused_chunk).
DOWNLOAD_SETTINGS = (
    "allow_networks",
    "image_size",
    "resize_mode",
    "disallowed_header_directives",
    "max_image_bytes",
    "max_redirects",
    "respect_robots",
    "user_agent_token",
    "max_image_pixels",
    "min_side",
    "max_aspect",
)


def output_settings(cfg: BuildConfig) -> dict:
    """The settings that decide what the dataset contains (recorded in the manifest)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in _RUNTIME_ONLY}


def fingerprint(cfg: BuildConfig) -> str:
    """A short hash of `output_settings`: a resumed build must match it."""
    blob = json.dumps(output_settings(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
