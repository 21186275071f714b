"""`make demo`: the whole chain offline on the loopback web, ending with runs/demo/report.md.

    python -m pipelines.demo --out runs/demo [--world corpus|shapes] [--pages N] [--params FILE.toml] [STAGE.KEY=VALUE ...]

`make demo` is `--world corpus` (the default), `make demo-shapes` `--world shapes --out runs/demo-shapes`.

1. starts the loopback test web in this process and writes its WIT TSV and truth file: generated
   coloured shapes (`--world shapes`), or the real emoji and icons of the npm corpus (`--world corpus`:
   fetched into the cache once, then offline; the held-out style and concepts are never served);
2. runs the `end-to-end` flow (Prefect, temporary local API): build round 1 -> train the demo
   CLIP -> evaluate zero-shot and retrieval -> build round 2 keeping the pairs the trained model
   scores best -> sketch one picture (clipasso) -> train, index and search videos (clip4clip);
3. writes report.md with the figures of this run and prints where everything is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common.errors import UserError, one_line
from pipelines.runtime import apply_env_defaults, start_temporary_api

apply_env_defaults()  # before Prefect reads its settings

PARAMS_DIR = Path(__file__).parent / "params"
# Per world: the params file, the training preset (training/presets) and the default number of pages.
WORLDS = {
    "shapes": {"params": PARAMS_DIR / "demo.toml", "preset": "demo", "pages": 600},
    "corpus": {
        "params": PARAMS_DIR / "demo_corpus.toml",
        "preset": "corpus",
        "pages": 1800,
    },  # 1800: docs/corpus.md, runs W1-W6
}
DEMO_PARAMS = WORLDS["shapes"]["params"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description="Run the whole chain offline on the loopback web and write OUT/report.md.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="run directory (default: runs/demo)"
    )
    parser.add_argument(
        "--world",
        choices=sorted(WORLDS),
        default="corpus",
        help="what the loopback web shows: the real emoji and icon corpus (default, `make demo`; "
        "testbed.corpus, fetched from the npm registry the first time), or generated coloured shapes "
        "(`make demo-shapes`: nothing to fetch, adds the coop and actionclip steps)",
    )
    parser.add_argument(
        "--pages",
        type=int,
        default=None,
        help="pages of the test web (~7 pictures each; default: 600 shapes, 1800 corpus)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the test web (default: 0)")
    parser.add_argument(
        "--params",
        type=Path,
        default=None,
        help="params file (default: pipelines/params/demo.toml, demo_corpus.toml for --world corpus)",
    )
    parser.add_argument("overrides", nargs="*", metavar="STAGE.KEY=VALUE", help="e.g. train.steps=100")
    return parser


def site_options(world: str) -> Any:
    """The test web's options for a world; the corpus is fetched into its cache first (offline once cached)."""
    from testbed.testweb import SiteOptions

    if world == "shapes":
        return SiteOptions()
    from testbed.corpus import PACKAGES, fetch, load_corpus
    from testbed.corpus_web import CorpusWorld

    started = time.perf_counter()
    fetch()
    print(f"corpus: cached ({time.perf_counter() - started:.1f} s)")
    return SiteOptions(world=CorpusWorld(load_corpus(require=list(PACKAGES))))


