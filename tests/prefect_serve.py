"""A real `prefect server start` on loopback, and `python -m pipelines serve` against it: the helpers the
server tests share (the `prefect_server` fixture lives in conftest.py and starts `start_server`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
FINISHED = ("COMPLETED", "FAILED", "CRASHED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    """The first truthy value of `predicate()`, polled every 0.5 s; fails with the log's tail when `proc` dies."""
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


def stop(proc: subprocess.Popen) -> None:
    """SIGINT the process group, then SIGKILL it if it is still there after 15 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def start_server(home: Path) -> Iterator[tuple[str, dict]]:
    """`prefect server start` on a free loopback port with its own PREFECT_HOME: (API URL, its env)."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect_home"), "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
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
        wait_for(healthy, 120, "prefect server health", proc, log)
        yield url, env
    finally:
        stop(proc)


class ServedDeployment:
    """`python -m pipelines serve --params FILE` running against the server; trigger its deployment, wait for runs."""

    def __init__(self, server: tuple[str, dict], params: Path, name: str, log: Path) -> None:
        url, server_env = server
        self.env = {**server_env, "PREFECT_API_URL": url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
        self.name, self.log = name, log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines", "serve", "--params", str(params)],
            cwd=REPO,
            env=self.env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.client = httpx.Client(base_url=url, timeout=10)

    def deployment(self, timeout: float = 120) -> dict:
        def served():
            found = self.client.post("/deployments/filter", json={}).json()
            return next((d for d in found if d["name"] == self.name), None)

        self.dep = wait_for(served, timeout, f"the served deployment {self.name}", self.proc, self.log)
        return self.dep

    def trigger(self, flow: str) -> None:
        """`prefect deployment run FLOW/NAME`, as a user would."""
        run = subprocess.run(
            [PREFECT, "deployment", "run", f"{flow}/{self.name}"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stdout + run.stderr

    def finished_runs(self, n: int, timeout: float) -> list[dict]:
        """The deployment's finished flow runs, once there are at least `n`."""

        def finished():
            runs = self.client.post(
                "/flow_runs/filter", json={"deployments": {"id": {"any_": [self.dep["id"]]}}}
            ).json()
            done = [r for r in runs if r["state_type"] in FINISHED]
            return done if len(done) >= n else None

        return wait_for(finished, timeout, f"{n} finished run(s) of {self.name}", self.proc, self.log)

    def stop(self) -> None:
        self.client.close()
        stop(self.proc)
