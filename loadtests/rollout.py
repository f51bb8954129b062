"""python -m loadtests.rollout: a rolling restart rehearsed on one machine, with real parts: replicas
of the service behind haproxy under steady load, each replaced in turn, then one SIGKILLed.

  steady    --replicas replicas (`bentoml serve` processes) behind haproxy, which health-checks
            /readyz; an open loop of --rate requests a second (loadtests/soak.py's) through haproxy
            for the whole rehearsal
  restart   each replica replaced in turn as a Kubernetes Deployment does with maxSurge 1 and
            maxUnavailable 0 (deploy/kubernetes/deployment.yaml): a new replica started in a spare
            slot and waited for until haproxy sees it up; the old one taken out of rotation (haproxy
            `drain`, as an endpoint removal and the preStop pause do), then SIGTERM: it answers what
            it holds and exits; its exit status is recorded
  kill      one replica SIGKILLed (its whole process group, as the kernel's OOM killer or a lost node
            would): the requests that failed, and how long until a replacement was up and the pool
            whole again
  after     steady load again for --settle-seconds

Replicas are processes rather than containers: the signals, the drain and haproxy's view of them
are the same (a container's PID 1 is the same `bentoml serve`), they start sooner (no container
runtime, no image), and the container image's own stop and drain are tested in tests/test_container.py.

The report (rollout.md, rollout.json, rollout.png, haproxy's and each replica's log) goes to --out;
docs/deployment.md keeps a run's figures with its command. Exit status 1 when a restart lost a request.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import command, loadgen, machine, soak
from .servers import REPO, SERVICE, Server, free_port

BACKEND = "replicas"


class RolloutError(command.CommandError):
    """A user mistake or an unusable setup; the message is one line."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command.parser("python -m loadtests.rollout", __doc__)
    parser.add_argument("--replicas", type=int, default=3, help="replicas behind haproxy (default: 3)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests a second, one image each (default: 20)")
    parser.add_argument("--settle-seconds", type=float, default=10.0,
                        help="steady load before the first restart, between phases and at the end (default: 10)")
    parser.add_argument("--kills", type=int, default=1, help="replicas SIGKILLed one after the other (default: 1)")
    parser.add_argument("--haproxy", default="haproxy", help="the haproxy binary (default: haproxy on PATH)")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/rollout-TIME)")
    args = parser.parse_args(argv)
    if args.replicas < 2 or args.limit < 1 or args.kills < 0:
        parser.error("--replicas must be at least 2, --limit at least 1, --kills not negative")
    if args.rate <= 0 or args.settle_seconds <= 0:
        parser.error("--rate and --settle-seconds must be positive")
    return args


# --- haproxy ----------------------------------------------------------------------------------------


def haproxy_config(port: int, stats_socket: Path, slots: int, check_ms: int = 500) -> str:
    """haproxy in front of `slots` server slots (filled in at run time through its runtime API, all
    in maintenance at first): health checks on /readyz, a connection refused or an empty answer
    retried on another replica (the bodies fit in haproxy's buffer, so that they can be resent)."""
    servers = "\n".join(f"    server r{i} 127.0.0.1:1 check disabled" for i in range(slots))
    return f"""global
    stats socket {stats_socket} mode 600 level admin
    tune.bufsize 262144

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-request 30s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response

frontend service
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance leastconn
    option http-buffer-request
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {check_ms}ms fastinter {check_ms // 2}ms downinter {check_ms}ms rise 2 fall 2
{servers}
"""


