"""Test-session settings: offline model hub, no telemetry, a private Prefect home."""

import os
import tempfile

# Set before anything imports prefect, open_clip or img2dataset.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect_home_")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
