"""python -m loadtests.soak: the service held at a steady share of its maximum for minutes, then
overloaded; what it answered and what its memory did, written as a report.

  1. ramp      closed-loop levels (1, 4, 16, 64 clients, --ramp-seconds each): the most images/s
               the service answers here, without errors, is its maximum
  2. soak      an open loop (requests sent on a fixed schedule, whether earlier ones were answered or
               not, as independent users send them) at --soak-share of the maximum for --soak-seconds:
               every answer's status and latency, and the resident memory of the server's process
               tree sampled each second
  3. overload  the same at --overload-factor times the maximum for --overload-seconds: the service
               should answer 200 or shed with 503 (Retry-After), nothing else: no timeouts, no 500s,
               no dropped connections
  4. after     --soak-share again for a short while: it recovers by itself

Verdicts: the soak had no errors; memory after warm-up (--warmup-seconds into the soak) stayed
within --memory-tolerance of its value at the end of warm-up; the overload gave only 200s and
503s; the service answered again after it. The report (soak.md, soak.json, soak.png, the
server's log) goes to --out; docs/reliability.md keeps the figures of a run with its command.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import aiohttp
import numpy as np

from . import command, loadgen, machine
from .servers import REPO, SERVICE, Server, metric_value

RAMP_CONCURRENCY = (1, 4, 16, 64)
ACCEPTED_UNDER_OVERLOAD = ("200", "503")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command.parser("python -m loadtests.soak", __doc__)
    parser.add_argument("--images-per-request", type=int, default=1, help="images in each request (default: 1)")
    parser.add_argument("--ramp-seconds", type=float, default=8.0, help="seconds measured at each ramp level (default: 8)")
    parser.add_argument("--soak-share", type=float, default=0.7, help="the soak's rate as a share of the maximum (default: 0.7)")
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="length of the soak (default: 600)")
    parser.add_argument("--warmup-seconds", type=float, default=60.0,
                        help="the soak's first seconds, after which memory must stay flat (default: 60)")
    parser.add_argument("--memory-tolerance", type=float, default=0.05,
                        help="how far memory may move after warm-up, as a share (default: 0.05)")
    parser.add_argument("--overload-factor", type=float, default=4.0, help="the overload's rate over the maximum (default: 4)")
    parser.add_argument("--overload-seconds", type=float, default=60.0, help="length of the overload (default: 60)")
    parser.add_argument("--after-seconds", type=float, default=20.0, help="the soak's rate again after the overload (default: 20)")
    parser.add_argument("--max-outstanding", type=int, default=4096,
                        help="requests the load generator keeps open at most; a request it cannot send on time "
                             "counts as 'not sent' (default: 4096)")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/soak-MODEL-TIME)")
    args = parser.parse_args(argv)
    if args.limit < 1 or args.images_per_request < 1 or args.max_outstanding < 1:
        parser.error("--limit, --images-per-request and --max-outstanding must be at least 1")
    if min(args.ramp_seconds, args.soak_seconds, args.overload_seconds, args.soak_share, args.overload_factor,
           args.memory_tolerance) <= 0 or args.after_seconds < 0:
        parser.error("durations, --soak-share, --overload-factor and --memory-tolerance must be positive")
    if not 0 <= args.warmup_seconds < args.soak_seconds:
        parser.error("--warmup-seconds must be shorter than --soak-seconds")
    return args


# --- an open loop ----------------------------------------------------------------------------------


@dataclass
class Phase:
    """One open-loop phase: each request's send time (from the phase's start), latency and outcome
    ("200", "503", "timeout", a connection error's name, or "not sent"), and memory samples."""

    name: str
    rate_per_s: float
    seconds: float
    sent_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    outcome: list[str] = field(default_factory=list)
    memory: list[tuple[float, float]] = field(default_factory=list)  # (seconds from the start, MiB)

    def summary(self, images_per_request: int) -> dict:
        outcomes: dict[str, int] = {}
        for outcome in self.outcome:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        ok = np.asarray([lat for lat, o in zip(self.latency_s, self.outcome) if o == "200"]) * 1000
        return {"name": self.name, "rate_per_s": self.rate_per_s, "seconds": self.seconds, "requests": len(self.outcome),
                "outcomes": dict(sorted(outcomes.items())),
                "answered_images_per_s": outcomes.get("200", 0) * images_per_request / self.seconds,
                "latency_ms": {f"p{p}": float(np.percentile(ok, p)) if len(ok) else None for p in (50, 95, 99)}
                              | {"max": float(ok.max()) if len(ok) else None},
                "memory_mib": [[round(t, 1), round(m, 1)] for t, m in self.memory]}


def resident_mib(server: Server) -> float:
    """The resident set of the server's whole process tree, MiB."""
    total = 0
    for process in server.processes():
        try:
            total += process.memory_info().rss
        except Exception:  # a process gone between listing and reading
            continue
    return total / 2**20


async def _open_loop(url: str, bodies: list[loadgen.Body], phase: Phase, *, memory: Callable[[], float] | None,
                     timeout_s: float, max_outstanding: int, stop: threading.Event | None) -> None:
    loop = asyncio.get_running_loop()
    headers = [{"Content-Type": body.content_type, **body.headers} for body in bodies]
    outstanding = asyncio.Semaphore(max_outstanding)
    connector = aiohttp.TCPConnector(limit=max_outstanding, force_close=False)
    stop_sampling = threading.Event()

    def sample(started: float) -> None:  # in a thread: psutil walks /proc
        while memory and not stop_sampling.is_set():
            phase.memory.append((time.monotonic() - started, memory()))
            stop_sampling.wait(1.0)

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     skip_auto_headers=("User-Agent",)) as session:

        async def one(index: int, due: float) -> None:
            try:
                async with session.post(url, data=bodies[index % len(bodies)].data, headers=headers[index % len(bodies)]) as response:
                    await response.read()
                    outcome = str(response.status)
            except asyncio.TimeoutError:
                outcome = "timeout"
            except aiohttp.ClientError as err:
                outcome = type(err).__name__
            finally:
                outstanding.release()
            phase.sent_s.append(due - started)
            phase.latency_s.append(loop.time() - due)
            phase.outcome.append(outcome)

        started = loop.time()
        sampler = threading.Thread(target=sample, args=(time.monotonic(),), daemon=True)
        sampler.start()
        tasks = []
        count = int(phase.rate_per_s * phase.seconds)
        for index in range(count):
            if stop is not None and stop.is_set():
                phase.seconds = index / phase.rate_per_s
                break
            due = started + index / phase.rate_per_s
            await asyncio.sleep(max(0.0, due - loop.time()))
            if outstanding.locked():  # the generator's own limit, not the server's answer
                phase.sent_s.append(due - started)
                phase.latency_s.append(0.0)
                phase.outcome.append("not sent")
                continue
            await outstanding.acquire()
            tasks.append(asyncio.create_task(one(index, due)))
        await asyncio.gather(*tasks)
        stop_sampling.set()
        sampler.join()


