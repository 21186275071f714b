"""A real offline corpus: emoji and icon sets drawn and named by people, from the npm registry.

    python -m testbed.corpus fetch            # all packages (~350 MB of tarballs, unpacked selectively)
    python -m testbed.corpus fetch --small    # only openmoji, @tabler/icons and emojibase-data (~12 MB)
    python -m testbed.corpus info             # what is cached: packages, styles, concepts, render failures

Pinned package versions (`PACKAGES`) are fetched with `npm pack NAME@VERSION` where npm exists, else
straight from the registry (the tarball address its metadata gives, with httpx), checked against the
pinned sha512 `dist.integrity` (which the registry metadata must also give), and unpacked into the cache
folder (`$CLIP_CORPUS_DIR`, default `~/.cache/clip-workbench/corpus`): each package is unpacked into a
temporary folder beside its final place and renamed when complete, so a half-unpacked folder is never
trusted (leftovers are removed by the next fetch). After the first fetch everything is offline.

What is in it (`load_corpus()` -> `Corpus`):
- concepts (`Concept`): one per emoji (emojibase-data's English CLDR label, tags, group and subgroup,
  localised labels in `LANGUAGES`; emoji-datasource's name and short names) and one per Tabler icon
  (name, category, tags). Skin-tone variants are left out: they are the same concept.
- pictures (`Picture`): one per concept and style. Styles: `google`, `twitter`, `apple`, `facebook`
  (emoji-datasource 64 px PNGs), `openmoji-color`, `openmoji-black` (line art), `tabler-outline`,
  `tabler-filled` (SVG). SVGs are rendered with cairosvg on white at the size asked for and cached;
  an SVG that fails to render is recorded (`render-failures.json`) and skipped, never fatal.

Licences: emoji-datasource-* and @tabler/icons are MIT; emojibase-data is MIT; OpenMoji is CC BY-SA 4.0.
The pictures are fetched at set-up and never committed.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from common.atomic import atomic_write_bytes, atomic_write_json, file_lock
from common.errors import UserError, run_cli

REGISTRY = "https://registry.npmjs.org"
FETCH_COMMAND = "python -m testbed.corpus fetch"
LANGUAGES = ("de", "fr", "es", "it", "nl", "pt")  # localised labels kept from emojibase-data
DATASOURCE_STYLES = ("google", "twitter", "apple", "facebook")


class CorpusError(UserError, RuntimeError):
    """The corpus cannot be fetched, verified or read; the message names the package and the fix."""


@dataclass(frozen=True)
class Package:
    """One pinned npm package and the parts of its tarball we unpack (paths under `package/`)."""

    name: str
    version: str
    integrity: str  # the registry's dist.integrity for this version (sha512, base64)
    members: tuple[str, ...]  # regular expressions over member paths inside `package/`
    licence: str
    small: bool = False  # part of the small slice tests fetch

    @property
    def folder(self) -> str:
        return f"{self.name.replace('/', '+').lstrip('@')}-{self.version}"


def _datasource(style: str, integrity: str) -> Package:
    return Package(
        f"emoji-datasource-{style}", "16.0.0", integrity, ("emoji\\.json", f"img/{style}/64/.*\\.png"), "MIT"
    )


PACKAGES: dict[str, Package] = {
    p.name: p
    for p in (
        Package(
            "emojibase-data",
            "17.0.0",
            "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA==",
            ("(en|" + "|".join(LANGUAGES) + ")/(data|messages)\\.json", "LICENSE"),
            "MIT",
            small=True,
        ),
        Package(
            "openmoji",
            "17.0.0",
            "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w==",
            ("data/openmoji\\.csv", "(color|black)/svg/.*\\.svg", "LICENSE\\.txt"),
            "CC BY-SA 4.0",
            small=True,
        ),
        Package(
            "@tabler/icons",
            "3.52.0",
            "sha512-dldKlJNfO/gZnGLcIY0X2EFFKIMGwL/rEvTqglvBgAPFiwj9pZOCN5V3Sf0Gyjq6foX4VQmLdOmsS4w5FdWKAw==",
            ("icons\\.json", "icons/(outline|filled)/.*\\.svg", "LICENSE"),
            "MIT",
            small=True,
        ),
        _datasource(
            "google",
            "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
        ),
        _datasource(
            "twitter",
            "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
        ),
        _datasource(
            "apple",
            "sha512-dVYjsK0FnCry9F+PBtnivhG2K0xdwlmqYaSgiUtztUdAGPYiHYhZcVKvNBqC791g2qyEcFNTBO6utg4eQ3uLTw==",
        ),
        _datasource(
            "facebook",
            "sha512-b9ZxJdB7nMWGckH1vyCjPSosaa6MJYuojPPFiQ0LmDIZS8vlG454XKcmTFKrXIMAA72O4MRJMYFhvWI8pjyciQ==",
        ),
    )
}
SMALL = tuple(name for name, p in PACKAGES.items() if p.small)


def default_cache() -> Path:
    """`$CLIP_CORPUS_DIR`, else ~/.cache/clip-workbench/corpus."""
    env = os.environ.get("CLIP_CORPUS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clip-workbench" / "corpus"


def registry_url() -> str:
    """`$CLIP_CORPUS_REGISTRY` (an npm registry mirror), else the public npm registry."""
    return os.environ.get("CLIP_CORPUS_REGISTRY", REGISTRY).rstrip("/")


# --- fetch -------------------------------------------------------------------------------------------


def sri_sha512(data: bytes) -> str:
    """Subresource-integrity string of `data`, as npm writes `dist.integrity`."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def package_dir(package: Package, cache: Path) -> Path:
    return Path(cache) / "packages" / package.folder


