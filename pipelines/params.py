"""Flow parameters: a TOML file plus `key=value` overrides -> the libraries' own typed configs.

There is one definition of every option: `curation.config.BuildConfig` for `build-dataset`,
`training.config.TrainConfig` / `EvalConfig` for `train` / `evaluate`. A params file has one
table per stage, keyed by the same names the library CLIs take::

    [build]                      # python -m curation build --source ... --out ... --allow-networks 127.0.0.1/32
    source = ["crawl:http://127.0.0.1:8000/"]
    out = "data/web"
    allow_networks = ["127.0.0.1/32"]

    [train]                      # python -m training.train ...
    steps = 800

    [runner]                     # where and how the flow runs (FlowOptions)
    download_concurrency = 1

    [[deployments]]              # python -m pipelines serve: one entry per scheduled deployment
    name = "nightly"
    flow = "build-dataset"
    cron = "0 2 * * *"

A file for one flow may also be flat (the keys of that flow's config at the top level, the
format `python -m curation build --config FILE` reads). Overrides are `key=value` for the
flow's own stage, or `stage.key=value` (`train.steps=50`, `runner.dask_address=tcp://...`).
Everything is validated before any work starts: unknown keys and wrong types raise
`ConfigError` naming the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import importlib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.settings import ConfigError, build

# stage name -> "module:Class" of its typed config (imported when needed: a flow needs only its own).
STAGE_CONFIGS: dict[str, str] = {
    "build": "curation.config:BuildConfig",
    "train": "training.config:TrainConfig",
    "evaluate": "training.config:EvalConfig",
    "chain": "pipelines.params:ChainConfig",
    "nightly": "pipelines.params:NightlyConfig",
    "runner": "pipelines.params:FlowOptions",
}

# flow name -> the stages its params read (the first is where un-prefixed overrides go).
FLOW_STAGES: dict[str, tuple[str, ...]] = {
    "build-dataset": ("build", "runner"),
    "train": ("train", "runner"),
    "evaluate": ("evaluate", "runner"),
    "end-to-end": ("chain", "build", "train", "evaluate", "runner"),
    "nightly": ("build", "nightly", "train", "runner"),
}
OTHER_TABLES = ("deployments",)


@dataclass(frozen=True)
class FlowOptions:
    """How a flow runs, not what it computes."""

    dask_address: str | None = field(
        default=None, metadata={"help": "tcp://HOST:PORT of a Dask scheduler; default: a local thread pool"}
    )
    download_concurrency: int = field(
        default=1, metadata={"help": "img2dataset chunks downloading at once (Prefect tag concurrency limit)"}
    )
    retries: int = field(default=3, metadata={"help": "retries of a network-facing task (download, crawl)"})
    train_processes: int = field(
        default=1,
        metadata={"help": "training processes; > 1 runs `torchrun --nproc-per-node N -m training.train`"},
    )
    retry_delay_seconds: float = field(
        default=2.0, metadata={"help": "first retry delay; doubles on each retry (exponential backoff)"}
    )

    def __post_init__(self) -> None:
        if self.download_concurrency < 1:
            raise ConfigError(f"runner.download_concurrency must be >= 1, got {self.download_concurrency}")
        if self.train_processes < 1:
            raise ConfigError(f"runner.train_processes must be >= 1, got {self.train_processes}")
        if self.retries < 0 or self.retry_delay_seconds < 0:
            raise ConfigError("runner.retries and runner.retry_delay_seconds must be >= 0")
        if self.dask_address is not None and not self.dask_address.startswith("tcp://"):
            raise ConfigError(f"runner.dask_address {self.dask_address!r}: expected tcp://HOST:PORT")


@dataclass(frozen=True)
class ChainConfig:
    """The end-to-end chain: where it writes, and what links one stage to the next."""

    out: Path = field(
        default=Path("runs/chain"), metadata={"help": "run directory: data/, train/, eval/, apps/"}
    )
    world: str = field(
        default="shapes",
        metadata={
            "help": "what the web shows, and so what the held-out sets are: shapes (generated coloured "
            "shapes) or corpus (the real emoji and icons of testbed.corpus; its held-out style and concepts)"
        },
    )
    rescore_top_fraction: float | None = field(
        default=0.8, metadata={"help": "round 2 keeps this best fraction by the trained model's CLIP score"}
    )
    rescore_min_score: float | None = field(
        default=None, metadata={"help": "round 2 keeps pairs with CLIP score >= X (instead of a fraction)"}
    )
    heldout_per_class: int = field(
        default=10, metadata={"help": "generated held-out images per shape class for zero-shot evaluation"}
    )
    heldout_seed: int = field(
        default=12345, metadata={"help": "seed of the held-out images (unseen in training)"}
    )
    heldout_size: int = field(default=128, metadata={"help": "side of the held-out images"})
    clipasso: bool = field(default=True, metadata={"help": "sketch one picture with the trained model"})
    clipasso_image: Path | None = field(
        default=None, metadata={"help": "picture to sketch; default: a generated shape picture"}
    )
    clipasso_strokes: int = field(default=16, metadata={"help": "strokes of the sketch"})
    clipasso_iterations: int = field(default=200, metadata={"help": "optimisation steps per seed"})
    clipasso_seeds: int = field(default=1, metadata={"help": "seeds (the best is kept)"})
    clipasso_gallery: bool = field(
        default=True,
        metadata={
            "help": "corpus world: also sketch 5 skimage photos and 5 held-out line icons (a contact sheet)"
        },
    )
    clip4clip: bool = field(
        default=True, metadata={"help": "train a video head, index synthetic videos, search"}
    )
    clip4clip_train_videos: int = field(
        default=480, metadata={"help": "synthetic training videos for the head"}
    )
    clip4clip_epochs: int = field(default=60, metadata={"help": "epochs of the video head"})
    apps: list[str] = field(
        default_factory=lambda: ["coop", "actionclip", "search"],
        metadata={"help": "apps whose short demo runs with the trained model (apps/NAME/demo.py run_demo)"},
    )

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ConfigError(f"chain.world {self.world!r}: choose one of {', '.join(WORLDS)}")
        if self.rescore_top_fraction is not None and self.rescore_min_score is not None:
            raise ConfigError("chain: give rescore_top_fraction or rescore_min_score, not both")
        if self.rescore_top_fraction is not None and not 0 < self.rescore_top_fraction <= 1:
            raise ConfigError(
                f"chain.rescore_top_fraction must be in (0, 1], got {self.rescore_top_fraction}"
            )
        positive = (
            "heldout_per_class",
            "heldout_size",
            "clipasso_strokes",
            "clipasso_iterations",
            "clipasso_seeds",
        )
        for name in (*positive, "clip4clip_train_videos", "clip4clip_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"chain.{name} must be >= 1, got {getattr(self, name)}")


# The corpus world's held-out sets under CHAIN/heldout (testbed.corpus_data.write_datasets, train=False).
WORLDS = ("shapes", "corpus")
CORPUS_HELDOUT = {"zeroshot": "eval/concepts", "retrieval": "eval/retrieval", "linear_probe": "eval/probe"}
CORPUS_CATEGORIES = "eval/categories"


@dataclass(frozen=True)
class NightlyConfig:
    """The nightly flow: an incremental build of [build], then (optionally) a training run on the new version."""

    train: bool = field(
        default=False,
        metadata={"help": "train [train] on each new dataset version (into train.out/version-N)"},
    )


@dataclass(frozen=True)
class FlowParams:
    """Everything one flow run needs, validated: one config object per stage, plus FlowOptions."""

    flow: str
    configs: dict[str, Any]
    options: FlowOptions
    source: str = "defaults"

    def __getitem__(self, stage: str) -> Any:
        return self.configs[stage]


def config_class(stage: str) -> type:
    """The typed config of a stage; a clear error when its library is not installed."""
    module_name, _, class_name = STAGE_CONFIGS[stage].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"stage [{stage}] needs {module_name}.{class_name}, which does not import ({exc})"
        ) from exc
    return getattr(module, class_name)


def read_params_file(path: Path | str | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"params file {path}: no such file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"params file {path}: not valid TOML ({exc})") from exc


def split_sections(data: Mapping[str, Any], flow: str, source: str) -> dict[str, dict[str, Any]]:
    """Stage tables of a params file; a flat file counts as the flow's own stage."""
    known = set(STAGE_CONFIGS) | set(OTHER_TABLES)
    tables = {k for k, v in data.items() if isinstance(v, dict) or k in OTHER_TABLES}
    sectioned = any(k in known for k in tables)
    if not sectioned:
        return {FLOW_STAGES[flow][0]: dict(data)} if data else {}
    loose = sorted(k for k in data if k not in tables)
    if loose:
        raise ConfigError(
            f"{source}: key(s) {', '.join(loose)} outside any table; put them under [{FLOW_STAGES[flow][0]}] "
            f"(tables: {', '.join(f'[{s}]' for s in STAGE_CONFIGS)})"
        )
    unknown = sorted(tables - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown table(s) {', '.join(f'[{u}]' for u in unknown)}; "
            f"valid: {', '.join(f'[{s}]' for s in [*STAGE_CONFIGS, *OTHER_TABLES])}"
        )
    return {k: dict(v) for k, v in data.items() if k in STAGE_CONFIGS}


