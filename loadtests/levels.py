"""Finding things in a benchmark run's results: a stage's level, the ceiling at a level, the
engine at one batch size, a level's tail."""

from __future__ import annotations


def find(stage: dict | None, concurrency: int, images_per_request: int) -> dict | None:
    """The level of `stage` (a stage's results: {"levels": [...]}) at concurrency x images per request."""
    for level in (stage or {}).get("levels", []):
        if level["concurrency"] == concurrency and level["images_per_request"] == images_per_request:
            return level
    return None


def of(levels: list[dict], per_request: int) -> tuple[list[int], list[dict]]:
    """The levels with `per_request` images per request, by concurrency, and their concurrencies."""
    chosen = sorted((l for l in levels if l["images_per_request"] == per_request), key=lambda l: l["concurrency"])
    return [l["concurrency"] for l in chosen], chosen


def ceiling(results: dict, concurrency: int, images_per_request: int) -> float | None:
    """The ceiling in images/s at a level (verdicts.ceilings' row), None where there is none."""
    for row in results.get("ceiling", []):
        if row["concurrency"] == concurrency and row["images_per_request"] == images_per_request:
            return row["ceiling_images_per_s"]
    return None


def engine_batch(engine: dict | None, batch_size: int) -> dict | None:
    """The engine's measurement at exactly `batch_size` (None where that size was not measured)."""
    for batch in (engine or {}).get("batches", []):
        if batch["batch_size"] == batch_size:
            return batch
    return None


def tail(level: dict | None) -> float | None:
    """A level's p99 / p50 (None where either is missing)."""
    if not level:
        return None
    p50, p99 = level["latency_ms"]["p50"], level["latency_ms"]["p99"]
    return p99 / p50 if p50 and p99 else None