def is_cached(package: Package, cache: Path) -> bool:
    # The final folder only ever appears by a rename of a complete unpack, so its existence is the check.
    return (package_dir(package, cache) / ".integrity").is_file()


def _retry_hint(package: Package) -> str:
    flag = " --small" if package.small else ""
    return f"check the network, then run `{FETCH_COMMAND}{flag}` again"


def _download_http(package: Package, registry: str, timeout_s: float) -> bytes:
    import httpx

    meta_url = f"{registry}/{package.name.replace('/', '%2F')}/{package.version}"
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:
            meta = client.get(meta_url)
            if meta.status_code != 200:
                raise CorpusError(
                    f"{package.name}@{package.version}: the registry answered HTTP {meta.status_code} "
                    f"for {meta_url}; {_retry_hint(package)}"
                )
            dist = meta.json().get("dist", {})
            if dist.get("integrity") != package.integrity:
                raise CorpusError(
                    f"{package.name}@{package.version}: the registry's dist.integrity "
                    f"{dist.get('integrity')!r} is not the pinned {package.integrity!r}; "
                    "the package was republished or the registry is not the real one"
                )
            tarball = client.get(dist["tarball"])
            if tarball.status_code != 200:
                raise CorpusError(
                    f"{package.name}@{package.version}: HTTP {tarball.status_code} for {dist['tarball']}; "
                    f"{_retry_hint(package)}"
                )
            return tarball.content
    except httpx.HTTPError as exc:
        raise CorpusError(
            f"{package.name}@{package.version}: registry {registry} unreachable "
            f"({type(exc).__name__}: {exc}); {_retry_hint(package)}"
        ) from exc
    except (ValueError, KeyError) as exc:
        raise CorpusError(
            f"{package.name}@{package.version}: {meta_url} is not npm registry metadata ({exc}); "
            "is $CLIP_CORPUS_REGISTRY an npm registry?"
        ) from exc


