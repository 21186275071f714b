"""Where flows run: Prefect settings, the API check, the task runner, and the output-directory lock.

Moving a flow from the laptop default (a temporary local Prefect API, a thread pool) to a
Prefect server and a Dask cluster is configuration: set `PREFECT_API_URL`, pass
`--dask-address tcp://HOST:8786`. Nothing in the flows changes.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from common.errors import UserError

# Set before Prefect reads its settings: no phoning home, and room for a slow first start on 2 cores.
ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    # a task waiting for a download slot asks again after 1 s instead of Prefect's 10 s
    "PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
}


class PrefectApiError(UserError):
    """The configured Prefect API does not answer; the message says how to fix it."""


def apply_env_defaults() -> None:
    """Fill in the environment defaults the project needs, without overriding the user's."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def configured_api_url() -> str | None:
    """The Prefect API URL from the environment or the active Prefect profile; None means ephemeral."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


_SECRET_QUERY_KEYS = ("key", "token", "password", "secret", "auth", "signature", "sig")


def redact_url(url: str) -> str:
    """The URL as it may be printed or logged: user:password@ and secret-looking query values masked.

    >>> redact_url("https://me:s3cret@prefect.example/api?token=abc&x=1")
    'https://***@prefect.example/api?token=***&x=1'
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = [(k, "***" if any(s in k.lower() for s in _SECRET_QUERY_KEYS) else v) for k, v in pairs]
        query = urlencode(masked, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_prefect_api(url: str | None = None, timeout: float = 3.0) -> str | None:
    """Fail within `timeout` seconds when a configured Prefect server does not answer its health check.

    Without a check Prefect retries its client for minutes before a flow fails; a person waiting
    at a terminal deserves the answer at once.
    """
    import httpx

    url = url if url is not None else configured_api_url()
    if not url:
        return None
    health = url.rstrip("/") + "/health"
    hint = (
        "start one with `prefect server start --host 127.0.0.1` (then PREFECT_API_URL=http://127.0.0.1:4200/api), "
        "or unset PREFECT_API_URL to run with a temporary local API"
    )
    try:
        response = httpx.get(health, timeout=timeout)
    except httpx.HTTPError as exc:
        message = str(exc).replace(url, redact_url(url)).replace(health, redact_url(health))
        raise PrefectApiError(
            f"Prefect API {redact_url(url)} is unreachable ({type(exc).__name__}: {message}); {hint}"
        ) from exc
    if response.status_code != 200:
        raise PrefectApiError(
            f"Prefect API {redact_url(url)} answered HTTP {response.status_code} to {redact_url(health)}; {hint}"
        )
    return url


def start_temporary_api() -> Callable[[], None]:
    """Start Prefect's temporary local API now, in the background, when no Prefect API is configured (the
    first flow run would otherwise start it and wait ~10 s for its health check); returns the wait for it.

    Call it before slow work that leaves a core free (the demo builds its test web meanwhile). A start that
    fails is left to the first flow run, which starts the server again and says why it cannot.
    """
    if configured_api_url():
        return lambda: None
    from prefect.server.api.server import SubprocessASGIServer  # the one temporary server of this process

    def start() -> None:
        try:
            SubprocessASGIServer().start()
        except Exception:  # noqa: BLE001 - the flow run starts it again and reports the error
            pass

    thread = threading.Thread(target=start, name="prefect-temporary-api", daemon=True)
    thread.start()
    return thread.join


def make_task_runner(dask_address: str | None = None, max_workers: int | None = None) -> Any:
    """A DaskTaskRunner on an existing cluster when an address is given, else Prefect's thread pool."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=max_workers)


def check_dask_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast with a clear message when no Dask scheduler listens at `address` (tcp://HOST:PORT)."""
    from common.settings import ConfigError

    if not address.startswith("tcp://"):
        raise ConfigError(f"--dask-address {address!r}: expected tcp://HOST:PORT of a running Dask scheduler")
    host, _, port = address[len("tcp://") :].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--dask-address {address}: no Dask scheduler answers there ({exc}); start one with "
            "`dask scheduler` (and `dask worker ADDRESS`) or leave the option out to use a thread pool"
        ) from exc
