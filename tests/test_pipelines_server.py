"""A real `prefect server start` on 127.0.0.1: serve a scheduled deployment, trigger it, see the run complete."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from testbed.datasets import make_shape_dataset

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(
    predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def prefect_server(tmp_path):
    """`prefect server start` on a free loopback port with its own PREFECT_HOME; yields the API URL."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect_home"), "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait(healthy, 120, "prefect server health", proc, log)
        yield url, env
    finally:
        _stop(proc)


def test_serve_a_scheduled_deployment_on_a_real_server(tmp_path, prefect_server):
    url, server_env = prefect_server
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
    env = {**server_env, "PREFECT_API_URL": url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
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
            return next((d for d in found if d["name"] == "nightly-train"), None)

        dep = _wait(deployment, 90, "the served deployment", serve, log)
        assert dep["schedules"] and dep["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        trigger = subprocess.run(
            [PREFECT, "deployment", "run", "train/nightly-train"],
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
            return done[0] if done else None

        run = _wait(finished, 180, "the triggered flow run", serve, log)
        assert run["state_type"] == "COMPLETED", log.read_text()[-3000:]
        assert (run_dir / "latest").exists() or any(run_dir.glob("checkpoints/*"))
    finally:
        _stop(serve)
