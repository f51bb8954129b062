"""The benchmark's targets and a run's verdicts on them: the ceiling of each level, the 1-client
budget, and a row per target saying what was measured and whether it was met."""

from __future__ import annotations

from . import components, levels

# The targets of issue 5, for one image per request: the thresholds the verdicts check, not
# measurements (what the kept runs measured against them is in docs/benchmarks.md).
TARGET_CONCURRENCY = 16
TARGET_CEILING_SHARE = 0.8
TARGET_NAIVE_FACTOR = 5.0
TARGET_C1_SLACK_MS = 3.0
TAIL_FACTOR = 3.0

VERDICTS = {True: "met", False: "missed", None: "not measured"}


def ceilings(results: dict) -> list[dict]:
    """1 / (1/engine + 1/decode + 1/floor) for each level, in images/s.

    engine: the fastest measured batch size that the level can fill (clients x images per request),
    with the faster thread count; floor: the floor's requests/s at the same level x images per request.
    None of the three depends on the service's settings: the ceiling is the machine's."""
    if not all(results.get(stage) for stage in ("engine", "decode", "floor")):
        return []
    decode = results["decode"]["images_per_s"]
    rows = []
    for floor in results["floor"]["levels"]:
        fastest = components.engine_at(results["engine"], floor["concurrency"] * floor["images_per_request"])
        batch, engine = fastest["batch_size"], fastest["images_per_s"]
        floor_images = floor["images_per_s"]
        rows.append({"concurrency": floor["concurrency"], "images_per_request": floor["images_per_request"],
                     "engine_batch": batch, "engine_images_per_s": engine, "decode_images_per_s": decode,
                     "floor_images_per_s": floor_images,
                     "ceiling_images_per_s": 1 / (1 / engine + 1 / decode + 1 / floor_images) if floor_images else 0.0})
    return rows


def one_client_budget(results: dict) -> dict:
    """The 1-client target's terms: the engine's batch-1 p50, one decode's p50 and the floor's p50 at
    1 client x 1 image, their sum ("budget", None where a term is missing), the service's p50 at the
    same level, and "missing": what was not measured."""
    service1 = levels.find(results.get("service"), 1, 1)
    floor1 = levels.find(results.get("floor"), 1, 1)
    engine1 = levels.engine_batch(results.get("engine"), 1)
    terms = {"engine": engine1["latency_ms"]["p50"] if engine1 else None,
             "decode": results["decode"]["latency_ms"]["p50"] if results.get("decode") else None,
             "floor": floor1["latency_ms"]["p50"] if floor1 else None}
    p50 = service1["latency_ms"]["p50"] if service1 else None
    names = {"engine": "engine batch 1", "decode": "decode", "floor": "floor at 1 client x 1 image"}
    missing = [names[k] for k, v in terms.items() if v is None] + (["service at 1 client x 1 image"] if p50 is None else [])
    budget = None if None in terms.values() else sum(terms.values())
    return {**terms, "budget": budget, "p50": p50, "missing": missing}


def _row(target: str, measured: str, met: bool | None, verdict: str | None = None) -> dict:
    """A target's row. met: True / False where the harness can judge; None otherwise, and verdict
    says why ("not measured"; "see text": a tail to explain in writing; "reported": not a target)."""
    return {"target": target, "measured": measured, "met": met, "verdict": verdict or VERDICTS[met]}


def _errors_text(measured: list[dict]) -> str:
    total = sum(level["errors"] for level in measured)
    answered = sum(level["requests"] for level in measured)
    if not total:
        return f"0 errors, {answered} requests answered"
    where = []
    for level in measured:
        if level["errors"]:
            kinds = ", ".join(f"{'HTTP ' + kind if kind.isdigit() else kind} x{count}"
                              for kind, count in sorted(level.get("error_kinds", {}).items()))
            where.append(f"{level['concurrency']}x{level['images_per_request']}: {level['errors']}" + (f" ({kinds})" if kinds else ""))
    return f"{total} errors, {answered} answered; at " + "; ".join(where)


