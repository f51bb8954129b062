"""The two stages of the request path that do the work, measured alone in this process with the
service's own code and settings: the raw engine (service.engine.Model: the same ONNX Runtime
session options, threads and provider as the inference service) and decoding
(service.imaging.preprocess, as the public service calls it, on the same files).
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
    latencies = _timed_loop(lambda: one(next(order)), seconds, min_runs=len(files))

    counts = [0] * threads
    stop = threading.Event()

    def worker(index: int) -> None:
        position = index
        while not stop.is_set():
            one(files[position % len(files)])
            position += threads
            counts[index] += 1

    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        futures = [pool.submit(worker, i) for i in range(threads)]
        time.sleep(seconds)
        stop.set()
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - start
    return {
        "files": len(files),
        "threads": threads,
        "latency_ms": _percentiles_ms(latencies),
        "images_per_s_one_thread": len(latencies) / sum(latencies),
        "images_per_s": sum(counts) / elapsed,
    }


def measure_engine(package: ModelPackage, images: np.ndarray, batch_sizes: list[int], *, threads: int,
                   seconds: float = 2.0) -> dict:
    """ONNX Runtime alone on preprocessed tensors (`images`, repeated to fill the largest batch)."""
    model = engine.Model(package, threads, require_gpu=False)
    pool = np.concatenate([images] * -(-max(batch_sizes) // len(images)))
    results = []
    for size in batch_sizes:
        batch = np.ascontiguousarray(pool[:size])
        model.run(batch)  # warm: ONNX Runtime allocates per shape on its first run
        durations = _timed_loop(lambda batch=batch: model.run(batch), seconds, min_runs=3)
        results.append({"batch_size": size, "runs": len(durations), "latency_ms": _percentiles_ms(durations),
                        "images_per_s": size * len(durations) / sum(durations)})
    return {"provider": model.provider, "threads": threads, "batches": results}


def engine_rate(engine_results: dict, batch_size: int) -> float:
    """Images/s of the largest measured batch size not above `batch_size`."""
    fitting = [b for b in engine_results["batches"] if b["batch_size"] <= batch_size] or engine_results["batches"][:1]
    return fitting[-1]["images_per_s"]


def _percentiles_ms(seconds: list[float]) -> dict:
    values = np.asarray(seconds) * 1000
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "p99": float(np.percentile(values, 99)), "mean": float(values.mean()),
            "stdev": float(statistics.pstdev(values)) if len(values) > 1 else 0.0}