def start_web(out: Path, pages: int, seed: int, world: str = "shapes") -> tuple[Any, Path, Path, dict]:
    """Serve the generated site on 127.0.0.1 (a free port) and write its WIT TSV and truth file."""
    from testbed.testweb import build_site, serve

    started = time.perf_counter()
    site = build_site(pages, seed, site_options(world))
    server = serve(site, "127.0.0.1", 0).start()
    web_dir = out / "web"
    web_dir.mkdir(parents=True, exist_ok=True)
    wit, truth = web_dir / "site.tsv", web_dir / "truth.json"
    rows = site.write_wit(wit, server.base_url)
    site.write_truth(truth, server.base_url)
    info = {
        "url": server.base_url,
        "world": world,
        "pages": pages,
        "images": len(site.images),
        "junk": sum(1 for i in site.images if i.junk),
        "line_drawings": sum(1 for i in site.images if i.style == "outline"),
        "wit_rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"test web: {server.base_url} ({info['images']} pictures, {info['junk']} junk); WIT TSV {wit}")
    return server, wit, truth, info


def curation_quality(dataset: Path, truth_path: Path) -> dict | None:
    """Against the truth file: junk rejected for the right reason, mismatched captions, clean pairs kept.

    Duplicates are scored per group (testbed/truth.py): dedup may keep any one member of a group.
    """
    from testbed.truth import score

    try:
        figures = score(dataset, json.loads(truth_path.read_text()))
    except Exception as exc:  # noqa: BLE001 - the report says why the figure is missing
        return {"error": f"{type(exc).__name__}: {exc}"}
    figures["mismatched_rejected_pct"] = 100.0 * figures["mismatched_caught"] / max(1, figures["mismatched"])
    figures.pop("misses")
    return figures


def _rel(path: Any, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except (TypeError, ValueError):
        return str(path)


def _counts_table(summary: dict) -> list[str]:
    lines = ["| stage | reason | rows |", "|---|---|---|"]
    for stage, reasons in sorted(summary.get("counts", {}).items()):
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {stage} | {reason} | {n} |")
    return lines


def _build_section(lines: list[str], title: str, build: dict | None, out: Path, truth: Path) -> None:
    if not build:
        return
    summary = build["summary"]
    lines += [f"## {title}", ""]
    lines += [
        f"Kept **{summary['kept']}** pairs, rejected {summary['rejected']} (`{_rel(summary['out'], out)}`).",
        "",
    ]
    quality = curation_quality(Path(summary["out"]), truth)
    if quality and "error" not in quality:
        lines += [
            f"Against the truth file: {quality['junk_rejected_pct']:.1f} % of {quality['junk']} junk pictures "
            f"rejected; {quality['mismatched_rejected_pct']:.1f} % of {quality['mismatched']} pairs whose caption "
            f"describes another picture rejected (only a CLIP score can); "
            f"{quality['clean_kept_pct']:.1f} % of {quality['clean']} clean pairs kept.",
            "",
        ]
    lines += _counts_table(summary) + [""]
    if summary.get("contact_sheet"):
        lines += [f"![contact sheet]({_rel(summary['contact_sheet'], out)})", ""]


def _figure_lines(figures: dict, out: Path) -> list[str]:
    """An app demo's figures as a list; pictures it wrote are shown."""
    lines = []
    for key, value in figures.items():
        text = str(value)
        if text.endswith(".png") and Path(text).exists():
            lines.append(f"![{key}]({_rel(text, out)})")
        elif isinstance(value, float):
            lines.append(f"- {key}: {value:.4g}")
        elif isinstance(value, dict):
            lines.append(
                f"- {key}: "
                + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
            )
        else:
            lines.append(f"- {key}: `{text}`" if "/" in text else f"- {key}: {text}")
    return lines


def _web_paragraph(web: dict) -> str:
    junk = (
        f"{web['junk']} of them injected junk (broken bytes, 404/500, redirect loops, tiny images, "
        "duplicates, file-name captions, other languages, noai headers...). WIT TSV: `web/site.tsv`, "
        "truth: `web/truth.json`."
    )
    if web.get("world") == "corpus":
        return (
            f"{web['pages']} pages at {web['url']} with {web['images']} real emoji and icons from the npm "
            "registry (Noto, Apple, Facebook, OpenMoji colour and line art, Tabler icons), named and "
            "described with their authors' names and keywords, one page in eight in another language; the "
            f"twitter style and 5 % of the concepts are never served (held out for evaluation); {junk}"
        )
    return (
        f"{web['pages']} generated pages at {web['url']} with {web['images']} pictures of coloured shapes "
        f"({web.get('line_drawings', 0)} drawn as pen outlines, so the model learns line drawings too), {junk}"
    )


def write_report(out: Path, web: dict, result: dict, truth: Path, seconds: float) -> Path:
    """runs/demo/report.md: every number from this run, pictures next to it."""
    from pipelines.artifacts import markdown_table

    lines = [
        "# CLIP workbench demo",
        "",
        f"The whole chain, offline, in {seconds / 60:.1f} minutes: loopback web -> curated dataset -> "
        "trained CLIP -> evaluation -> CLIP-filtered dataset -> apps.",
        "",
        "## 1. The loopback web",
        "",
        _web_paragraph(web),
        "",
    ]
    _build_section(lines, "2. Round 1: curated build", result.get("round1"), out, truth)
    train = result.get("train")
    if train:
        lines += [
            "## 3. Training",
            "",
            markdown_table(
                [
                    {
                        "steps": train.get("steps"),
                        "final loss": train.get("final_loss"),
                        "samples/s": train.get("samples_per_s"),
                        "data wait": train.get("data_wait_fraction"),
                        "minutes": (train.get("seconds") or 0) / 60,
                    }
                ]
            ),
            f"Checkpoint: `{_rel(train.get('checkpoint'), out)}`",
            "",
        ]
        loss_png = Path(train.get("run_dir", out / "train")) / "loss.png"
        if loss_png.exists():
            lines += [f"![loss curve]({_rel(loss_png, out)})", ""]
    evaluation = result.get("evaluate")
    if evaluation:
        from training.evaluate import markdown_table as eval_table

        heldout = (
            "the held-out twitter style, never served: 100 concepts drawn in every style; retrieval "
            "against their names; linear probe on the 100 concepts in 6 styles"
            if web.get("world") == "corpus"
            else "held-out generated pictures, unseen seed"
        )
        lines += [f"## 4. Evaluation ({heldout})", "", eval_table(evaluation), ""]
        if result.get("evaluate_categories"):
            lines += [
                "Category level: the held-out style's pictures of every trained emoji, classified "
                "into their 9 emoji groups:",
                "",
                eval_table(result["evaluate_categories"]),
                "",
            ]
    _build_section(
        lines,
        "5. Round 2: the same sources, filtered by the trained model's CLIP score (round 1's downloads reused)",
        result.get("round2"),
        out,
        truth,
    )
    sketch = result.get("clipasso")
    if sketch:
        lines += ["## 6. apps.clipasso: one picture sketched with the trained model", ""]
        for path in sketch.values():
            if str(path).endswith((".png", ".gif")):
                lines.append(f"![{Path(path).name}]({_rel(path, out)})")
        lines += [""] + [f"- `{_rel(p, out)}`" for p in sketch.values()] + [""]
    gallery = result.get("clipasso_gallery")
    if gallery:
        lines += [
            f"The {gallery['pictures']} real pictures (skimage's photos and line icons of held-out concepts), "
            f"{gallery['strokes']} strokes each, sketched in {gallery['seconds']} s. The sketch is closest to "
            f"its own source for {100 * gallery['own_source_closest_fraction']:.0f} % of them by the model "
            "that drew them (a second model's verdict: `bench/clipasso_corpus.py`, docs/corpus.md); "
            f"{100 * gallery['beats_random_fraction']:.0f} % have a lower loss than random strokes.",
            "",
            f"![clipasso gallery]({_rel(gallery['sheet'], out)})",
            "",
        ]
    video = result.get("clip4clip")
    if video:
        corpus = web.get("world") == "corpus"
        what = "real emoji moving (test videos in the held-out style)" if corpus else "synthetic videos"
        lines += [f"## 7. apps.clip4clip: search {what} with the trained model", ""]
        report_md = out / "apps" / "clip4clip" / "report.md"
        if report_md.exists():
            text = report_md.read_text().split("\n", 1)[-1].replace("\n## ", "\n### ")
            lines += [text.strip(), ""]
        lines += [f"Result page: `{_rel(out / 'apps' / 'clip4clip' / 'search.html', out)}`", ""]
    titles = {
        "coop": "apps.coop: learned prompts (CoOp, CoCoOp) on 12 fine-grained colours, CLIP frozen",
        "actionclip": "apps.actionclip: action recognition on generated videos",
        "search": "apps.search: the curated dataset as a CLIP search service",
    }
    for number, app in enumerate((a for a in titles if result.get(a)), start=8):
        lines += [f"## {number}. {titles[app]}", "", *_figure_lines(result[app], out), ""]
    for stage, why in result.get("skipped", {}).items():
        lines.append(f"- {stage}: skipped ({why})")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def training_preset(name: str) -> dict[str, Any]:
    """The training library's preset for the demo model (one definition of the demo's training)."""
    from common.settings import read_toml
    from training.config import PRESET_DIR

    path = PRESET_DIR / f"{name}.toml"
    return read_toml(path) if path.exists() else {}


def run_demo(
    out: Path,
    pages: int | None,
    seed: int,
    params_file: Path | None,
    overrides: list[str],
    world: str = "shapes",
) -> Path:
    """Start the web, run the end-to-end flow, write the report; returns report.md."""
    from pipelines.flows import end_to_end_flow, flow_parameters
    from pipelines.params import load_flow_params

    started = time.perf_counter()
    if (out / "result.json").exists() or (out / "web" / "site.tsv").exists():
        # A new run serves the web on a new port: every URL is new, so building into the old datasets
        # would add a second version of the same pictures. The demo starts clean instead.
        print(f"removing the previous demo run in {out}", file=sys.stderr)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    choice = WORLDS[world]
    api_started = start_temporary_api()  # on the core the test web's build leaves free
    server, wit, truth, web = start_web(out, pages or choice["pages"], seed, world)
    try:
        api_started()
        params = load_flow_params(
            "end-to-end",
            params_file or choice["params"],
            [f"chain.out={out}", f"chain.world={world}", f"build.source=wit:{wit}", *overrides],
            stage_defaults={"train": training_preset(choice["preset"])},
        )
        result = end_to_end_flow(**flow_parameters(params))
    finally:
        server.stop()
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return write_report(out, web, result, truth, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.pages is not None and args.pages < 1:
        print(f"error: --pages {args.pages}: must be at least 1", file=sys.stderr)
        return 2
    try:
        report = run_demo(args.out, args.pages, args.seed, args.params, args.overrides, args.world)
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    from training.evaluate import SUBCLASS_PROMPTS, via_subclasses  # torch is loaded by now: the demo ran

    result = json.loads((args.out / "result.json").read_text())
    print("\ndemo finished:")
    print(f"  report        {report}")
    for name in ("round1", "round2"):
        if result.get(name):
            s = result[name]["summary"]
            print(f"  {name} data   {s['out']} ({s['kept']} pairs kept, {s['rejected']} rejected)")
    if result.get("train"):
        print(f"  checkpoint    {result['train'].get('checkpoint')}")
    for key, label in (("evaluate", "zero-shot"), ("evaluate_categories", "categories")):
        z = (result.get(key) or {}).get("zeroshot", {})
        if z:
            print(
                f"  {label:<13} {100 * z['single']['top1']:.1f} % (single prompt), "
                f"{100 * z['ensemble']['top1']:.1f} % (ensemble), {100 * z['name']['top1']:.1f} % (name alone) "
                f"over {z.get('classes', 36)} classes"
            )
        via = {kind: z.get(via_subclasses(kind)) for kind in SUBCLASS_PROMPTS}
        if all(via.values()):
            figures = " / ".join(f"{100 * v['top1']:.1f}" for v in via.values())
            print(
                f"  {'':<13} {figures} % (single / 7 prompts / name alone) through the "
                f"{z['subclass_names']} concept names they hold"
            )
    for path in (result.get("clipasso") or {}).values():
        if str(path).endswith(".svg"):
            print(f"  sketch        {path}")
    if result.get("clip4clip"):
        print(f"  video search  {args.out / 'apps' / 'clip4clip' / 'search.html'}")
    if result.get("coop"):
        print(f"  coop          {result['coop'].get('coop_png')}")
    if result.get("actionclip"):
        print(f"  actionclip    {args.out / 'apps' / 'actionclip'}")
    if result.get("search"):
        print(f"  search        {result['search'].get('serve_command')}   (then open the page it prints)")
    for stage, why in result.get("skipped", {}).items():
        print(f"  {stage}: skipped ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