def targets(results: dict) -> list[dict]:
    """Each target of issue 5 (one image per request) with what was measured and a verdict, plus the
    errors of every level (a row that reports, not a target)."""
    service = results.get("service")
    rows = []
    at16 = levels.find(service, TARGET_CONCURRENCY, 1)
    ceiling16 = levels.ceiling(results, TARGET_CONCURRENCY, 1)
    naive16 = levels.find(results.get("naive"), TARGET_CONCURRENCY, 1)
    share = at16["images_per_s"] / ceiling16 if at16 and ceiling16 else None
    rows.append(_row(f"{TARGET_CONCURRENCY} clients: >= {TARGET_CEILING_SHARE:.0%} of the ceiling",
                     f"{share:.0%} ({at16['images_per_s']:.1f} of {ceiling16:.1f} images/s)" if share is not None else "-",
                     None if share is None else share >= TARGET_CEILING_SHARE))
    factor = at16["images_per_s"] / naive16["images_per_s"] if at16 and naive16 and naive16["images_per_s"] else None
    rows.append(_row(f"{TARGET_CONCURRENCY} clients: >= {TARGET_NAIVE_FACTOR:.0f}x the naive baseline",
                     f"{factor:.1f}x ({at16['images_per_s']:.1f} vs {naive16['images_per_s']:.1f} images/s)"
                     if factor is not None else "-",
                     None if factor is None else factor >= TARGET_NAIVE_FACTOR))
    budget = one_client_budget(results)
    target = f"1 client: p50 within {TARGET_C1_SLACK_MS:.0f} ms of engine batch-1 + one decode + the floor's p50"
    if budget["missing"]:
        rows.append(_row(target, "- (not measured: " + ", ".join(budget["missing"]) + ")", None))
    else:
        p50 = budget["p50"]
        rows.append(_row(target, f"p50 {p50:.1f} ms vs {budget['budget']:.1f} ms (engine {budget['engine']:.1f} + decode "
                                 f"{budget['decode']:.1f} + floor {budget['floor']:.1f}): {p50 - budget['budget']:+.1f} ms",
                         p50 <= budget["budget"] + TARGET_C1_SLACK_MS))
    measured = (service or {}).get("levels", [])
    one_image = [level for level in measured if level["images_per_request"] == 1]
    rows.append(_row("no errors at any level (1 image per request)", _errors_text(one_image) if one_image else "-",
                     None if not one_image else sum(level["errors"] for level in one_image) == 0))
    sizes = sorted({level["images_per_request"] for level in measured})
    rows.append(_row(f"errors at every level ({' and '.join(map(str, sizes)) or 'any'} images per request; reported, not a target)",
                     _errors_text(measured) if measured else "-", None, "reported" if measured else None))
    rows.append(_tail_row(results, one_image))
    return rows


def _tail_row(results: dict, one_image: list[dict]) -> dict:
    """p99 reported at every level, and explained where it exceeds TAIL_FACTOR x p50. The harness
    cannot judge an explanation: met where no level's p99 is above TAIL_FACTOR x its p50; where one
    is, "see text", with those levels and the floor's p99/p50 at the same level beside them (a floor
    tail as long says the framework, not the work, makes it); missed where a level has no p99."""
    target = f"p99 at every level; explained where > {TAIL_FACTOR:.0f}x p50 (1 image per request)"
    if not one_image:
        return _row(target, "-", None)
    unreported = [level["concurrency"] for level in one_image if level["latency_ms"].get("p99") is None]
    if unreported:
        return _row(target, "no p99 at " + ", ".join(clients(c) for c in unreported), False)
    tails = []
    for level in one_image:
        if levels.tail(level) and levels.tail(level) > TAIL_FACTOR:
            floor = levels.find(results.get("floor"), level["concurrency"], level["images_per_request"])
            context = f", the floor's {levels.tail(floor):.1f}x" if floor and levels.tail(floor) else ", no floor measured"
            tails.append(f"{clients(level['concurrency'])} ({levels.tail(level):.1f}x{context})")
    if not tails:
        worst = max(one_image, key=lambda level: levels.tail(level) or 0.0)
        return _row(target, f"p99 <= {TAIL_FACTOR:.0f}x p50 everywhere (at most {levels.tail(worst) or 0:.1f}x, "
                            f"{clients(worst['concurrency'])})", True)
    return _row(target, f"p99 > {TAIL_FACTOR:.0f}x p50 at " + "; ".join(tails), None, "see text")


def clients(count: int) -> str:
    return f"{count} client{'s' if count != 1 else ''}"
