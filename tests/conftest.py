"""Test-session settings: offline model hub, no telemetry, a private Prefect home."""

import os
import tempfile

import pytest

# Set before anything imports prefect, open_clip or img2dataset.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect_home_")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


# Fixtures of the app tests (apps.clipasso, apps.clipdraw); torch is imported only when one is used.


@pytest.fixture
def one_thread():
    """One torch thread for the test: on two busy cores a second intra-op thread mostly waits on the first
    (measured 9x slower under load)."""
    from apps.cli import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised clip-tiny saved as a checkpoint file (seed 0)."""
    import torch

    from models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("clip-tiny")[0]
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip-tiny.pt", model, "clip-tiny")


@pytest.fixture
def prefect_server(tmp_path):
    """`prefect server start` on a free loopback port with its own PREFECT_HOME: (API URL, its env)."""
    from tests.prefect_serve import start_server

    with start_server(tmp_path) as server:
        yield server
