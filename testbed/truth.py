"""Score a built dataset against the loopback web's truth file (tests, benches and the demo report).

How the figures are counted:
* junk: every image whose truth has an `expected_reject`, except the "caption describes another
  picture" kind (stage clip_score), which only a trained CLIP can catch: it is counted apart
  (`mismatched_caught`). A junk image counts as rejected when our reject has the right stage
  and a reason of the right kind (REASONS below).
* duplicates are scored per group (the original and its copies): a group is right when exactly one
  member is kept and the others are rejected by dedup; then every copy counts as rejected for the
  right reason and the original as kept, whichever member dedup chose to keep.
* clean: images with no junk, or junk that must be kept (a redirect chain, a slow response).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation import shards

# truth junk kind -> (our stage, accepted reason names)
REASONS: dict[str, tuple[str, set[str]]] = {
    "http_404": ("download", {"http_404"}),
    "http_500": ("download", {"http_error"}),
    "redirect_loop": ("download", {"redirect_loop"}),
    "broken_image": ("download", {"undecodable"}),
    "noai_header": ("download", {"noai"}),
    "small_image": ("image", {"too_small"}),
    "extreme_aspect": ("image", {"aspect_ratio"}),
    "filename_caption": ("text", {"boilerplate"}),
    "empty_caption": ("read", {"no_caption", "empty_caption"}),
    "generic_caption": ("text", {"boilerplate"}),
    "non_english": ("text", {"language"}),
    "exact_duplicate": ("dedup", {"exact_duplicate"}),
    "near_duplicate": ("dedup", {"near_duplicate", "exact_duplicate"}),
    "mismatched_caption": ("clip", {"low_clip_score"}),
    "robots_disallowed": ("crawl", {"robots"}),
}


def outcomes(out: Path) -> dict[str, list[tuple[str, str | None]]]:
    """URL -> [("kept", None) | (stage, reason name)], one entry per row with that URL."""
    found: dict[str, list[tuple[str, str | None]]] = {}
    for row in shards.read_table(out, columns=["url"]).to_pylist():
        found.setdefault(row["url"], []).append(("kept", None))
    for row in shards.read_table(
        out, columns=["url", "reject_stage", "reject_reason"], kind="rejects"
    ).to_pylist():
        found.setdefault(row["url"], []).append((row["reject_stage"], row["reject_reason"].split(":", 1)[0]))
    return found


def _right(kind: str, outcome: tuple[str, str | None] | None) -> bool:
    if outcome is None or kind not in REASONS:
        return False
    stage, names = REASONS[kind]
    return outcome[0] == stage and outcome[1] in names


def score(out: Path, truth: dict[str, Any], in_wit_only: bool = True) -> dict[str, Any]:
    """Figures of a dataset directory against a truth dict (`testbed.testweb` --truth)."""
    found = outcomes(out)
    images = {u: t for u, t in truth["images"].items() if t["in_wit"] or not in_wit_only}
    first = {u: (found[u][0] if u in found else None) for u in images}
    group_ok: dict[str, bool] = {}
    for group in truth["duplicate_groups"]:
        members = [u for u in [group["original"], *group["members"]] if u in images]
        live = [u for u in members if first[u] is not None and first[u][0] in ("kept", "dedup")]
        kept = [u for u in live if first[u][0] == "kept"]
        ok = len(kept) == 1 and all(first[u][0] == "dedup" for u in live if u not in kept)
        for u in members:
            group_ok[u] = ok and u in live
    junk = junk_right = clean = clean_kept = mismatched = mismatched_caught = 0
    misses: list[str] = []
    for url, t in images.items():
        expected = t["expected_reject"]
        kind = next((k for k in t["junk"] if truth["expected_rejects"].get(k) == expected), None)
        if expected is None:
            clean += 1
            kept = first[url] is not None and first[url][0] == "kept"
            if kept or (group_ok.get(url) and url in _originals(truth)):
                clean_kept += 1
            else:
                misses.append(f"clean {url} -> {first[url]}")
        elif expected["stage"] == "clip_score":
            mismatched += 1
            mismatched_caught += _right("mismatched_caption", first[url])
        else:
            junk += 1
            never_collected = (
                first[url] is None and expected["stage"] == "crawl"
            )  # the crawler skipped its page
            if (
                _right(kind, first[url])
                or never_collected
                or (kind in ("exact_duplicate", "near_duplicate") and group_ok.get(url))
            ):
                junk_right += 1
            else:
                misses.append(f"{kind} {url} -> {first[url]}")
    return {
        "junk": junk,
        "junk_rejected_right": junk_right,
        "junk_rejected_pct": 100.0 * junk_right / max(junk, 1),
        "clean": clean,
        "clean_kept": clean_kept,
        "clean_kept_pct": 100.0 * clean_kept / max(clean, 1),
        "mismatched": mismatched,
        "mismatched_caught": mismatched_caught,
        "misses": misses,
    }


def _originals(truth: dict[str, Any]) -> set[str]:
    return {g["original"] for g in truth["duplicate_groups"]}