def parse_overrides(overrides: Iterable[str], flow: str) -> dict[str, dict[str, Any]]:
    """`key=value` (the flow's own stage) or `stage.key=value`; repeated keys make a list."""
    stages = FLOW_STAGES[flow]
    parsed: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value (e.g. out=data/web or train.steps=50)")
        key = key.strip().replace("-", "_")
        stage, dot, name = key.partition(".")
        if not dot:
            if flow == "end-to-end":
                raise ConfigError(
                    f"override {item!r}: end-to-end has several stages; write STAGE.{key}=... "
                    f"with STAGE one of {', '.join(stages)}"
                )
            stage, name = stages[0], key
        if stage not in stages:
            raise ConfigError(
                f"override {item!r}: flow {flow} has no stage {stage!r} (stages: {', '.join(stages)})"
            )
        values = parsed.setdefault(stage, {})
        if name in values:
            previous = values[name]
            values[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            values[name] = value
    return parsed


def _chain_defaults(values: dict[str, dict[str, Any]], chain: ChainConfig) -> None:
    """Wire the end-to-end stages together unless the user set the links explicitly."""
    build_out = Path(values.setdefault("build", {}).setdefault("out", str(chain.out / "data" / "round1")))
    train = values.setdefault("train", {})
    train.setdefault("data", [str(build_out)])
    train.setdefault("out", str(chain.out / "train"))
    evaluate = values.setdefault("evaluate", {})
    evaluate.setdefault("checkpoint", str(train["out"]))
    if chain.world == "corpus":
        for key, sub in CORPUS_HELDOUT.items():
            evaluate.setdefault(key, str(chain.out / "heldout" / sub))
    else:
        evaluate.setdefault("zeroshot", str(chain.out / "heldout"))
    evaluate.setdefault("out", str(chain.out / "eval" / "round1.json"))


def _nightly_defaults(values: dict[str, dict[str, Any]]) -> None:
    """The nightly training reads what the build writes, unless the user set it explicitly."""
    build_out = values.setdefault("build", {}).get("out")
    train = values.setdefault("train", {})
    if build_out is not None:
        train.setdefault("data", [str(build_out)])
        train.setdefault("out", str(Path(build_out).parent / f"{Path(build_out).name}-train"))


def _build_stage(stage: str, values: Mapping[str, Any], source: str) -> Any:
    where = f"{source} [{stage}]"
    try:
        return build(config_class(stage), values, where)
    except ConfigError as exc:
        # type errors from the settings module name the key but not the file: add it
        raise (exc if str(exc).startswith(where) else ConfigError(f"{where}: {exc}")) from None


def load_flow_params(
    flow: str,
    params_file: Path | str | None = None,
    overrides: Iterable[str] = (),
    stage_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> FlowParams:
    """Validated parameters of one flow run: defaults < `stage_defaults` < params file < overrides."""
    if flow not in FLOW_STAGES:
        raise ConfigError(f"unknown flow {flow!r}; flows: {', '.join(FLOW_STAGES)}")
    source = str(params_file) if params_file is not None else "command line"
    data = read_params_file(params_file)
    file_values = split_sections(data, flow, source)
    values: dict[str, dict[str, Any]] = {
        s: dict((stage_defaults or {}).get(s, {})) for s in FLOW_STAGES[flow]
    }
    # Tables of other stages may share the file (one params file for every flow): not an error.
    for stage in FLOW_STAGES[flow]:
        values[stage].update(file_values.get(stage, {}))
    for stage, stage_values in parse_overrides(overrides, flow).items():
        values[stage].update(stage_values)
    configs: dict[str, Any] = {}
    if flow == "end-to-end":
        configs["chain"] = _build_stage("chain", values["chain"], source)
        _chain_defaults(values, configs["chain"])
    if flow == "nightly":
        _nightly_defaults(values)
    for stage in FLOW_STAGES[flow]:
        if stage not in configs:
            configs[stage] = _build_stage(stage, values[stage], source)
    options = configs.pop("runner")
    if "build" in configs and not configs["build"].source:
        # checked here so the run stops before a Prefect API is started, not inside the flow
        raise ConfigError(f"{source} [build]: no source; give source=wit:PATH.tsv[.gz] or source=crawl:URL")
    return FlowParams(flow=flow, configs=configs, options=options, source=source)


@dataclass(frozen=True)
class DeploymentSpec:
    """One scheduled deployment of `python -m pipelines serve`."""

    name: str
    flow: str
    params: FlowParams
    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str = "UTC"
    description: str = ""


_DEPLOYMENT_KEYS = {"name", "flow", "cron", "interval_seconds", "timezone", "description"}


def load_deployments(params_file: Path | str, overrides: Iterable[str] = ()) -> list[DeploymentSpec]:
    """The `[[deployments]]` of a params file, each with its flow's params validated now (not at 2 am)."""
    data = read_params_file(params_file)
    entries = data.get("deployments")
    if not entries:
        raise ConfigError(
            f"{params_file}: no [[deployments]]; add one with name, flow and cron "
            "(see pipelines/params/nightly.toml)"
        )
    if not isinstance(entries, list):
        raise ConfigError(f"{params_file}: `deployments` must be an array of tables ([[deployments]])")
    shared = {k: v for k, v in data.items() if k != "deployments"}
    specs = []
    for i, entry in enumerate(entries):
        where = f"{params_file} [[deployments]] #{i + 1}"
        name, flow = entry.get("name"), entry.get("flow")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: `name` (a string) is required")
        if flow not in FLOW_STAGES:
            raise ConfigError(f"{where}: `flow` must be one of {', '.join(FLOW_STAGES)}, got {flow!r}")
        unknown = sorted(k for k in entry if k not in _DEPLOYMENT_KEYS and k not in STAGE_CONFIGS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(_DEPLOYMENT_KEYS))} and stage tables {', '.join(STAGE_CONFIGS)}"
            )
        if entry.get("cron") is None and entry.get("interval_seconds") is None:
            raise ConfigError(f'{where}: give `cron` (e.g. "0 2 * * *") or `interval_seconds`')
        # A deployment's own stage tables override the file's shared ones, key by key.
        shared_tables = split_sections(shared, flow, str(params_file))
        stage_defaults = {s: {**shared_tables.get(s, {}), **entry.get(s, {})} for s in STAGE_CONFIGS}
        params = load_flow_params(flow, None, overrides, stage_defaults=stage_defaults)
        params = dataclasses.replace(params, source=where)
        specs.append(
            DeploymentSpec(
                name=name,
                flow=flow,
                params=params,
                cron=entry.get("cron"),
                interval_seconds=entry.get("interval_seconds"),
                timezone=entry.get("timezone", "UTC"),
                description=entry.get("description", ""),
            )
        )
    return specs
