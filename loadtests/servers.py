"""Server processes for the benchmark and the tests: an HTTP server command (`bentoml serve`, the
naive Keras server, Triton through PyTriton) started as service.launch starts the service (its own
process group, a free port, a log file, readiness), and what it reports: the CPU time of its
process tree and its Prometheus /metrics.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import psutil
import requests

from service import launch
from service.launch import REPO, SERVICE, free_port, serve_env  # noqa: F401 - what the benchmark and the tests start with


class Server(launch.Process):
    """A server process (launch.Process) and what it reports: the CPU time of its process tree and its /metrics."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO,
                 ready_path: str = "/readyz", metrics_url: str | None = None) -> None:
        super().__init__(command, env, log_path, cwd, ready_path)
        self.metrics_url = metrics_url or self.url + "/metrics"  # Triton serves them on a port of their own

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
        super().stop()
        kill_all(tree)  # none left after a clean exit; after a crash of the supervisor, its orphans

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


def serving(env: dict[str, str], log_path: Path, target: str = SERVICE, cwd: Path = REPO):
    """A ready `bentoml serve target` (a Server) for the `with` block, stopped after it."""
    return launch.serving(env, log_path, target, cwd, kind=Server)


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
