"""The two stages of the request path that do the work, measured alone in this process with the
service's own code and settings: the raw engine (service.engine.Model: the same ONNX Runtime
session options, threads and provider as the service) and decoding
(service.imaging.preprocess, as the service calls it, on the same files).
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from service import engine, imaging

from .machine import busy_seconds
from service.registry import ModelPackage
from service.settings import Settings


def _timed_loop(step, seconds: float, min_runs: int) -> list[float]:
    """Call `step()` for `seconds` (at least `min_runs` times); the duration of each call."""
    durations = []
    deadline = time.perf_counter() + seconds
    while len(durations) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
    return durations


def measure_decode(files: list[Path], package: ModelPackage, config: Settings, *, threads: int,
                   seconds: float = 3.0) -> dict:
    """Read + decode + orient + convert + resize, as ImageClassifier._decode_all does for each file.

    Single-image latency with one thread (each file in turn), then throughput with `threads`
    threads (the service decodes on a thread per core) over the same files."""
    def one(path: Path) -> np.ndarray:
        return imaging.preprocess(path.read_bytes(), package.input, max_pixels=config.max_image_pixels,
                                  jpeg_reduce=config.jpeg_reduce)

    for path in files[:2]:
        one(path)  # warm: imports, page cache
    order = itertools.cycle(files)
    cpu_start, busy_start, wall_start = time.process_time(), busy_seconds(), time.perf_counter()
    latencies = _timed_loop(lambda: one(next(order)), seconds, min_runs=len(files))
    cpu_one_thread = time.process_time() - cpu_start
    others = _others_cores(busy_start, cpu_one_thread, wall_start)

    counts = [0] * threads
    stop = threading.Event()

    def worker(index: int) -> None:
        position = index
        while not stop.is_set():
            one(files[position % len(files)])
            position += threads
            counts[index] += 1

    with ThreadPoolExecutor(threads) as pool:
        start, cpu_start, busy_start = time.perf_counter(), time.process_time(), busy_seconds()
        futures = [pool.submit(worker, i) for i in range(threads)]
        time.sleep(seconds)
        stop.set()
        for future in futures:
            future.result()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "files": len(files),
        "threads": threads,
        "latency_ms": _percentiles_ms(latencies),
        "images_per_s_one_thread": len(latencies) / sum(latencies),
        "images_per_s": sum(counts) / elapsed,
        # CPU time (all threads of this process) per image: what decoding costs whatever else runs
        "cpu_ms_per_image_one_thread": 1000 * cpu_one_thread / len(latencies),
        "cpu_ms_per_image": 1000 * cpu / max(1, sum(counts)),
        "other_processes_cores": max(others, _others_cores(busy_start, cpu, start)),
    }


def measure_engine(package: ModelPackage, images: np.ndarray, batch_sizes: list[int], *, threads: list[int],
                   seconds: float = 2.0) -> dict:
    """ONNX Runtime alone on preprocessed tensors (`images`, repeated to fill the largest batch), with
    each number of intra-op threads in `threads`. "batches" keeps, for each batch size, the fastest:
    the engine at its best on this machine, whatever the service is set to use."""
    pool = np.concatenate([images] * -(-max(batch_sizes) // len(images)))
    by_threads: dict[int, list[dict]] = {}
    provider = ""
    for count in threads:
        model = engine.Model(package, count, require_gpu=False)
        provider = model.provider
        by_threads[count] = []
        for size in batch_sizes:
            batch = np.ascontiguousarray(pool[:size])
            model.run(batch)  # warm: ONNX Runtime allocates per shape on its first run
            cpu_start, busy_start, wall_start = time.process_time(), busy_seconds(), time.perf_counter()
            durations = _timed_loop(lambda batch=batch: model.run(batch), seconds, min_runs=3)
            cpu = time.process_time() - cpu_start
            by_threads[count].append({"batch_size": size, "threads": count, "runs": len(durations),
                                      "latency_ms": _percentiles_ms(durations),
                                      "images_per_s": size * len(durations) / sum(durations),
                                      "cpu_ms_per_image": 1000 * cpu / (size * len(durations)),
                                      "other_processes_cores": _others_cores(busy_start, cpu, wall_start)})
    best = [max(candidates, key=lambda b: b["images_per_s"]) for candidates in zip(*by_threads.values())]
    return {"provider": provider, "threads": threads, "batches": best,
            "by_threads": {str(count): results for count, results in by_threads.items()}}


def engine_at(engine_results: dict, batch_size: int) -> dict:
    """The fastest measured batch size not above `batch_size` (a level can fill no larger batch)."""
    fitting = [b for b in engine_results["batches"] if b["batch_size"] <= batch_size] or engine_results["batches"][:1]
    return max(fitting, key=lambda b: b["images_per_s"])


def _others_cores(busy_start: float, own_cpu: float, wall_start: float) -> float:
    """Cores the rest of the machine kept busy since `busy_start` (other people's work on a shared machine)."""
    return max(0.0, (busy_seconds() - busy_start - own_cpu) / (time.perf_counter() - wall_start))


def _percentiles_ms(seconds: list[float]) -> dict:
    values = np.asarray(seconds) * 1000
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "p99": float(np.percentile(values, 99)), "mean": float(values.mean()),
            "stdev": float(statistics.pstdev(values)) if len(values) > 1 else 0.0}
