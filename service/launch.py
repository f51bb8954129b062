"""The service as a process of its own: `bentoml serve` on a free port of 127.0.0.1, its output in
a log file, ready once GET /readyz answers 200, stopped with SIGTERM (its drain) then SIGKILL.

What the demo (training/demo.py), the benchmark (loadtests/servers.py adds CPU accounting and
/metrics to it) and the tests start. The standard library only: nothing here is served.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICE = "service.service:ImageClassifier"
# SIGTERM is answered by draining (SERVICE_SHUTDOWN_GRACE_S); after this long the group is SIGKILLed.
STOP_SECONDS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(bentoml_home: Path | None = None, **settings: str) -> dict[str, str]:
    """The environment of a server: this interpreter's without its SERVICE_*/BENTOML_* settings, quiet,
    offline, the model store `bentoml_home` (default: the user's, ~/bentoml) and the given settings."""
    env = {k: v for k, v in os.environ.items() if not re.match(r"^(SERVICE_|REQUIRE_GPU$|BENTOML_)", k)}
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    elif "BENTOML_HOME" in os.environ:
        env["BENTOML_HOME"] = os.environ["BENTOML_HOME"]
    env.update({"BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(REPO), **settings})
    return env


class Process:
    """`command --host 127.0.0.1 --port N` in a process group of its own; ready when GET `ready_path` answers 200."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO,
                 ready_path: str = "/readyz") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.ready_path = ready_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @classmethod
    def bentoml(cls, target: str, env: dict[str, str], log_path: Path, cwd: Path = REPO):
        return cls([sys.executable, "-m", "bentoml", "serve", target], env, log_path, cwd)

    def log(self) -> str:
        return self.log_path.read_text()

    def _answers_ready(self) -> bool:
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as response:
                return response.status == 200
        return False

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args[2]} exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            if self._answers_ready():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.process.args[2]} not ready after {timeout} s:\n{self.log()[-5000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


@contextlib.contextmanager
def serving(env: dict[str, str], log_path: Path, target: str = SERVICE, cwd: Path = REPO, kind: type[Process] = Process):
    """A ready `bentoml serve target` (a `kind`) for the `with` block, stopped after it."""
    server = kind.bentoml(target, env, log_path, cwd)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
