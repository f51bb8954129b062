"""Server processes for the benchmark and the tests: an HTTP server command (`bentoml serve`, the
naive Keras server, Triton through PyTriton) in its own process group on a free port, its output in a log file, and what it
reports: readiness, the CPU time of its process tree, and its Prometheus /metrics.
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
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
SERVICE = "service.service:ImageClassifier"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`command --host 127.0.0.1 --port N` in a subprocess; ready when GET `ready_path` answers 200."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO,
                 ready_path: str = "/readyz", metrics_url: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.ready_path = ready_path
        self.metrics_url = metrics_url or self.url + "/metrics"  # Triton serves them on a port of their own
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @classmethod
    def bentoml(cls, target: str, env: dict[str, str], log_path: Path, cwd: Path = REPO) -> "Server":
        return cls([sys.executable, "-m", "bentoml", "serve", target], env, log_path, cwd)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args[2]} exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.process.args[2]} not ready after {timeout} s:\n{self.log()[-5000:]}")

    def processes(self) -> list[psutil.Process]:
        """The server's process and all its descendants (BentoML's workers)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        return []

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds used so far by each process of the tree, by a short role name."""
        used: dict[str, float] = {}
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = process.cpu_times()
                role = process_role(process.cmdline())
                used[role] = used.get(role, 0.0) + times.user + times.system
        return used

    def metrics(self) -> str:
        return requests.get(self.metrics_url, timeout=30).text

    def stop(self) -> None:
        tree = self.processes()[1:]  # BentoML's workers run in sessions of their own, out of the group
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        kill_all(tree)  # none left after a clean exit; after a crash of the supervisor, its orphans
        self._log.close()

    def kill(self) -> None:
        """SIGKILL to every process of the tree at once, as a container's or a node's death does."""
        kill_all(self.processes())
        self.process.wait()


def kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


def process_role(cmdline: list[str]) -> str:
    """What a process of a server tree does: BentoML names each service's workers on their command
    line; Triton's tree is PyTriton's process (the model's Python callables), `tritonserver` and a
    Python backend stub per model instance."""
    text = " ".join(cmdline)
    if "triton_python_backend_stub" in text:
        return "triton:python backend stub"
    if cmdline and Path(cmdline[0]).name == "tritonserver":
        return "triton:tritonserver"
    if "loadtests.triton_peer" in text:
        return "triton:pytriton callables"
    if "_bentoml_impl.worker.service" in text:
        match = re.search(r"--service-name[ =](\S+)", text)
        return f"worker:{match.group(1)}" if match else "worker"
    if "bentoml" in text and " serve " in f" {text} ":
        return "supervisor"
    return "server"


@contextlib.contextmanager
def serving(env: dict[str, str], log_path: Path, target: str = SERVICE, cwd: Path = REPO):
    """A ready `bentoml serve target` for the `with` block, stopped after it."""
    server = Server.bentoml(target, env, log_path, cwd)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


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


# --- reading /metrics (Prometheus text format) ------------------------------------------------------


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0] if "{" not in line else line[: line.rindex("}")]))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def adaptive_batches(metrics: str, model: str) -> tuple[float, float]:
    """(batches, images) of the model's batching queue so far: imgcls_batch_size_images' count and sum."""
    return (metric_value(metrics, "imgcls_batch_size_images_count", model=model),
            metric_value(metrics, "imgcls_batch_size_images_sum", model=model))
