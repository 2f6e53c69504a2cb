"""Start a real Label Studio server on 127.0.0.1 for tests and benchmarks, from its own virtual environment.

``make install-dev`` installs Label Studio into ``.venv-ls/`` (its Django stack never touches broaden's
environment). :func:`label_studio` starts it on a free port with a fresh data folder, creates the admin
user and a legacy API token non-interactively (``--username/--password/--user-token`` with legacy tokens
enabled), waits (bounded) until ``/health`` answers and the token works, and always stops the server by
its PID (its whole process group) at the end, also when the test fails.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LS_VENV = Path(os.environ.get("BROADEN_LABEL_STUDIO_VENV", REPO / ".venv-ls"))
LS_BIN = LS_VENV / "bin" / "label-studio"
READY_TIMEOUT = 240.0  # first start runs the database migrations: ~30-60 s on two cores
ADMIN = "admin@broaden.test"


@dataclass
class Server:
    url: str
    token: str
    pid: int
    log: Path


def unavailable() -> str | None:
    """Why Label Studio cannot be started here, or None."""
    if not LS_BIN.exists():
        return f"Label Studio is not installed ({LS_BIN} missing; `make install-dev` installs it)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str, token: str) -> bool:
    import requests

    try:
        if requests.get(f"{url}/health", timeout=2).status_code != 200:
            return False
        return requests.get(f"{url}/api/projects/", headers={"Authorization": f"Token {token}"},
                            timeout=5).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def label_studio(data_dir: Path, *, timeout: float = READY_TIMEOUT) -> Iterator[Server]:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    token = os.urandom(20).hex()
    log = data_dir / "label-studio.log"
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir / "data"),
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
           "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false"}
    env.pop("LABEL_STUDIO_API_KEY", None)
    cmd = [str(LS_BIN), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port), "--username", ADMIN,
           "--password", os.urandom(12).hex(), "--user-token", token, "--enable-legacy-api-token"]
    with open(log, "wb") as out:
        # Its own session: the PID is also the process group, so stopping it stops its workers too.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(url, token):
            if proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited with status {proc.returncode}: "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Label Studio not ready after {timeout:.0f} s: "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(1.0)
        yield Server(url, token, proc.pid, log)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group by its PID, SIGKILL it if it has not gone in 15 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
