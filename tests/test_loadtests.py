"""Smoke tests of loadtests/: the benchmark harness and the Locust scenarios run for a few seconds
against tiny models and write well-formed reports. Nothing here asserts a time: speed is what the
reports are for (docs/benchmarks.md)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from PIL import Image

from loadtests.servers import REPO, serve_env, serving
from tests.service_helpers import RGB_MODEL, register

LEVELS = {(1, 1), (2, 1), (1, 2), (2, 2)}  # (clients, images per request)


def test_bench_runs_every_stage_and_writes_a_well_formed_report(tmp_path, exported_models, trained_models):
    out = tmp_path / "report"
    command = [sys.executable, "-m", "loadtests.bench", "--model", "scratch", "--limit", "6",
               "--concurrency", "1", "2", "--images-per-request", "1", "2", "--batch-sizes", "1", "2",
               "--component-seconds", "0.2", "--warmup", "0.2", "--duration", "0.5", "--min-requests", "1",
               "--compare", "SERVICE_MAX_BATCH_SIZE=2,SERVICE_INFERENCE_THREADS=1",
               "--keras-model", str(trained_models["scratch"]), "--out", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    report = json.loads((out / "bench.json").read_text())
    assert report["model"]["name"] == "scratch" and report["images"]["files"] == 6
    assert report["machine"]["cores_usable"] >= 1 and report["machine"]["cpu"]
    assert {"bentoml", "numpy"} <= set(report["machine"]["versions"])
    assert [b["batch_size"] for b in report["engine"]["batches"]] == [1, 2]
    assert all(b["images_per_s"] > 0 for b in report["engine"]["batches"])
    assert report["decode"]["files"] == 6 and report["decode"]["images_per_s"] > 0
    assert [c["label"] for c in report["service_compared"]] == ["SERVICE_MAX_BATCH_SIZE=2, SERVICE_INFERENCE_THREADS=1"]
    assert report["service_compared"][0]["settings"]["max_batch_size"] == 2
    stages = {"floor": report["floor"], "service": report["service"], "compared": report["service_compared"][0],
              "naive": report["naive"]}
    for stage, levels in (("floor", LEVELS), ("service", LEVELS), ("compared", LEVELS), ("naive", {(1, 1), (2, 1)})):
        measured = stages[stage]["levels"]
        assert {(l["concurrency"], l["images_per_request"]) for l in measured} == levels, stage
        for level in measured:
            assert level["requests"] > 0 and level["errors"] == 0 and level["answer_ok"], (stage, level)
            latency = level["latency_ms"]
            assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"], (stage, latency)
    for level in report["service"]["levels"] + report["service_compared"][0]["levels"]:
        assert 1 <= level["server"]["mean_batch"] <= 2 * level["images_per_request"]
        assert level["server_cpu_ms_per_request"]["worker:inference"] > 0
    # The ceiling is below each of its three terms, for every level.
    assert {(r["concurrency"], r["images_per_request"]) for r in report["ceiling"]} == LEVELS
    for row in report["ceiling"]:
        terms = (row["engine_images_per_s"], row["decode_images_per_s"], row["floor_images_per_s"])
        assert 0 < row["ceiling_images_per_s"] < min(terms)
    targets = {t["target"]: t["met"] for t in report["targets"]}
    assert len(targets) == 5
    assert [met for target, met in targets.items() if target.startswith("16 clients")] == [None, None]  # not measured
    assert isinstance(targets["no errors at any level"], bool)

    markdown = (out / "bench.md").read_text()
    for heading in ("## Machine", "## Targets", "## Service (defaults), ceiling and naive baseline", "## The parts alone",
                    "## Where a request's time goes", "## The load generator", "## Service settings compared (same run)"):
        assert heading in markdown
    for plot in ("throughput.png", "latency.png", "time.png"):
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and image.width > 300
    assert {p.name for p in (out / "logs").iterdir()} == {"floor.log", "service.log", "compare1.log", "naive.log"}
    assert "report in" in run.stdout and "wrote" in run.stdout


def test_bench_refuses_a_model_that_is_not_in_the_store(exported_models):
    run = subprocess.run([sys.executable, "-m", "loadtests.bench", "--model", "no-such-model", "--skip", "naive"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]  # one line, no traceback
    assert run.stderr.startswith("error: model no-such-model:latest is not in the BentoML model store")


def _locust(url: str, prefix, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--host", url, "--headless",
               "-u", "2", "-r", "2", "-t", "3s", "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary", *options]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def _stats(prefix) -> dict[str, dict]:
    with open(f"{prefix}_stats.csv") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_locustfile_runs_headless_and_counts_every_non_2xx_as_a_failure(tmp_path):
    home = tmp_path / "bentoml"
    register(RGB_MODEL, home)
    with serving(serve_env(home, SERVICE_MODELS=RGB_MODEL.name), tmp_path / "server.log") as server:
        good = _locust(server.url, tmp_path / "good", "--images-per-request", "2", "--top-k", "2")
        bad = _locust(server.url, tmp_path / "bad", "--model", "no-such-model")

    assert good.returncode == 0, good.stderr[-3000:]
    stats = _stats(tmp_path / "good")
    for route in ("/classify", "/features"):
        assert int(stats[route]["Request Count"]) > 0 and int(stats[route]["Failure Count"]) == 0, stats[route]
    assert "/classify" in (tmp_path / "good.html").read_text()

    assert bad.returncode != 0
    stats = _stats(tmp_path / "bad")
    assert int(stats["Aggregated"]["Failure Count"]) == int(stats["Aggregated"]["Request Count"]) > 0
    with open(tmp_path / "bad_failures.csv") as f:
        errors = [row["Error"] for row in csv.DictReader(f)]
    assert errors and all("HTTP 400" in error and "unknown model" in error for error in errors)