def _download_npm(package: Package, registry: str, npm: str, timeout_s: float) -> bytes:
    with tempfile.TemporaryDirectory(prefix="corpus-npm-") as tmp:
        cmd = [npm, "pack", f"{package.name}@{package.version}", "--json", "--silent"]
        cmd += ["--pack-destination", tmp, "--registry", registry + "/"]
        try:
            done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout_s * 10)
        except subprocess.TimeoutExpired as exc:
            raise CorpusError(
                f"{package.name}@{package.version}: `npm pack` did not finish in {timeout_s * 10:.0f} s; "
                f"{_retry_hint(package)}"
            ) from exc
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise CorpusError(
                f"{package.name}@{package.version}: `npm pack` failed against {registry} ({last}); "
                f"{_retry_hint(package)}"
            )
        return tarballs[0].read_bytes()


def download(
    package: Package, registry: str | None = None, method: str = "auto", timeout_s: float = 60
) -> bytes:
    """The package's tarball bytes, verified against its pinned integrity."""
    registry = (registry or registry_url()).rstrip("/")
    npm = shutil.which("npm") if method in ("auto", "npm") else None
    if method == "npm" and npm is None:
        raise CorpusError("--method npm: npm is not installed here; use --method http")
    data = (
        _download_npm(package, registry, npm, timeout_s)
        if npm
        else _download_http(package, registry, timeout_s)
    )
    got = sri_sha512(data)
    if got != package.integrity:
        raise CorpusError(
            f"{package.name}@{package.version}: tarball integrity mismatch (got {got[:30]}..., pinned "
            f"{package.integrity[:30]}...); nothing was unpacked. Retry `{FETCH_COMMAND}`; if it persists "
            "the registry or a proxy serves other bytes"
        )
    return data


def unpack(package: Package, data: bytes, cache: Path) -> Path:
    """Unpack the wanted members beside the final folder, then rename it into place (atomic)."""
    final = package_dir(package, cache)
    final.parent.mkdir(parents=True, exist_ok=True)
    wanted = [re.compile(f"package/(?:{m})") for m in package.members]
    partial = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and any(w.fullmatch(m.name) for w in wanted)]
            if not members:
                raise CorpusError(
                    f"{package.name}@{package.version}: none of {package.members} in the tarball"
                )
            tar.extractall(partial, members=members, filter="data")
        (partial / ".integrity").write_text(package.integrity + "\n")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def remove_partial(cache: Path) -> list[Path]:
    """Delete half-unpacked folders a killed fetch left behind; returns what was removed."""
    root = Path(cache) / "packages"
    stale = sorted(root.glob(".*.partial-*")) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def fetch(
    names: Iterable[str] | None = None,
    cache: Path | None = None,
    registry: str | None = None,
    method: str = "auto",
    progress: bool = True,
) -> dict[str, dict]:
    """Fetch, verify and unpack the named packages (default: all) that are not cached yet.

    Returns {name: {"cached": bool, "seconds": float, "bytes": int}}.
    """
    cache = Path(cache or default_cache())
    names = list(names or PACKAGES)
    unknown = [n for n in names if n not in PACKAGES]
    if unknown:
        raise CorpusError(f"unknown corpus package(s) {unknown}; known: {', '.join(PACKAGES)}")
    cache.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict] = {}
    with file_lock(cache / ".fetch.lock"):
        remove_partial(cache)
        for name in names:
            package = PACKAGES[name]
            if is_cached(package, cache):
                report[name] = {"cached": True, "seconds": 0.0, "bytes": 0}
                continue
            start = time.monotonic()
            if progress:
                print(f"fetching {name}@{package.version} ...", file=sys.stderr, flush=True)
            data = download(package, registry, method)
            unpack(package, data, cache)
            report[name] = {"cached": False, "seconds": time.monotonic() - start, "bytes": len(data)}
    return report


# --- the concept table -------------------------------------------------------------------------------