def open_loop(url: str, bodies: list[loadgen.Body], phase: Phase, *, memory: Callable[[], float] | None = None,
              timeout_s: float = 90.0, max_outstanding: int = 1024, stop: threading.Event | None = None) -> Phase:
    """Send `phase.rate_per_s` requests a second for `phase.seconds`, or until `stop` is set
    (latency from each request's due time, so that a slow generator shows as latency, not as a
    lower rate); `memory()`, sampled each second in a thread, goes into phase.memory."""
    asyncio.run(_open_loop(url, bodies, phase, memory=memory, timeout_s=timeout_s, max_outstanding=max_outstanding,
                           stop=stop))
    return phase


def refusals(before: str, after: str) -> dict[str, int]:
    """The service's refusals between two /metrics texts, by reason (imgcls_rejected_requests_total)."""
    found = {}
    for line in after.splitlines():
        if line.startswith("imgcls_rejected_requests_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            count = metric_value(after, "imgcls_rejected_requests_total", reason=reason) - metric_value(
                before, "imgcls_rejected_requests_total", reason=reason)
            if count:
                found[reason] = int(count)
    return found


# --- verdicts --------------------------------------------------------------------------------------


def memory_verdict(memory: list[list[float]], warmup_s: float, tolerance: float) -> dict:
    """Memory after warm-up against its value at the end of warm-up: the largest move either way."""
    after = [(t, m) for t, m in memory if t >= warmup_s]
    if len(after) < 2:
        return {"met": None, "measured": "too few memory samples after warm-up"}
    base = after[0][1]
    low, high, last = min(m for _, m in after), max(m for _, m in after), after[-1][1]
    move = max(high - base, base - low) / base
    return {"met": move <= tolerance, "baseline_mib": base, "min_mib": low, "max_mib": high, "last_mib": last,
            "largest_move": move, "tolerance": tolerance,
            "measured": f"{base:.0f} MiB at {warmup_s:.0f} s; then {low:.0f}-{high:.0f} MiB, {last:.0f} at the end "
                        f"(largest move {move:.1%}, limit {tolerance:.0%})"}


