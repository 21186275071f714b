"""The nightly deployment on a real `prefect server`: two runs over a growing loopback web give two dataset versions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from curation import shards, versions
from testbed.testweb import SiteOptions
from testbed.web import serve_testweb
from tests.test_pipelines_server import PREFECT, _stop, _wait, prefect_server  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_nightly_deployment_twice_over_a_growing_web_gives_two_versions(tmp_path, prefect_server):  # noqa: F811
    url, server_env = prefect_server
    env = {**server_env, "PREFECT_API_URL": url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    out, train_out = tmp_path / "data" / "web", tmp_path / "runs" / "nightly"
    with serve_testweb(
        pages=8, seed=2, options=SiteOptions(junk_fraction=0.6), visible_pages=4, slow_delay_s=0.5
    ) as web:
        wit = web.write_wit(tmp_path / "web.tsv")
        params = tmp_path / "nightly.toml"
        params.write_text(
            "[build]\n"
            f'source = ["wit:{wit}", "crawl:{web.base_url}/"]\nout = "{out}"\nallow_networks = ["127.0.0.0/8"]\n'
            "image_size = 64\nprocesses = 1\nthreads = 8\ntimeout = 5\n"
            "[nightly]\ntrain = true\n"
            f'[train]\nout = "{train_out}"\nmodel = "clip-tiny"\nsteps = 1\nbatch_size = 8\nworkers = 0\n'
            "warmup = 0\nprogress = false\nthreads = 1\n"
            "[runner]\nretries = 0\n"
            '[[deployments]]\nname = "nightly"\nflow = "nightly"\ncron = "0 2 * * *"\n'
        )
        log = tmp_path / "serve.log"
        serve = subprocess.Popen(
            [sys.executable, "-m", "pipelines", "serve", "--params", str(params)],
            cwd=REPO,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            client = httpx.Client(base_url=url, timeout=10)

            def deployment():
                found = client.post("/deployments/filter", json={}).json()
                return next((d for d in found if d["name"] == "nightly"), None)

            dep = _wait(deployment, 120, "the served nightly deployment", serve, log)

            def run_once(n: int) -> dict:
                trigger = subprocess.run(
                    [PREFECT, "deployment", "run", "nightly/nightly"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert trigger.returncode == 0, trigger.stdout + trigger.stderr

                def finished():
                    runs = client.post(
                        "/flow_runs/filter", json={"deployments": {"id": {"any_": [dep["id"]]}}}
                    ).json()
                    done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
                    return done if len(done) >= n else None

                runs = _wait(finished, 600, f"nightly run {n}", serve, log)
                assert all(r["state_type"] == "COMPLETED" for r in runs), log.read_text()[-4000:]
                return runs

            run_once(1)
            v0 = set(shards.read_table(out, columns=["key"])["key"].to_pylist())
            assert versions.latest_version(out) == 0 and v0
            web.grow()
            web.write_wit(wit)
            run_once(2)
        finally:
            _stop(serve)

    assert versions.latest_version(out) == 1
    assert set(shards.read_table(out, columns=["key"], version=0)["key"].to_pylist()) == v0
    v1 = set(shards.read_table(out, columns=["key"])["key"].to_pylist())
    assert v0 < v1
    log_entries = versions.history(out)
    assert [e["added"] for e in log_entries] == [len(v0), len(v1) - len(v0)]
    for version in (0, 1):  # each night trained on its own version, pinned and recorded
        config = json.loads((train_out / f"version-{version}" / "config.json").read_text())
        assert config["data_version"] == version and config["data_versions"] == {str(out): version}
