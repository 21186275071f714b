"""Flow parameters: params files and key=value -> the libraries' typed configs, errors before any work."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.settings import ConfigError
from curation.config import BuildConfig
from pipelines.__main__ import main
from pipelines.params import FlowOptions, load_deployments, load_flow_params
from pipelines.runtime import PrefectApiError, check_prefect_api
from training.config import EvalConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_overrides_use_the_library_cli_names(tmp_path):
    params = load_flow_params(
        "build-dataset",
        None,
        [
            "source=crawl:http://127.0.0.1:8000/",
            f"out={tmp_path / 'web'}",
            "allow_networks=127.0.0.1/32",
            "chunk_size=50",
        ],
    )
    cfg = params["build"]
    assert isinstance(cfg, BuildConfig)
    assert cfg.source == ["crawl:http://127.0.0.1:8000/"]
    assert cfg.out == tmp_path / "web" and cfg.allow_networks == ["127.0.0.1/32"] and cfg.chunk_size == 50
    assert params.options == FlowOptions()


def test_sectioned_file_then_overrides(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(
        '[build]\nsource = ["wit:a.tsv"]\nout = "o"\nchunk_size = 10\n'
        '[train]\ndata = ["d"]\nout = "r"\nsteps = 7\n'
        "[runner]\ndownload_concurrency = 3\n"
    )
    build = load_flow_params("build-dataset", path, ["chunk_size=20", "runner.retries=1"])
    assert build["build"].chunk_size == 20 and build["build"].source == ["wit:a.tsv"]
    assert build.options.download_concurrency == 3 and build.options.retries == 1
    train = load_flow_params("train", path, ["steps=9"])
    assert isinstance(train["train"], TrainConfig) and train["train"].steps == 9


def test_flat_file_is_the_flow_own_stage(tmp_path):
    path = tmp_path / "build.toml"
    path.write_text('source = ["wit:a.tsv"]\nout = "x"\nimage_size = 64\n')
    assert load_flow_params("build-dataset", path)["build"].image_size == 64


def test_end_to_end_wires_stages_together(tmp_path):
    params = load_flow_params("end-to-end", None, [f"chain.out={tmp_path}", "build.source=wit:s.tsv"])
    build, train, evaluate = params["build"], params["train"], params["evaluate"]
    assert train.data == [build.out] and build.out == tmp_path / "data" / "round1"
    assert isinstance(evaluate, EvalConfig) and evaluate.checkpoint == train.out == tmp_path / "train"
    with pytest.raises(ConfigError, match="STAGE.steps"):
        load_flow_params("end-to-end", None, ["steps=3"])


def test_corpus_world_evaluates_on_its_held_out_sets(tmp_path):
    base = [f"chain.out={tmp_path}", "build.source=wit:s.tsv"]
    evaluate = load_flow_params("end-to-end", None, [*base, "chain.world=corpus"])["evaluate"]
    heldout = tmp_path / "heldout" / "eval"
    assert (evaluate.zeroshot, evaluate.retrieval, evaluate.linear_probe) == (
        heldout / "concepts",
        heldout / "retrieval",
        heldout / "probe",
    )
    assert load_flow_params("end-to-end", None, base)["evaluate"].zeroshot == tmp_path / "heldout"
    with pytest.raises(ConfigError, match="chain.world 'emoji': choose one of shapes, corpus"):
        load_flow_params("end-to-end", None, [*base, "chain.world=emoji"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[build]\nsource = ["wit:a.tsv"]\nchunk_sise = 10\n',
            r"p\.toml \[build\].*unknown setting\(s\) chunk_sise",
        ),
        (
            '[build]\nsource = ["wit:a.tsv"]\nout = "o"\nchunk_size = "ten"\n',
            r"p\.toml \[build\].*chunk_size.*not an integer",
        ),
        ('[build]\nsource = ["ftp:a.tsv"]\nout = "o"\n', r"expected wit:PATH"),
        ("[buidl]\nout = 'x'\n[runner]\nretries = 1\n", r"unknown table\(s\) \[buidl\]"),
        ('[build]\nout = "o"\n[runner]\ndownload_concurrency = 0\n', r"download_concurrency must be >= 1"),
        ("[build\n", r"not valid TOML"),
    ],
)
def test_bad_params_file_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_flow_params("build-dataset", path)


def test_cli_rejects_bad_params_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    path = tmp_path / "p.toml"
    path.write_text(f'[build]\nsource = ["wit:a.tsv"]\nout = "{out}"\nthreads = "many"\n')
    assert main(["run", "build-dataset", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "threads" in err and "p.toml" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["run", "build-dataset", "source=wit:a.tsv", "bogus=1"]) == 2
    assert "unknown setting(s) bogus" in capsys.readouterr().err


def test_deployments_are_validated_when_loaded(tmp_path):
    specs = load_deployments(REPO / "pipelines" / "params" / "nightly.toml")
    nightly = next(s for s in specs if s.name == "nightly")
    assert nightly.cron == "0 2 * * *" and nightly.flow == "nightly"
    assert nightly.params["build"].source and nightly.params.options.retries == 3
    path = tmp_path / "d.toml"
    path.write_text(
        '[[deployments]]\nname = "n"\nflow = "build-dataset"\n[deployments.build]\nsource = ["wit:a"]\n'
    )
    with pytest.raises(ConfigError, match="give `cron`"):
        load_deployments(path)
    path.write_text(
        '[[deployments]]\nname = "n"\nflow = "train"\ncron = "0 2 * * *"\n[deployments.train]\nstep = 1\n'
    )
    with pytest.raises(ConfigError, match="unknown setting"):
        load_deployments(path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_prefect_server_fails_fast(tmp_path):
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{_closed_port()}/api"}
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines",
            "run",
            "build-dataset",
            "source=wit:a.tsv",
            f"out={tmp_path / 'x'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 2, proc.stderr
    assert "is unreachable" in proc.stderr and "prefect server start" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert seconds < 60, f"took {seconds:.1f} s"  # interpreter start-up included (slow on busy cores)
    assert not (tmp_path / "x").exists()
    # The check itself answers at once (Prefect's own client would retry for minutes).
    started = time.perf_counter()
    with pytest.raises(PrefectApiError, match="unreachable"):
        check_prefect_api(env["PREFECT_API_URL"])
    assert time.perf_counter() - started < 5


def test_help_of_every_command():
    for argv in (["--help"], ["run", "--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0


@pytest.mark.parametrize(
    "value, apps",
    [("[]", []), ("[coop,search]", ["coop", "search"]), ('["coop"]', ["coop"]), ("coop", ["coop"])],
)
def test_chain_apps_override_takes_list_syntax(tmp_path, value, apps):
    """`python -m pipelines.demo chain.apps=[]` runs no app demo (it used to ask for an app named '[]')."""
    base = [f"chain.out={tmp_path}", "build.source=wit:s.tsv"]
    assert load_flow_params("end-to-end", None, [*base, f"chain.apps={value}"])["chain"].apps == apps


def test_a_malformed_list_override_names_the_stage_and_key(tmp_path):
    base = [f"chain.out={tmp_path}", "build.source=wit:s.tsv"]
    with pytest.raises(ConfigError, match=r"\[chain\]: setting `apps`: '\[coop' opens \[") as raised:
        load_flow_params("end-to-end", None, [*base, "chain.apps=[coop"])
    assert "\n" not in str(raised.value)


_EARLY_API = """
import threading
import httpx
from pipelines.runtime import apply_env_defaults, start_temporary_api
apply_env_defaults()
wait = start_temporary_api()
starting = [t.name for t in threading.enumerate() if t.name == "prefect-temporary-api"]
wait()
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()  # the one the first flow run would start: this one, already up
print(starting, server.running and httpx.get(server.api_url + "/health").status_code)
server.stop()
"""


def test_the_temporary_api_starts_in_the_background_unless_one_is_configured():
    """`pipelines.demo` starts Prefect's temporary API while it builds the test web (bench/demo_startup.py)."""
    run = subprocess.run(
        [sys.executable, "-c", _EARLY_API], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.split("\n")[0] == "['prefect-temporary-api'] 200", run.stderr[
        -2000:
    ]
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{_closed_port()}/api"}
    run = subprocess.run(
        [sys.executable, "-c", _EARLY_API.replace("server.stop()", "")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.startswith("[] False"), run.stderr[-2000:]
