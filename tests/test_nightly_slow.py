"""The nightly deployment on a real `prefect server`: two runs over a growing loopback web give two dataset versions."""

from __future__ import annotations

import json

import pytest

from curation import shards, versions
from testbed.testweb import SiteOptions
from testbed.web import serve_testweb
from tests.prefect_serve import ServedDeployment


@pytest.mark.slow
def test_nightly_deployment_twice_over_a_growing_web_gives_two_versions(tmp_path, prefect_server):
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
        served = ServedDeployment(prefect_server, params, "nightly", tmp_path / "serve.log")
        try:
            served.deployment(120)

            def run_once(n: int) -> None:
                served.trigger("nightly")
                runs = served.finished_runs(n, 600)
                assert all(r["state_type"] == "COMPLETED" for r in runs), served.log.read_text()[-4000:]

            run_once(1)
            v0 = set(shards.read_table(out, columns=["key"])["key"].to_pylist())
            assert versions.latest_version(out) == 0 and v0
            web.grow()
            web.write_wit(wit)
            run_once(2)
        finally:
            served.stop()

    assert versions.latest_version(out) == 1
    assert set(shards.read_table(out, columns=["key"], version=0)["key"].to_pylist()) == v0
    v1 = set(shards.read_table(out, columns=["key"])["key"].to_pylist())
    assert v0 < v1
    log_entries = versions.history(out)
    assert [e["added"] for e in log_entries] == [len(v0), len(v1) - len(v0)]
    for version in (0, 1):  # each night trained on its own version, pinned and recorded
        config = json.loads((train_out / f"version-{version}" / "config.json").read_text())
        assert config["data_version"] == version and config["data_versions"] == {str(out): version}
