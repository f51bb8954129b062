"""python -m loadtests.checkouts: the service of several git revisions, measured side by side in one run.

Before and after a change, or two designs of the serving core: each REF (a commit, branch or tag,
or WORKTREE for the files as they are now) is checked out into a temporary git worktree, served
with `bentoml serve service.service:ImageClassifier` from there, one at a time, and sent the same
files by the same load generator (loadtests/loadgen.py) at each level. With --rounds 2 the refs
alternate twice, so a drift of the shared machine shows as a difference between rounds. The
report (Markdown and JSON in --out) gives, per level: images/s, p50, p99, errors and the CPU time
of the whole server process tree per image. docs/benchmarks.md says what was compared with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import images, loadgen, machine
from .servers import REPO, SERVICE, Server, serve_env

WORKTREE = "WORKTREE"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.checkouts", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", action="append", required=True, metavar="REF",
                        help=f"a git revision to serve, or {WORKTREE} for the checkout's files as they are (repeatable)")
    parser.add_argument("--model", required=True, help="model in the BentoML store, NAME or NAME:VERSION")
    parser.add_argument("--images", type=Path, help="folder of image files (default: 32 generated JPEGs)")
    parser.add_argument("--limit", type=int, default=64, help="at most this many files (default: 64)")
    parser.add_argument("--phone-photos", type=int, metavar="N", help="send N 12-megapixel JPEGs made from --images instead")
    parser.add_argument("--phone-dir", type=Path, help="where the phone photos are made and kept (default: a temporary folder)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64], help="client levels (default: 1 4 16 64)")
    parser.add_argument("--images-per-request", type=int, nargs="+", default=[1], help="images per request (default: 1)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per level (default: 2)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per level (default: 10)")
    parser.add_argument("--rounds", type=int, default=1, help="times each ref is measured, alternating (default: 1)")
    parser.add_argument("--set", action="append", default=[], metavar="SERVICE_X=VALUE", help="a setting for every ref's server")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/checkouts-TIME)")
    args = parser.parse_args(argv)
    if min(args.concurrency + args.images_per_request + [args.rounds, args.limit]) < 1 or args.duration <= 0:
        parser.error("levels, images per request, --rounds and --limit must be at least 1, --duration positive")
    return args


@contextlib.contextmanager
def checked_out(ref: str):
    """A folder holding `ref`'s files: the checkout itself for WORKTREE, else a temporary git worktree."""
    if ref == WORKTREE:
        yield REPO
        return
    folder = Path(tempfile.mkdtemp(prefix="checkout-")) / "tree"
    run = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), ref], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"error: --ref {ref}: {(run.stderr.strip().splitlines() or ['git worktree failed'])[-1]}")
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], capture_output=True)


def _describe(ref: str) -> str:
    if ref == WORKTREE:
        return subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True).stdout.strip() or ref


def measure(args: argparse.Namespace, folder: Path, ref: str, files: list[tuple[str, bytes]], out: Path, round_: int) -> list[dict]:
    settings = dict(item.split("=", 1) for item in args.set)
    env = serve_env(SERVICE_MODELS=args.model, **settings)
    env["PYTHONPATH"] = str(folder)
    name = args.model.split(":")[0]
    log = out / "logs" / f"{ref.replace('/', '_')}-{round_}.log"
    server = Server.bentoml(SERVICE, env, log, cwd=folder)
    levels = []
    try:
        server.wait_ready(300)
        for per_request in args.images_per_request:
            bodies = loadgen.request_bodies(files, per_request, {"model": name})
            loadgen.run_level(server.url + "/classify", bodies, 4, warmup_s=0, duration_s=1.0)
            for concurrency in args.concurrency:
                level = loadgen.run_level(server.url + "/classify", bodies, concurrency, warmup_s=args.warmup,
                                          duration_s=args.duration, timeout_s=120.0,
                                          snapshot=lambda: {"cpu": server.cpu_seconds(), "busy": machine.busy_seconds()})
                summary = level.summary()
                before, after = level.snapshots
                cpu = sum(after["cpu"].values()) - sum(before["cpu"].values())
                images_answered = max(1, summary["requests"] * per_request)
                summary["server_cpu_ms_per_image"] = 1000 * cpu / images_answered
                summary["other_processes_cores"] = max(0.0, (after["busy"] - before["busy"] - cpu - level.cpu_s) / level.window_s)
                summary.update(ref=ref, round=round_)
                levels.append(summary)
                print(f"{ref:>12s} round {round_} {concurrency:3d} x {per_request:2d}: {summary['images_per_s']:7.1f} images/s, "
                      f"p50 {summary['latency_ms']['p50'] or 0:.1f} ms, p99 {summary['latency_ms']['p99'] or 0:.1f} ms, "
                      f"{summary['errors']} errors, {summary['server_cpu_ms_per_image']:.2f} CPU ms/image, "
                      f"others {summary['other_processes_cores']:.2f} cores", flush=True)
    finally:
        server.stop()
    return levels