@dataclass
class Concept:
    """A thing with a name: one emoji (all its drawings share it) or one icon."""

    id: str  # "emoji:1F431" (hexcode without FE0F) or "icon:cat"
    kind: str  # "emoji" or "icon"
    name: str  # English label, lower case ("cat face", "bicycle")
    group: str  # emoji group / icon category in words ("animals & nature", "vehicles")
    subgroup: str  # emoji subgroup in words ("animal mammal"); icons: the category again
    tags: list[str] = field(default_factory=list)
    short_names: list[str] = field(default_factory=list)
    annotation: str = ""  # OpenMoji's CLDR annotation where it has one
    localised: dict[str, str] = field(default_factory=dict)  # language -> label
    localised_section: dict[str, str] = field(default_factory=dict)  # language -> "group: subgroup"


@dataclass(frozen=True)
class Picture:
    concept: str
    style: str
    path: str  # relative to the cache folder; .png or .svg


def _hexkey(code: str) -> str:
    return "-".join(p for p in code.upper().split("-") if p != "FE0F")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorpusError(
            f"{path}: unreadable ({exc}); delete its package folder and run `{FETCH_COMMAND}`"
        ) from exc


def _emojibase(root: Path) -> dict[str, Concept]:
    base = root / "package"
    messages = _read_json(base / "en" / "messages.json")
    groups = {g["order"]: g["message"] for g in messages["groups"]}
    subgroups = {g["order"]: g["key"].replace("-", " ") for g in messages["subgroups"]}
    concepts: dict[str, Concept] = {}
    for row in _read_json(base / "en" / "data.json"):
        if "group" not in row or row.get("group") == 2:  # 2: skin-tone components
            continue
        key = _hexkey(row["hexcode"])
        concepts[key] = Concept(
            id=f"emoji:{key}", kind="emoji", name=row["label"].lower(), group=groups.get(row["group"], ""),
            subgroup=subgroups.get(row.get("subgroup"), ""), tags=list(row.get("tags", [])),
        )  # fmt: skip
    for lang in LANGUAGES:
        path = base / lang / "data.json"
        if not path.exists():
            continue
        names = _read_json(base / lang / "messages.json")
        local_groups = {g["order"]: g["message"] for g in names["groups"]}
        local_subgroups = {g["order"]: g["message"] for g in names["subgroups"]}
        for row in _read_json(path):
            concept = concepts.get(_hexkey(row["hexcode"]))
            if concept is not None and row.get("label"):
                concept.localised[lang] = row["label"]
                group, subgroup = local_groups.get(row.get("group")), local_subgroups.get(row.get("subgroup"))
                if group and subgroup:
                    concept.localised_section[lang] = f"{group}: {subgroup}"
    return concepts


def build_table(cache: Path | None = None) -> tuple[dict[str, Concept], list[Picture]]:
    """Concepts and pictures from whatever packages are cached (emojibase-data is required for emoji)."""
    cache = Path(cache or default_cache())
    concepts: dict[str, Concept] = {}
    pictures: list[Picture] = []
    by_hex: dict[str, Concept] = {}
    base = PACKAGES["emojibase-data"]
    if is_cached(base, cache):
        by_hex = _emojibase(package_dir(base, cache))
        concepts.update({c.id: c for c in by_hex.values()})

    om = PACKAGES["openmoji"]
    if is_cached(om, cache) and by_hex:
        root = package_dir(om, cache) / "package"
        with open(root / "data" / "openmoji.csv", encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                concept = by_hex.get(_hexkey(row["hexcode"]))
                if concept is None or row.get("skintone"):
                    continue
                concept.annotation = row.get("annotation", "")
                for style, folder in (("openmoji-color", "color"), ("openmoji-black", "black")):
                    svg = root / folder / "svg" / f"{row['hexcode']}.svg"
                    if svg.exists():
                        pictures.append(Picture(concept.id, style, str(svg.relative_to(cache))))

    for style in DATASOURCE_STYLES:
        ds = PACKAGES[f"emoji-datasource-{style}"]
        if not (is_cached(ds, cache) and by_hex):
            continue
        root = package_dir(ds, cache) / "package"
        for row in _read_json(root / "emoji.json"):
            concept = by_hex.get(_hexkey(row["unified"]))
            if concept is None or not row.get(f"has_img_{style}"):
                continue
            if not concept.short_names:
                concept.short_names = [s.replace("_", " ") for s in row.get("short_names", [])]
            png = root / "img" / style / "64" / row["image"]
            if png.exists():
                pictures.append(Picture(concept.id, style, str(png.relative_to(cache))))

    tabler = PACKAGES["@tabler/icons"]
    if is_cached(tabler, cache):
        root = package_dir(tabler, cache) / "package"
        for name, meta in _read_json(root / "icons.json").items():
            category = (meta.get("category") or "other").lower()
            concept = Concept(
                id=f"icon:{name}", kind="icon", name=name.replace("-", " "), group=category, subgroup=category,
                tags=[str(t) for t in meta.get("tags", [])],
            )  # fmt: skip
            for style in ("outline", "filled"):
                svg = root / "icons" / style / f"{name}.svg"
                if style in meta.get("styles", {}) and svg.exists():
                    pictures.append(Picture(concept.id, f"tabler-{style}", str(svg.relative_to(cache))))
                    concepts[concept.id] = concept
    used = {p.concept for p in pictures}
    concepts = {cid: c for cid, c in concepts.items() if cid in used}
    return concepts, pictures


# --- rendering ---------------------------------------------------------------------------------------


def _on_white(image: Image.Image) -> Image.Image:
    image = image.convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, image).convert("RGB")