def verdicts(results: dict, args: argparse.Namespace) -> list[dict]:
    soak, overload, after = (results["phases"].get(name) for name in ("soak", "overload", "after"))
    rows = []
    errors = {k: v for k, v in soak["outcomes"].items() if k != "200"}
    rows.append({"target": f"soak: {args.soak_seconds:.0f} s at {args.soak_share:.0%} of the maximum, no errors",
                 "met": not errors, "measured": f"{soak['outcomes'].get('200', 0)} answered 200, "
                 + (", ".join(f"{v} {k}" for k, v in errors.items()) or "no errors")})
    memory = memory_verdict(soak["memory_mib"], args.warmup_seconds, args.memory_tolerance)
    rows.append({"target": f"soak: memory flat after {args.warmup_seconds:.0f} s of warm-up (within {args.memory_tolerance:.0%})",
                 "met": memory["met"], "measured": memory["measured"]})
    others = {k: v for k, v in overload["outcomes"].items() if k not in ACCEPTED_UNDER_OVERLOAD}
    rows.append({"target": f"overload: {args.overload_factor:g}x the maximum, only 200 and 503",
                 "met": not others, "measured": ", ".join(f"{v} {k}" for k, v in overload["outcomes"].items())})
    if after:
        bad = {k: v for k, v in after["outcomes"].items() if k != "200"}
        rows.append({"target": "after the overload: the soak's rate answered again, no errors", "met": not bad,
                     "measured": ", ".join(f"{v} {k}" for k, v in after["outcomes"].items())})
    return rows


# --- the run ----------------------------------------------------------------------------------------

_START = time.monotonic()


def _progress(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.0f} s] {message}", flush=True)


def run(args: argparse.Namespace, out: Path) -> dict:
    chosen = command.setup(args)
    given, config, model, env, files = chosen.given, chosen.config, chosen.model, chosen.env, chosen.files
    bodies = loadgen.request_bodies(files, args.images_per_request, {"model": model.name})
    results: dict = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "command": "python -m loadtests.soak " + shlex.join(sys.argv[1:]),
                     "machine": machine.describe(), "activity_before": machine.activity(),
                     "model": args.model, "images": {"source": str(args.images or "generated"), "files": len(files)},
                     "images_per_request": args.images_per_request, "settings_given": given, "phases": {}}
    timeout_s = config.timeout_s + 30
    server = Server.bentoml(SERVICE, env, out / "server.log")
    try:
        server.wait_ready(300)
        url = server.url + "/classify"
        ramp = []
        for concurrency in RAMP_CONCURRENCY:
            level = loadgen.run_level(url, bodies, concurrency, warmup_s=2.0, duration_s=args.ramp_seconds,
                                      timeout_s=timeout_s).summary()
            ramp.append(level)
            _progress(f"ramp     {concurrency:3d} clients: {level['images_per_s']:7.1f} images/s, p99 "
                      f"{level['latency_ms']['p99']:.0f} ms, {level['errors']} errors, {resident_mib(server):.0f} MiB")
        clean = [level for level in ramp if level["errors"] == 0] or ramp
        maximum = max(level["images_per_s"] for level in clean)
        results["ramp"], results["maximum_images_per_s"] = ramp, maximum
        plan = [("soak", args.soak_share, args.soak_seconds), ("overload", args.overload_factor, args.overload_seconds)]
        if args.after_seconds:
            plan.append(("after", args.soak_share, args.after_seconds))
        phases = []
        for name, share, seconds in plan:
            rate = share * maximum / args.images_per_request
            _progress(f"{name:8s} {rate:.1f} requests/s ({share:g}x the maximum) for {seconds:.0f} s")
            before = server.metrics()
            phase = open_loop(url, bodies, Phase(name, rate, seconds), memory=lambda: resident_mib(server),
                              timeout_s=timeout_s, max_outstanding=args.max_outstanding)
            phases.append(phase)
            summary = results["phases"][name] = phase.summary(args.images_per_request)
            summary["refused_by_reason"] = refusals(before, server.metrics())
            _progress(f"{name:8s} {summary['outcomes']}, p99 {summary['latency_ms']['p99'] or 0:.0f} ms, memory "
                      f"{phase.memory[0][1]:.0f} -> {phase.memory[-1][1]:.0f} MiB")
        results["answers_per_second"] = per_second(phases)
    finally:
        server.stop()
    results["exit_code"] = server.process.returncode
    results["verdicts"] = verdicts(results, args)
    results["activity_after"] = machine.activity()
    return results


