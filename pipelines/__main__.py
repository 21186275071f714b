"""`python -m pipelines run FLOW ...` runs a flow now; `python -m pipelines serve ...` serves scheduled deployments.

    python -m pipelines run build-dataset source=crawl:http://127.0.0.1:8000/ out=data/web allow_networks=127.0.0.1/32
    python -m pipelines run end-to-end --params pipelines/params/demo.toml train.steps=100
    python -m pipelines run build-dataset --params build.toml --dask-address tcp://127.0.0.1:8786
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m pipelines serve --params pipelines/params/nightly.toml

Parameters (key=value, or STAGE.key=value) are the library CLIs' option names; they are checked
before any work starts. Without PREFECT_API_URL flows run against a temporary local Prefect API.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from pipelines.runtime import apply_env_defaults

apply_env_defaults()  # before Prefect reads its settings

FLOW_NAMES = ("build-dataset", "train", "evaluate", "end-to-end", "nightly")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines",
        description="Run or serve the Prefect flows of the CLIP workbench.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,serve}")
    run = commands.add_parser(
        "run",
        help="run one flow now",
        description="Run one flow now. KEY=VALUE set the flow's own stage (out=data/web); "
        "STAGE.KEY=VALUE any stage of the params file (train.steps=50, runner.download_concurrency=2).",
    )
    run.add_argument("flow", choices=FLOW_NAMES, help="which flow")
    run.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="parameters (library CLI option names)"
    )
    run.add_argument(
        "--params", type=Path, metavar="FILE.toml", help="params file with [build], [train], ... tables"
    )
    run.add_argument(
        "--dask-address",
        metavar="tcp://HOST:PORT",
        help="run tasks on this Dask cluster (default: a thread pool)",
    )
    serve = commands.add_parser(
        "serve",
        help="serve the params file's [[deployments]] on their schedules until stopped",
        description="Serve the [[deployments]] of a params file (cron schedules) until Ctrl-C. "
        "Point PREFECT_API_URL at a Prefect server so schedules and runs outlive this process.",
    )
    serve.add_argument("--params", type=Path, required=True, metavar="FILE.toml", help="params file")
    serve.add_argument(
        "overrides", nargs="*", metavar="STAGE.KEY=VALUE", help="override every deployment's params"
    )
    serve.add_argument("--dask-address", metavar="tcp://HOST:PORT", help="run the deployments' tasks on Dask")
    return parser


def _with_dask(params, address: str | None):
    if not address:
        return params
    from pipelines.runtime import check_dask_address

    check_dask_address(address)
    return dataclasses.replace(params, options=dataclasses.replace(params.options, dask_address=address))


def _run(args: argparse.Namespace) -> int:
    from pipelines.params import load_flow_params
    from pipelines.runtime import check_dask_address, check_prefect_api, redact_url

    params = _with_dask(load_flow_params(args.flow, args.params, args.overrides), args.dask_address)
    if params.options.dask_address:
        check_dask_address(params.options.dask_address)
    api = check_prefect_api()
    print(
        f"running flow {args.flow} on {redact_url(api) if api else 'a temporary local Prefect API'}",
        file=sys.stderr,
    )
    from pipelines.flows import run_flow

    result = run_flow(params)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from prefect import serve
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    from pipelines.flows import FLOWS, deployment_parameters
    from pipelines.params import load_deployments
    from pipelines.runtime import check_dask_address, check_prefect_api

    specs = load_deployments(args.params, args.overrides)
    specs = [dataclasses.replace(s, params=_with_dask(s.params, args.dask_address)) for s in specs]
    for spec in specs:
        if spec.params.options.dask_address:
            check_dask_address(spec.params.options.dask_address)
    api = check_prefect_api()
    if api is None:
        print(
            "no PREFECT_API_URL: serving against a temporary local API; schedules and runs last only while this "
            "process runs (start `prefect server start` and set PREFECT_API_URL to keep them)",
            file=sys.stderr,
        )
    deployments = []
    for spec in specs:
        deployments.append(
            FLOWS[spec.flow].to_deployment(
                name=spec.name,
                schedule=Cron(spec.cron, timezone=spec.timezone)
                if spec.cron
                else Interval(spec.interval_seconds, timezone=spec.timezone),
                # a nightly build still running at the next tick must not start a second writer
                concurrency_limit=1,
                entrypoint_type=EntrypointType.MODULE_PATH,
                parameters=deployment_parameters(spec.params),
                description=spec.description or None,
                tags=["clip-workbench"],
            )
        )
        when = spec.cron or f"every {spec.interval_seconds} s"
        print(f"serving {spec.flow}/{spec.name} ({when}, {spec.timezone})", file=sys.stderr)
    serve(*deployments, print_starting_message=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from common.errors import run_cli

    args = _parser().parse_args(argv)
    return run_cli(lambda: _run(args) if args.command == "run" else _serve(args), interrupted="stopped")


if __name__ == "__main__":
    sys.exit(main())
