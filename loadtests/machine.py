"""What the benchmark ran on: CPU, cores, memory, GPU, library versions, and what else was running."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from importlib import metadata

import psutil

from service import settings

PACKAGES = ("onnxruntime-gpu", "onnxruntime", "bentoml", "numpy", "pillow", "simplejpeg", "aiohttp", "uvicorn",
            "tensorflow", "keras", "locust")


def describe() -> dict:
    return {
        "cpu": _cpu_model(),
        "cores_usable": settings.cpu_count(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": _gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: version for name in PACKAGES if (version := _version(name))},
    }


def activity(sample_s: float = 1.0, top: int = 5) -> dict:
    """The load average and the processes using the most CPU over `sample_s` (this one's excluded)."""
    processes = []
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            process.cpu_percent(None)
            processes.append(process)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    busy = []
    for process in processes:
        try:
            percent = process.cpu_percent(None)
        except psutil.Error:
            continue
        if percent >= 5 and process.pid != os.getpid():
            command = " ".join(process.info["cmdline"] or [process.info["name"] or "?"])
            busy.append({"pid": process.pid, "cpu_percent": round(percent), "command": command[:160]})
    busy.sort(key=lambda p: -p["cpu_percent"])
    return {"load_average": [round(x, 2) for x in os.getloadavg()], "busy_processes": busy[:top]}


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes) since it started."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout
            return [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return ["NVIDIA GPU (nvidia-smi not found)"] if settings.gpu_present() else []


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