# --- the report -------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    m = results["machine"]
    parts = [f"# Soak and overload: {results['model']}", "", f"`{results['command']}` ({results['created_at']})", "",
             f"{m['cpu']}, {m['cores_usable']} usable cores, {m['memory_gib']} GiB; {results['images']['files']} files from "
             f"{results['images']['source']}, {results['images_per_request']} image(s) per request; settings given: "
             f"{results['settings_given'] or 'none (defaults)'}.", "", "## Verdicts", "",
             "| target | measured | result |", "| --- | --- | --- |"]
    for row in results["verdicts"]:
        verdict = {True: "met", False: "**missed**", None: "not measured"}[row["met"]]
        parts.append(f"| {row['target']} | {row['measured']} | {verdict} |")
    parts += ["", "## Ramp (closed loop)", "", "| clients | images/s | p50 ms | p99 ms | errors |", "| --- | --- | --- | --- | --- |"]
    for level in results["ramp"]:
        lat = level["latency_ms"]
        parts.append(f"| {level['concurrency']} | {level['images_per_s']:.1f} | {lat['p50'] or 0:.1f} | {lat['p99'] or 0:.1f} | {level['errors']} |")
    parts += ["", f"Maximum: {results['maximum_images_per_s']:.1f} images/s (the best level without errors).", "",
              "## Open-loop phases", "", "![memory and answers over time](soak.png)", "",
              "| phase | requests/s sent | seconds | answers | refusals by reason (/metrics) | answered images/s | p50 ms | p99 ms | max ms | memory MiB (first / last) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for phase in results["phases"].values():
        lat, memory = phase["latency_ms"], phase["memory_mib"]
        parts.append(f"| {phase['name']} | {phase['rate_per_s']:.1f} | {phase['seconds']:.0f} | "
                     + ", ".join(f"{v} {k}" for k, v in phase["outcomes"].items())
                     + " | " + (", ".join(f"{v} {k}" for k, v in phase.get("refused_by_reason", {}).items()) or "none")
                     + f" | {phase['answered_images_per_s']:.1f} | {lat['p50'] or 0:.1f} | {lat['p99'] or 0:.1f} | {lat['max'] or 0:.0f} | "
                     f"{memory[0][1]:.0f} / {memory[-1][1]:.0f} |")
    parts += ["", f"The server exited with {results['exit_code']} on SIGTERM at the end.", ""]
    return "\n".join(parts)


def plot(results: dict, path: Path) -> Path:
    """Memory of the server's process tree (top) and answers per second by status (bottom), the
    phases one after the other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (memory_ax, rate_ax) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    offset = 0.0
    for phase in results["phases"].values():
        memory_ax.plot([offset + t for t, _ in phase["memory_mib"]], [m for _, m in phase["memory_mib"]], label=phase["name"])
        for ax in (memory_ax, rate_ax):
            ax.axvline(offset, color="grey", linewidth=0.5)
        rate_ax.annotate(phase["name"], (offset, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                         textcoords="offset points", fontsize=8)
        offset += phase["seconds"]
    memory_ax.set_ylabel("server memory (RSS), MiB")
    memory_ax.legend(loc="lower right", fontsize=8)
    for outcome, counts in results.get("answers_per_second", {}).items():
        rate_ax.plot(range(len(counts)), counts, label=outcome, linewidth=0.8)
    rate_ax.set_ylabel("requests per second sent, by answer")
    rate_ax.set_xlabel("seconds from the soak's start")
    rate_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    for ax in (memory_ax, rate_ax):
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def per_second(phases: list[Phase]) -> dict[str, list[int]]:
    """Requests per second of send time by answer, the phases one after the other."""
    series: dict[str, dict[int, int]] = {}
    offset = 0.0
    for phase in phases:
        for sent, outcome in zip(phase.sent_s, phase.outcome):
            series.setdefault(outcome, {})
            second = int(offset + sent)
            series[outcome][second] = series[outcome].get(second, 0) + 1
        offset += phase.seconds
    end = int(offset) + 1
    return {outcome: [counts.get(second, 0) for second in range(end)] for outcome, counts in sorted(series.items())}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or REPO / "reports" / f"soak-{args.model.partition(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        results = run(args, out)
    except command.CommandError as err:
        raise SystemExit(f"error: {err}") from None
    except RuntimeError as err:  # the server did not start
        raise SystemExit(f"error: the service did not start; see {out / 'server.log'}: {str(err).splitlines()[0]}") from None
    command.finish(results, out, "soak", plot, markdown)


if __name__ == "__main__":
    main()
