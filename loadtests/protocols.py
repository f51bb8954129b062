"""The service's two protocols side by side (the bench's v2 stage): /classify's multipart against
the Open Inference Protocol's binary infer, level by level, and whether both gave each file the
same top-1 label."""

from __future__ import annotations

from . import levels


def comparison(results: dict) -> list[dict]:
    """A row per level measured on both of the service's protocols (two servers with the same
    settings, one after the other): /classify's multipart and the Open Inference Protocol's binary
    infer, and their ratio."""
    rows = []
    for level in (results.get("v2") or {}).get("levels", []):
        ours = levels.find(results.get("service"), level["concurrency"], level["images_per_request"])
        if ours is None:
            continue
        rows.append({"concurrency": level["concurrency"], "images_per_request": level["images_per_request"],
                     "ratio": level["images_per_s"] / ours["images_per_s"] if ours["images_per_s"] else None,
                     "classify": _side(ours), "v2": _side(level)})
    return rows


def _side(level: dict) -> dict:
    cpu_ms = sum(level["server_cpu_ms_per_request"].values()) + (level["client_cpu_ms_per_request"] or 0.0)
    return {"images_per_s": level["images_per_s"], "p50_ms": level["latency_ms"]["p50"], "p99_ms": level["latency_ms"]["p99"],
            "errors": level["errors"], "cpu_ms_per_image": cpu_ms / level["images_per_request"],
            "mean_batch": (level.get("server") or {}).get("mean_batch")}


def agreement(results: dict, files: list[str]) -> dict:
    """Whether /classify and v2 infer gave each file the same top-1 label."""
    classify, v2 = (results.get("service") or {}).get("top1") or [], (results.get("v2") or {}).get("top1") or []
    differ = [{"file": name, "classify": a, "v2": b} for name, a, b in zip(files, classify, v2) if a is None or a != b]
    return {"files": len(v2), "same": bool(v2) and len(classify) == len(v2) and not differ, "different": differ}
