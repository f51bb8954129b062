"""The benchmark's peer (`python -m loadtests.bench --peer triton`): NVIDIA Triton Inference Server
serving the same model package (loadtests/triton_peer.py, run by the Python of its own virtual
environment), in every configuration of queue delay x model instances, each measured with the
same load generator and files as the service, one server after the other; and what the report
makes of it: at each level the best configuration (the most images/s without errors, as a Triton
user would tune it) against the service, and whether both gave every file the same top-1 class.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from service.registry import ModelPackage

from . import levels, loadgen, triton_peer, v2
from .servers import REPO, Server, free_port, metric_value

VENV = REPO / ".venv-triton"  # the Makefile's TRITON_VENV: `make triton-peer` makes it from pyproject.toml
PYTHON = VENV / "bin" / "python"
QUEUE_DELAYS_MS = (0.0, 1.0, 2.0)
INSTANCES = (1, 2)
MAX_BATCH_SIZE = 32
# What the peer's venv runs, for the report.
_VERSIONS = ("nvidia-pytriton", "numpy", "onnxruntime-gpu", "onnxruntime", "simplejpeg")


@dataclass(frozen=True)
class Configuration:
    """One way to configure Triton for the model."""

    instances: int
    queue_delay_us: int
    max_batch_size: int = MAX_BATCH_SIZE

    @property
    def label(self) -> str:
        return (f"{self.instances} instance{'s' if self.instances > 1 else ''}, "
                f"queue delay {self.queue_delay_us / 1000:g} ms")

    @property
    def name(self) -> str:
        """Its server log's name."""
        return f"triton-{self.instances}x-{self.queue_delay_us}us"


def configurations(queue_delays_ms: list[float], instances: list[int], max_batch_size: int) -> list[Configuration]:
    return [Configuration(count, round(1000 * delay), max_batch_size)
            for count, delay in itertools.product(dict.fromkeys(instances), dict.fromkeys(queue_delays_ms))]


def python_problem(python: Path) -> str | None:
    """Why the peer cannot start with `python`, or None."""
    if not python.is_file():
        return (f"--peer triton runs Triton in a virtual environment of its own (PyTriton needs numpy < 2): "
                f"{python} is missing; make it with `make triton-peer` (pyproject.toml's triton-peer extra)")
    return None


def server(python: Path, model: str, config: Configuration, env: dict[str, str], log_path: Path) -> Server:
    """The peer in `config`, starting (Server.wait_ready says when its model is loaded)."""
    grpc_port, metrics_port = free_port(), free_port()  # Triton opens both, whether used or not
    command = [str(python), "-m", "loadtests.triton_peer", "--model", model, "--max-batch-size", str(config.max_batch_size),
               "--queue-delay-us", str(config.queue_delay_us), "--instances", str(config.instances),
               "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    name = model.partition(":")[0]
    return Server(command, env, log_path, ready_path=f"/v2/models/{name}/ready",
                  metrics_url=f"http://127.0.0.1:{metrics_port}/metrics")


def endpoint(package: ModelPackage) -> loadgen.Endpoint:
    """Triton's KServe v2 HTTP endpoint for the model, with binary tensors."""
    return v2.infer_endpoint(package.name, triton_peer.INPUT, triton_peer.OUTPUT, package.classes)


def metric_deltas(before: str, after: str, model: str, requests: int) -> dict:
    """What Triton's /metrics say about a window: batches run, their mean size, the mean queue wait."""
    def delta(name: str) -> float:
        return metric_value(after, name, model=model) - metric_value(before, name, model=model)

    batches, images, answered = delta("nv_inference_exec_count"), delta("nv_inference_count"), delta("nv_inference_request_success")
    return {"batches": batches, "mean_batch": images / batches if batches else None,
            "queue_ms_per_request": delta("nv_inference_queue_duration_us") / 1000 / answered if answered else None}


def top1(target: Server, how: loadgen.Endpoint, files: list[Path]) -> list[str | None]:
    """Each file's top-1 label from `target`, one request at a time (None: no answer for it)."""
    labels = []
    with requests.Session() as session:
        for path in files:
            body = how.bodies([(path.name, path.read_bytes())], 1)[0]
            response = session.post(target.url + how.path, data=body.data, timeout=60,
                                    headers={"Content-Type": body.content_type, **body.headers})
            found = how.labels(how.parse(response.content, response.headers)) if response.ok else None
            labels.append(found[0] if found and len(found) == 1 else None)
    return labels


def versions(target: Server, python: Path) -> dict[str, str]:
    """tritonserver's version (its /v2 metadata) and the peer venv's packages."""
    found = {"tritonserver": requests.get(target.url + "/v2", timeout=10).json().get("version", "?")}
    script = ("import importlib.metadata as m, json\nfound = {}\nfor name in %r:\n    try:\n        found[name] = m.version(name)\n"
              "    except m.PackageNotFoundError:\n        pass\nprint(json.dumps(found))" % (_VERSIONS,))
    run = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=60)
    return found | (json.loads(run.stdout) if run.returncode == 0 else {})


def measured(config: Configuration, measured_levels: list[dict], labels: list[str | None]) -> dict:
    return {"label": config.label, **asdict(config), "levels": measured_levels, "top1": labels}


# --- the comparison -------------------------------------------------------------------------------------


def best(peer: dict, concurrency: int, images_per_request: int) -> tuple[dict, dict] | None:
    """(configuration, its level) with the most images/s at this level, one without errors first."""
    candidates = [(config, level) for config in peer["configurations"]
                  if (level := levels.find(config, concurrency, images_per_request))]
    if not candidates:
        return None
    return max(candidates, key=lambda pair: (pair[1]["errors"] == 0, pair[1]["images_per_s"]))


def cpu_ms_per_image(level: dict) -> float:
    """The whole server process tree's CPU time per image (the load generator's not included)."""
    return sum(level["server_cpu_ms_per_request"].values()) / level["images_per_request"]


def comparison(results: dict) -> list[dict]:
    """A row per level that both the service and the peer measured: each side's figures, the ratio
    of their images/s (service / Triton's best configuration) and that configuration."""
    rows = []
    for level in (results.get("service") or {}).get("levels", []):
        found = best(results["peer"], level["concurrency"], level["images_per_request"])
        if found is None:
            continue
        config, peer_level = found
        rows.append({"concurrency": level["concurrency"], "images_per_request": level["images_per_request"],
                     "configuration": config["label"],
                     "ratio": level["images_per_s"] / peer_level["images_per_s"] if peer_level["images_per_s"] else None,
                     "service": _side(level), "triton": _side(peer_level)})
    return rows


def _side(level: dict) -> dict:
    return {"images_per_s": level["images_per_s"], "p50_ms": level["latency_ms"]["p50"], "p99_ms": level["latency_ms"]["p99"],
            "errors": level["errors"], "cpu_ms_per_image": cpu_ms_per_image(level)}


def agreement(results: dict, files: list[str]) -> dict:
    """Whether the service and every Triton configuration gave each file the same top-1 label."""
    service = results["service"].get("top1") or []
    differ = []
    for config in results["peer"]["configurations"]:
        for name, ours, theirs in zip(files, service, config["top1"]):
            if ours is None or ours != theirs:
                differ.append({"file": name, "service": ours, "triton": theirs, "configuration": config["label"]})
    return {"files": len(service), "configurations": len(results["peer"]["configurations"]),
            "same": bool(service) and not differ, "different": differ}