def markdown(results: dict) -> str:
    refs = results["refs"]
    commits = results["commits"]
    lines = ["# Checkouts compared: " + ", ".join(f"{r} ({commits[r]})" for r in refs), "",
             f"`{results['command']}`", "", f"{results['created_at']}; model {results['model']}; {results['images']}; "
             f"{results['duration_s']:g} s windows, {results['rounds']} round(s); machine: {results['machine']['cpu']}, "
             f"{results['machine']['cores_usable']} cores.", ""]
    keys = sorted({(l["images_per_request"], l["concurrency"]) for l in results["levels"]})
    header = ["clients x images"] + [f"{r} {what}" for r in refs for what in ("images/s", "p50 ms", "p99 ms", "CPU ms/image", "errors")]
    if len(refs) > 1:
        header.append(f"{refs[-1]} / {refs[0]} images/s")
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for per_request, concurrency in keys:
        row = [f"{concurrency} x {per_request}"]
        rates = []
        for ref in refs:
            runs = [l for l in results["levels"] if l["ref"] == ref and l["concurrency"] == concurrency
                    and l["images_per_request"] == per_request]
            rate = sum(l["images_per_s"] for l in runs) / len(runs)
            rates.append(rate)
            row += [f"{rate:.1f}", f"{_mean(runs, 'p50'):.1f}", f"{_mean(runs, 'p99'):.1f}",
                    f"{sum(l['server_cpu_ms_per_image'] for l in runs) / len(runs):.2f}", str(sum(l["errors"] for l in runs))]
        if len(refs) > 1:
            row.append(f"{rates[-1] / rates[0]:.2f}x" if rates[0] else "-")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Means over the rounds; others' cores (the rest of the machine) per level are in checkouts.json.", ""]
    return "\n".join(lines)


def _mean(runs: list[dict], percentile: str) -> float:
    values = [l["latency_ms"][percentile] for l in runs if l["latency_ms"][percentile] is not None]
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or REPO / "reports" / f"checkouts-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    if args.images is not None:
        paths = images.image_files(args.images, args.limit)
        label = str(args.images)
        if args.phone_photos:
            phone = args.phone_dir or Path(tempfile.mkdtemp(prefix="checkouts-phone-"))
            paths = images.make_phone_photos(images.image_files(args.images, args.phone_photos), phone)
            label += f" as {len(paths)} 12-megapixel photos"
        files = images.read_files(paths)
    else:
        files = images.generated_jpegs(min(args.limit, 32))
        label = f"{len(files)} generated JPEGs"
    results = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": "python -m loadtests.checkouts " + shlex.join(sys.argv[1:]),
               "refs": args.ref, "commits": {ref: _describe(ref) for ref in args.ref}, "model": args.model, "images": label,
               "duration_s": args.duration, "rounds": args.rounds, "machine": machine.describe(), "levels": []}
    with contextlib.ExitStack() as stack:
        folders = {ref: stack.enter_context(checked_out(ref)) for ref in args.ref}
        for round_ in range(1, args.rounds + 1):
            for ref in args.ref:
                results["levels"] += measure(args, folders[ref], ref, files, out, round_)
    (out / "checkouts.json").write_text(json.dumps(results, indent=1))
    (out / "checkouts.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {out / 'checkouts.md'}")


if __name__ == "__main__":
    main()
