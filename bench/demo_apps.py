"""The demo's apps on its trained model: time and peak memory, with the sketch encoders' hooks taken off or left.

    python -m bench.demo_apps [--rounds 2] [--run runs/demo]

Runs `pipelines.flows.run_apps` as `make demo` runs it after training (CLIPasso on chelsea, the 10-picture
gallery, clip4clip on real emoji moving, the search app; side by side, one torch thread each) on the
model and round 1 of a finished demo run (`--run`, default runs/demo), each side in a fresh process:
- `default`: as the apps run now: each sketch's encoder takes its forward hooks off the model when done;
- `hooks left`: `ClipImageEncoder.close` does nothing (as before 2026-12-04): every finished sketch's
  encoder stays hooked to the model, and each later forward appends its activations to it.
Alternates which side goes first each round; prints each run's seconds, the gallery's seconds and the
process's peak resident memory, and the median ratios default / hooks left with their ranges.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.sides import ratios_line, run_child  # noqa: E402

SIDES = ("default", "hooks left")


def one_side(side: str, run: Path, out: Path) -> None:
    """Run in the child process: the demo's apps; prints seconds, gallery seconds and peak RSS (MB)."""
    from pipelines.runtime import apply_env_defaults

    apply_env_defaults()
    import torch
    from prefect import flow

    import pipelines.demo as demo
    from pipelines import flows
    from pipelines.params import load_flow_params

    if side == "hooks left":
        from apps.clipasso.losses import ClipImageEncoder

        ClipImageEncoder.close = lambda self: None
    overrides = [f"chain.out={out}", "chain.world=corpus", f"build.source=wit:{run / 'web' / 'site.tsv'}"]
    overrides.append(f"train.out={run / 'train'}")
    params = flows.flow_parameters(
        load_flow_params(
            "end-to-end",
            demo.WORLDS["corpus"]["params"],
            overrides,
            stage_defaults={"train": demo.training_preset("corpus")},
        )
    )

    @flow(name="demo-apps-bench")
    def apps() -> tuple[float, dict]:
        started = time.perf_counter()
        result, _ = flows.run_apps(
            params["chain"], params["train"], out / "apps", dataset=run / "data" / "round1"
        )
        return time.perf_counter() - started, result

    torch.set_num_threads(2)  # as after the demo's training
    seconds, result = apps()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RESULT {seconds:.1f} {result['clipasso_gallery']['seconds']:.1f} {peak:.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_apps", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating (default: 2)")
    parser.add_argument(
        "--run", type=Path, default=Path("runs/demo"), help="a finished demo run (default: runs/demo)"
    )
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        one_side(args.side, args.run.resolve(), args.out)
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if not (args.run / "train").is_dir() or not (args.run / "data" / "round1").is_dir():
        parser.error(
            f"--run {args.run}: no finished demo run there (train/ and data/round1/); run `make demo` first"
        )
    command = "python -m bench.demo_apps " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, list[tuple[float, float, float]]] = {side: [] for side in SIDES}
    for i in range(args.rounds):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            with tempfile.TemporaryDirectory(prefix="demo_apps_") as tmp:
                child = [
                    sys.executable,
                    "-m",
                    "bench.demo_apps",
                    "--side",
                    side,
                    "--run",
                    str(args.run.resolve()),
                ]
                values = run_child([*child, "--out", tmp], "RESULT", side)
            if values is None:
                return 1
            seconds, gallery, peak = (float(v) for v in values)
            results[side].append((seconds, gallery, peak))
            print(
                f"round {i + 1}, {side}: apps {seconds:.1f} s (gallery {gallery:.1f} s), peak {peak:.0f} MB",
                flush=True,
            )
    print(f"\ncommand: {command.strip()}")
    for k, name in enumerate(("apps seconds", "gallery seconds", "peak MB")):
        ratios = [d[k] / h[k] for d, h in zip(results["default"], results["hooks left"])]
        sides = "; ".join(
            f"{side} " + ", ".join(f"{r[k]:.1f}" for r in runs) for side, runs in results.items()
        )
        print(f"{name}: {sides}; ratio default / hooks left {ratios_line(ratios)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
