"""Where a service level's time and cores go: its mean latency split by stage (from the service's
/metrics), and its CPU time per image by process beside the same work done by the parts alone."""

from __future__ import annotations

from . import levels


def latency_breakdown(level: dict) -> dict[str, float] | None:
    """A service level's mean latency split by where it went (ms), from the /metrics differences."""
    server = level.get("server") or {}
    if not server.get("public_ms_per_request") or server.get("queue_wait_ms_per_image") is None or not level["latency_ms"]["mean"]:
        return None
    ort = server["ort_ms_per_batch"] or 0.0
    wait = server["queue_wait_ms_per_image"]
    decode = server["decode_ms_per_request"]
    return {
        "ONNX Runtime (the whole batch)": ort,
        "waiting in the batching queue": wait,
        "decode": decode,
        "HTTP, form, threads, JSON": max(0.0, server["public_ms_per_request"] - ort - wait - decode),
        "outside the server: network, load generator": max(0.0, level["latency_ms"]["mean"] - server["public_ms_per_request"]),
    }


def cpu_per_image(results: dict, level: dict) -> tuple[dict[str, float], dict[str, float]]:
    """CPU ms per image of a service level by process, and of the parts alone for the same level."""
    per_request = level["images_per_request"]
    cpu = level["server_cpu_ms_per_request"]
    used = {"load generator": (level["client_cpu_ms_per_request"] or 0.0) / per_request,
            "service worker": cpu.get("worker:image_classifier", 0.0) / per_request}
    floor = levels.find(results.get("floor"), level["concurrency"], per_request)
    if not (floor and results.get("engine") and results.get("decode")):
        return used, {}
    # the engine at the batch size the service ran (its mean batch, from /metrics)
    batch = (level.get("server") or {}).get("mean_batch") or 1
    engine = [b for b in results["engine"]["batches"] if b["batch_size"] <= round(batch)] or results["engine"]["batches"][:1]
    return used, {"floor and load generator": (sum(floor["server_cpu_ms_per_request"].values())
                                               + (floor["client_cpu_ms_per_request"] or 0.0)) / per_request,
                  "decode": results["decode"]["cpu_ms_per_image"],
                  "engine": engine[-1]["cpu_ms_per_image"]}