class RenderError(CorpusError):
    """An SVG that cairosvg cannot render (recorded and skipped by callers)."""


def render_svg(svg: bytes, size: int, source: str = "svg") -> Image.Image:
    """An SVG rendered by cairosvg to a `size` x `size` RGB picture on white."""
    import cairosvg

    try:
        png = cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size)
        return _on_white(Image.open(io.BytesIO(png)))
    except Exception as exc:  # cairosvg raises anything from XML, CSS or cairo: all mean "cannot render"
        raise RenderError(f"{source}: cairosvg cannot render it ({type(exc).__name__}: {exc})") from exc


@dataclass
class Corpus:
    """The cached corpus: concept table, pictures, and picture loading with a render cache."""

    cache: Path
    concepts: dict[str, Concept]
    pictures: list[Picture]
    failures: dict[str, str] = field(default_factory=dict)  # picture path -> why it did not render

    @property
    def styles(self) -> list[str]:
        return sorted({p.style for p in self.pictures})

    def by_style(self, style: str) -> dict[str, Picture]:
        return {p.concept: p for p in self.pictures if p.style == style}

    def image(self, picture: Picture, size: int) -> Image.Image | None:
        """The picture as RGB on white at `size` px, or None if it failed to render (recorded)."""
        if picture.path in self.failures:
            return None
        source = self.cache / picture.path
        if source.suffix == ".png":
            with Image.open(source) as im:
                image = _on_white(im)
            return image if image.size == (size, size) else image.resize((size, size), Image.LANCZOS)
        rendered = self.cache / "render" / str(size) / Path(picture.path).with_suffix(".png")
        if rendered.exists():
            with Image.open(rendered) as im:
                return im.convert("RGB")
        try:
            image = render_svg(source.read_bytes(), size, str(source))
        except (RenderError, OSError) as exc:
            self.failures[picture.path] = str(exc)
            self._save_failures()
            return None
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        atomic_write_bytes(rendered, buffer.getvalue())
        return image

    def restricted(self, concept_ids: Iterable[str], styles: Iterable[str] | None = None) -> Corpus:
        """The same cache limited to some concepts and styles (a small slice for tests); shares the failures."""
        keep, kept_styles = set(concept_ids), set(styles) if styles is not None else None
        pictures = [
            p for p in self.pictures if p.concept in keep and (kept_styles is None or p.style in kept_styles)
        ]
        concepts = {cid: c for cid, c in self.concepts.items() if cid in keep}
        return Corpus(self.cache, concepts, pictures, self.failures)

    def _save_failures(self) -> None:
        atomic_write_json(self.cache / "render-failures.json", self.failures)