class Haproxy:
    """haproxy with its configuration and runtime API (a Unix socket), in its own process group."""

    def __init__(self, binary: str, folder: Path, slots: int) -> None:
        if shutil.which(binary) is None:
            raise RolloutError(f"{binary} is not installed (Debian: apt-get install haproxy)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # a Unix socket's path is short: a folder of its own under /tmp
        self._socket_dir = tempfile.TemporaryDirectory(prefix="haproxy-")
        self.socket = Path(self._socket_dir.name) / "admin.sock"
        config = folder / "haproxy.cfg"
        config.write_text(haproxy_config(self.port, self.socket, slots))
        check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RolloutError(f"haproxy refused its configuration: {(check.stderr or check.stdout).strip().splitlines()[-1]}")
        self._log = (folder / "haproxy.log").open("w")
        self.process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RolloutError(f"haproxy did not start; see {folder / 'haproxy.log'}")
            time.sleep(0.05)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(str(self.socket))
            connection.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def point(self, slot: int, port: int) -> None:
        """Slot `slot` at 127.0.0.1:port, in rotation once its health check passes."""
        self.command(f"set server {BACKEND}/r{slot} addr 127.0.0.1 port {port}")
        self.command(f"set server {BACKEND}/r{slot} state ready")

    def drain(self, slot: int) -> None:
        """No new requests to the slot (those in flight finish)."""
        self.command(f"set server {BACKEND}/r{slot} state drain")

    def disable(self, slot: int) -> None:
        self.command(f"set server {BACKEND}/r{slot} state maint")

    def states(self) -> dict[int, tuple[str, str]]:
        """Each slot's (status, last check) as haproxy sees it: ("UP", "L7OK"), ("DOWN", "L4CON"), ..."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        found = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == BACKEND and row.get("svname", "").startswith("r"):
                found[int(row["svname"][1:])] = (row.get("status", "?"), row.get("check_status", "").lstrip("* "))
        return found

    def wait_state(self, slot: int, wanted: str, timeout: float) -> float:
        """Seconds until the slot's status is `wanted` (UP: with a health check passed since, not
        the UP haproxy assumes on leaving maintenance)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            status, check = self.states().get(slot, ("", ""))
            if status == wanted and (wanted != "UP" or check.startswith("L7OK")):
                return time.monotonic() - start
            time.sleep(0.05)
        raise RolloutError(f"haproxy did not see replica slot r{slot} {wanted} within {timeout:.0f} s: {self.states()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        self._socket_dir.cleanup()


# --- the rehearsal -------------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    slot: int
    server: Server


class Rehearsal:
    """The replicas, haproxy and the timeline of what was done to them (seconds from the first start)."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], out: Path) -> None:
        self.args, self.env, self.out = args, env, out
        self.proxy = Haproxy(args.haproxy, out, args.replicas + 1)
        self.replicas: list[Replica] = []
        self.live: list[Server] = []  # every server started and not yet stopped, for the cleanup
        self.spare = args.replicas  # the slot a new replica starts in
        self.events: list[dict] = []
        self.started = time.monotonic()
        self._count = 0

    def at(self) -> float:
        return time.monotonic() - self.started

    def event(self, phase: str, what: str, **details) -> None:
        self.events.append({"t": round(self.at(), 2), "phase": phase, "event": what, **details})
        print(f"[{self.at():6.1f} s] {phase:8s} {what}" + "".join(f", {k} {v}" for k, v in details.items()), flush=True)

    def start(self, slot: int, phase: str) -> Replica:
        name = f"replica{self._count}"
        self._count += 1
        server = Server.bentoml(SERVICE, self.env, self.out / f"{name}.log")
        self.live.append(server)
        replica = Replica(name, slot, server)
        server.wait_ready(300)
        self.proxy.point(slot, server.port)
        seconds = self.proxy.wait_state(slot, "UP", 60)
        self.event(phase, f"{name} up in slot r{slot}", port=server.port, haproxy_up_after_s=round(seconds, 2))
        return replica

    def replace(self, old: Replica, phase: str) -> Replica:
        """maxSurge 1, maxUnavailable 0: the new one up first, then the old one out and SIGTERMed."""
        new = self.start(self.spare, phase)
        self.proxy.drain(old.slot)
        self.event(phase, f"{old.name} drained in haproxy")
        time.sleep(1.0)  # the preStop pause: haproxy has stopped sending it new requests
        os.killpg(old.server.process.pid, signal.SIGTERM)
        code = old.server.process.wait(90)
        self._stopped(old.server)
        self.proxy.disable(old.slot)
        self.event(phase, f"{old.name} exited after SIGTERM", exit_code=code)
        self.spare = old.slot
        return new

    def kill(self, victim: Replica, phase: str) -> Replica:
        victim.server.kill()  # every process of it, as a container's death would
        killed = self.at()
        self.event(phase, f"{victim.name} SIGKILLed")
        self._stopped(victim.server)
        down = self.proxy.wait_state(victim.slot, "DOWN", 30)
        self.event(phase, f"haproxy saw {victim.name} down", after_s=round(down, 2))
        self.proxy.disable(victim.slot)
        new = self.start(self.spare, phase)
        self.spare = victim.slot
        self.event(phase, "the pool is whole again", seconds_since_kill=round(self.at() - killed, 2))
        return new

    def _stopped(self, server: Server) -> None:
        server.stop()
        self.live.remove(server)

    def stop(self) -> None:
        for server in list(self.live):
            self._stopped(server)
        self.proxy.stop()


def run(args: argparse.Namespace, out: Path) -> dict:
    # One worker per replica unless --set says otherwise: the replicas share the cores.
    chosen = command.setup(args, defaults={"SERVICE_WORKERS": "1"})
    given, config, model, env, files = chosen.given, chosen.config, chosen.model, chosen.env, chosen.files
    bodies = loadgen.request_bodies(files, 1, {"model": model.name})
    results: dict = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "command": "python -m loadtests.rollout " + shlex.join(sys.argv[1:]),
                     "machine": machine.describe(), "model": args.model, "replicas": args.replicas, "rate_per_s": args.rate,
                     "settings_given": given, "haproxy": _haproxy_version(args.haproxy)}
    rehearsal = Rehearsal(args, env, out)
    load = soak.Phase("rollout", args.rate, 24 * 3600.0)
    stop = threading.Event()
    try:
        print(f"starting {args.replicas} replicas of {args.model} behind haproxy", flush=True)
        for slot in range(args.replicas):
            rehearsal.replicas.append(rehearsal.start(slot, "start"))
        generator = threading.Thread(target=soak.open_loop, args=(rehearsal.proxy.url + "/classify", bodies, load),
                                     kwargs={"timeout_s": config.timeout_s + 30.0, "stop": stop}, daemon=True)
        offset = rehearsal.at()  # the load's clock starts now; the timeline's at the first replica
        generator.start()
        rehearsal.event("steady", f"load at {args.rate:g} requests/s")
        time.sleep(args.settle_seconds)
        for index in range(len(rehearsal.replicas)):
            rehearsal.event("restart", f"replacing {rehearsal.replicas[index].name}")
            rehearsal.replicas[index] = rehearsal.replace(rehearsal.replicas[index], "restart")
        rehearsal.event("steady", "every replica replaced")
        time.sleep(args.settle_seconds)
        for index in range(args.kills):
            rehearsal.event("kill", f"killing {rehearsal.replicas[index].name}")
            rehearsal.replicas[index] = rehearsal.kill(rehearsal.replicas[index], "kill")
            rehearsal.event("after", "steady load")
            time.sleep(args.settle_seconds)
        rehearsal.event("end", "load stopped")
        stop.set()
        generator.join()
    finally:
        stop.set()
        rehearsal.stop()
    load.sent_s = [offset + t for t in load.sent_s]
    results["events"] = rehearsal.events
    results["requests"] = {"sent_s": [round(t, 4) for t in load.sent_s], "latency_s": [round(t, 5) for t in load.latency_s],
                           "outcome": load.outcome}
    results["phases"] = phase_table(rehearsal.events, load)
    results["verdicts"] = verdicts(results)
    return results


def _haproxy_version(binary: str) -> str:
    with contextlib.suppress(OSError):
        return subprocess.run([binary, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    return "?"


def phase_table(events: list[dict], load: soak.Phase) -> list[dict]:
    """Requests by the phase they were sent in (a phase begins at the first event that names it,
    after another phase's; the last ends with the load)."""
    starts = []
    for event in events:
        if event["phase"] not in ("start", "end") and (not starts or starts[-1][1] != event["phase"]):
            starts.append((event["t"], event["phase"]))
    rows = []
    for (begin, phase), (end, _) in zip(starts, starts[1:] + [(float("inf"), "")]):
        chosen = [(lat, outcome) for sent, lat, outcome in zip(load.sent_s, load.latency_s, load.outcome) if begin <= sent < end]
        outcomes: dict[str, int] = {}
        for _, outcome in chosen:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        ok = np.asarray([lat for lat, outcome in chosen if outcome == "200"]) * 1000
        rows.append({"phase": phase, "from_s": begin, "to_s": None if end == float("inf") else end, "requests": len(chosen),
                     "outcomes": dict(sorted(outcomes.items())), "failed": sum(v for k, v in outcomes.items() if k != "200"),
                     "p50_ms": float(np.percentile(ok, 50)) if len(ok) else None,
                     "p99_ms": float(np.percentile(ok, 99)) if len(ok) else None})
    return rows


def verdicts(results: dict) -> list[dict]:
    restarts = [row for row in results["phases"] if row["phase"] == "restart"]
    lost = sum(row["failed"] for row in restarts)
    exits = [e.get("exit_code") for e in results["events"] if "exit_code" in e]
    kills = [row for row in results["phases"] if row["phase"] == "kill"]
    whole = [e["seconds_since_kill"] for e in results["events"] if "seconds_since_kill" in e]
    rows = [{"target": "rolling restart: no failed request", "met": bool(restarts) and lost == 0,
             "measured": f"{sum(row['requests'] for row in restarts)} requests sent while replicas were replaced, {lost} failed"},
            {"target": "every replaced replica exits 0 on SIGTERM", "met": bool(exits) and all(code == 0 for code in exits),
             "measured": ", ".join(str(code) for code in exits) or "none"}]
    if kills:
        rows.append({"target": "SIGKILL: failures reported (at most the requests it held)", "met": None,
                     "measured": f"{sum(row['failed'] for row in kills)} of {sum(row['requests'] for row in kills)} failed; "
                                 f"pool whole again after {', '.join(f'{s:.1f}' for s in whole)} s"})
    return rows


# --- the report ----------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    m = results["machine"]
    parts = [f"# Rolling restart rehearsal: {results['replicas']} replicas of {results['model']} behind haproxy", "",
             f"`{results['command']}` ({results['created_at']})", "",
             f"{m['cpu']}, {m['cores_usable']} usable cores, {m['memory_gib']} GiB; {results['haproxy']}; "
             f"{results['rate_per_s']:g} requests/s (one image each, open loop); replica settings: "
             + ", ".join(f"{k}={v}" for k, v in results["settings_given"].items()) + ".", "", "## Verdicts", "",
             "| target | measured | result |", "| --- | --- | --- |"]
    for row in results["verdicts"]:
        parts.append(f"| {row['target']} | {row['measured']} | {({True: 'met', False: '**missed**', None: 'reported'})[row['met']]} |")
    parts += ["", "## Phases", "", "![answers and latency over time](rollout.png)", "",
              "| phase | from s | to s | requests | answers | failed | p50 ms | p99 ms |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["phases"]:
        until = "-" if row["to_s"] is None else f"{row['to_s']:.1f}"
        parts.append(f"| {row['phase']} | {row['from_s']:.1f} | {until} | "
                     f"{row['requests']} | " + ", ".join(f"{v} {k}" for k, v in row["outcomes"].items())
                     + f" | {row['failed']} | {row['p50_ms'] or 0:.1f} | {row['p99_ms'] or 0:.1f} |")
    parts += ["", "## Timeline", "", "| s | phase | event |", "| --- | --- | --- |"]
    for event in results["events"]:
        details = ", ".join(f"{k} {v}" for k, v in event.items() if k not in ("t", "phase", "event"))
        parts.append(f"| {event['t']:.1f} | {event['phase']} | {event['event']}{f' ({details})' if details else ''} |")
    return "\n".join(parts) + "\n"


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sent, latency, outcome = (np.asarray(results["requests"][k], dtype=object if k == "outcome" else float)
                              for k in ("sent_s", "latency_s", "outcome"))
    end = max(1, int(sent.max())) if len(sent) else 1  # whole seconds only: the last, cut short, is left out
    fig, (rate_ax, latency_ax) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for kind in sorted(set(outcome)):
        counts = np.bincount(sent[outcome == kind].astype(int), minlength=end)[:end]
        rate_ax.plot(range(end), counts, label=kind, linewidth=0.9)
    ok = outcome == "200"
    seconds = sent[ok].astype(int)
    for q, style in ((50, "-"), (99, "--")):
        values = [np.percentile(latency[ok][seconds == s] * 1000, q) if np.any(seconds == s) else np.nan for s in range(end)]
        latency_ax.plot(range(end), values, style, label=f"p{q}", linewidth=0.9)
    for event in results["events"]:
        if event["phase"] in ("restart", "kill") and ("exited" in event["event"] or "SIGKILL" in event["event"]):
            for ax in (rate_ax, latency_ax):
                ax.axvline(event["t"], color="red" if "SIGKILL" in event["event"] else "grey", linewidth=0.6)
    rate_ax.set_ylim(bottom=0)
    rate_ax.set_ylabel("requests sent per second, by answer")
    latency_ax.set_ylabel("latency of 200s, ms")
    latency_ax.set_yscale("log")
    latency_ax.set_xlabel("seconds from the first replica's start (grey: a replica exits after SIGTERM; red: SIGKILL)")
    for ax in (rate_ax, latency_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or REPO / "reports" / f"rollout-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        results = run(args, out)
    except command.CommandError as err:
        raise SystemExit(f"error: {err}") from None
    except RuntimeError as err:  # a replica did not start
        raise SystemExit(f"error: a replica did not start (logs in {out}): {str(err).splitlines()[0]}") from None
    command.finish(results, out, "rollout", plot, markdown)


if __name__ == "__main__":
    main()
