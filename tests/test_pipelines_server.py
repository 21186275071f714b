"""A real `prefect server start` on 127.0.0.1: serve a scheduled deployment, trigger it, see the run complete."""

from __future__ import annotations

from testbed.datasets import make_shape_dataset
from tests.prefect_serve import ServedDeployment


def test_serve_a_scheduled_deployment_on_a_real_server(tmp_path, prefect_server):
    data = make_shape_dataset(tmp_path / "data", n=32, seed=0, size=32)
    run_dir = tmp_path / "run"
    params = tmp_path / "serve.toml"
    params.write_text(
        "[[deployments]]\n"
        'name = "nightly-train"\nflow = "train"\ncron = "0 3 * * *"\n'
        "[deployments.train]\n"
        f'data = ["{data}"]\nout = "{run_dir}"\nmodel = "clip-tiny"\nsteps = 1\nbatch_size = 16\n'
        "workers = 0\nwarmup = 0\nprogress = false\n"
    )
    served = ServedDeployment(prefect_server, params, "nightly-train", tmp_path / "serve.log")
    try:
        dep = served.deployment(90)
        assert dep["schedules"] and dep["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        served.trigger("train")
        run = served.finished_runs(1, 180)[0]
        assert run["state_type"] == "COMPLETED", served.log.read_text()[-3000:]
        assert (run_dir / "latest").exists() or any(run_dir.glob("checkpoints/*"))
    finally:
        served.stop()