def load_corpus(cache: Path | None = None, require: Sequence[str] = SMALL) -> Corpus:
    """The cached corpus; `require` names packages that must be there (CorpusError naming the fetch)."""
    cache = Path(cache or default_cache())
    missing = [n for n in require if not is_cached(PACKAGES[n], cache)]
    if missing:
        small = set(missing) <= set(SMALL)
        raise CorpusError(
            f"corpus cache {cache} lacks {', '.join(missing)}; run `{FETCH_COMMAND}{' --small' if small else ''}` "
            "(or set $CLIP_CORPUS_DIR to a cache that has them)"
        )
    concepts, pictures = build_table(cache)
    failures_path = cache / "render-failures.json"
    failures = _read_json(failures_path) if failures_path.exists() else {}
    return Corpus(cache, concepts, pictures, failures)


def concept_text(concept: Concept) -> str:
    """The concept's English name as a class name for zero-shot ("cat face", "bicycle")."""
    return concept.name


def info(cache: Path | None = None) -> dict:
    """What the cache holds: packages, pictures per style, concepts per kind, render failures."""
    cache = Path(cache or default_cache())
    packages = {n: is_cached(p, cache) for n, p in PACKAGES.items()}
    concepts, pictures = build_table(cache) if any(packages.values()) else ({}, [])
    styles: dict[str, int] = {}
    for p in pictures:
        styles[p.style] = styles.get(p.style, 0) + 1
    kinds: dict[str, int] = {}
    for c in concepts.values():
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    failures_path = cache / "render-failures.json"
    return {
        "cache": str(cache),
        "packages": packages,
        "pictures_per_style": styles,
        "concepts": kinds,
        "render_failures": len(_read_json(failures_path)) if failures_path.exists() else 0,
    }


def write_table(corpus: Corpus, path: Path) -> Path:
    """The concept table as JSON lines: one row per picture, with its concept's fields."""
    lines = []
    for p in corpus.pictures:
        row = asdict(corpus.concepts[p.concept])
        row.update({"concept": p.concept, "style": p.style, "path": p.path})
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


# --- command line ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.corpus",
        description="Fetch and inspect the offline emoji/icon corpus (npm packages, pinned and verified).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_p = sub.add_parser("fetch", help="fetch, verify and unpack the pinned packages not cached yet")
    fetch_p.add_argument("packages", nargs="*", help=f"package names (default: all): {', '.join(PACKAGES)}")
    fetch_p.add_argument("--small", action="store_true", help=f"only the small ones: {', '.join(SMALL)}")
    fetch_p.add_argument(
        "--method", choices=("auto", "npm", "http"), default="auto",
        help="npm pack (auto: when npm is installed) or plain HTTP from the registry metadata",
    )  # fmt: skip
    info_p = sub.add_parser("info", help="what the cache holds")
    info_p.add_argument("--table", type=Path, help="also write the concept table (JSON lines) here")
    for p in (fetch_p, info_p):
        p.add_argument("--cache", type=Path, default=None, help="cache folder (default: $CLIP_CORPUS_DIR or "
                       "~/.cache/clip-workbench/corpus)")  # fmt: skip
    args = parser.parse_args(argv)

    def body() -> None:
        if args.command == "fetch":
            names = args.packages or (list(SMALL) if args.small else None)
            start = time.monotonic()
            report = fetch(names, args.cache, method=args.method)
            for name, r in report.items():
                state = (
                    "cached" if r["cached"] else f"fetched {r['bytes'] / 1e6:.1f} MB in {r['seconds']:.1f} s"
                )
                print(f"{name}: {state}")
            print(f"corpus ready in {args.cache or default_cache()} ({time.monotonic() - start:.1f} s)")
        else:
            summary = info(args.cache)
            print(json.dumps(summary, indent=1))
            if args.table:
                write_table(load_corpus(args.cache, require=()), args.table)
                print(f"wrote the concept table to {args.table}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
