"""Smoke tests of loadtests/: the benchmark harness and the Locust scenarios run for a few seconds
against tiny models and write well-formed reports. Nothing here asserts a time: speed is what the
reports are for (docs/benchmarks.md)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from PIL import Image

import pytest

from loadtests import figures, levels, report, report_md, verdicts
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

    results = json.loads((out / "bench.json").read_text())
    assert results["model"]["name"] == "scratch" and results["images"]["files"] == 6
    assert results["machine"]["cores_usable"] >= 1 and results["machine"]["cpu"]
    assert {"bentoml", "numpy"} <= set(results["machine"]["versions"])
    assert [b["batch_size"] for b in results["engine"]["batches"]] == [1, 2]
    assert all(b["images_per_s"] > 0 for b in results["engine"]["batches"])
    assert results["decode"]["files"] == 6 and results["decode"]["images_per_s"] > 0
    assert [c["label"] for c in results["service_compared"]] == ["SERVICE_MAX_BATCH_SIZE=2, SERVICE_INFERENCE_THREADS=1"]
    assert results["service_compared"][0]["settings"]["max_batch_size"] == 2
    stages = {"floor": results["floor"], "service": results["service"], "compared": results["service_compared"][0],
              "v2": results["v2"], "naive": results["naive"]}
    for stage, expected in (("floor", LEVELS), ("service", LEVELS), ("compared", LEVELS), ("v2", LEVELS),
                            ("naive", {(1, 1), (2, 1)})):
        measured = stages[stage]["levels"]
        assert {(l["concurrency"], l["images_per_request"]) for l in measured} == expected, stage
        for level in measured:
            assert level["requests"] > 0 and level["errors"] == 0 and level["answer_ok"], (stage, level)
            latency = level["latency_ms"]
            assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"], (stage, latency)
    for level in results["service"]["levels"] + results["service_compared"][0]["levels"] + results["v2"]["levels"]:
        assert 1 <= level["server"]["mean_batch"] <= 2 * level["images_per_request"]
        assert level["server_cpu_ms_per_request"]["worker:image_classifier"] > 0
        assert level["server"]["queue_wait_ms_per_image"] is not None
    # Both protocols side by side, from the same server; every file's top-1 class the same from both.
    assert {(r["concurrency"], r["images_per_request"]) for r in results["protocols"]} == LEVELS
    assert all(r["ratio"] > 0 and r["v2"]["cpu_ms_per_image"] > 0 for r in results["protocols"])
    assert results["protocols_agreement"]["files"] == 6 and results["protocols_agreement"]["same"]
    assert all(level["server"]["public_ms_per_request"] > 0 for level in results["v2"]["levels"])
    # The ceiling is below each of its three terms, for every level.
    assert {(r["concurrency"], r["images_per_request"]) for r in results["ceiling"]} == LEVELS
    for row in results["ceiling"]:
        terms = (row["engine_images_per_s"], row["decode_images_per_s"], row["floor_images_per_s"])
        assert 0 < row["ceiling_images_per_s"] < min(terms)
    targets = {t["target"]: t for t in results["targets"]}
    assert len(targets) == 6
    for target in targets.values():  # the verdict says what `met` does, but where the harness cannot judge
        assert target["verdict"] == verdicts.VERDICTS[target["met"]] or (
            target["met"] is None and target["verdict"] in ("reported", "see text")), target
    one_client, tail = (next(t for name, t in targets.items() if name.startswith(start)) for start in ("1 client:", "p99 "))
    assert one_client["met"] in (True, False)  # every term and the service's p50 were measured: judged
    assert tail["verdict"] in ("met", "see text")  # a p99 at every level
    assert [t["met"] for name, t in targets.items() if name.startswith("16 clients")] == [None, None]  # not measured
    assert targets["no errors at any level (1 image per request)"]["met"] is True
    assert targets["errors at every level (1 and 2 images per request; reported, not a target)"]["verdict"] == "reported"

    markdown = (out / "bench.md").read_text()
    for heading in ("## Machine", "## Targets", "## Service (defaults), ceiling and naive baseline", "## The parts alone",
                    "## Where a request's time goes", "## The load generator", "## Service settings compared (same run)",
                    "## The service's two protocols (same run)"):
        assert heading in markdown
    for plot in ("throughput.png", "latency.png", "time.png"):
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and image.width > 300
    assert {p.name for p in (out / "logs").iterdir()} == {"floor.log", "service.log", "compare1.log", "v2.log", "naive.log"}
    assert "**compare 1**: SERVICE_MAX_BATCH_SIZE=2, SERVICE_INFERENCE_THREADS=1" in markdown  # the plots' short names
    assert "report in" in run.stdout and "wrote" in run.stdout


def test_bench_refuses_a_model_that_is_not_in_the_store(exported_models):
    run = subprocess.run([sys.executable, "-m", "loadtests.bench", "--model", "no-such-model", "--skip", "naive"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]  # one line, no traceback
    assert run.stderr.startswith("error: model no-such-model:latest is not in the BentoML model store")


# --- the report's ceiling and targets, on made-up measurements (no timing measured) ---------------------


def _level(concurrency: int, images_per_request: int, images_per_s: float, p50: float, p99: float | None = None,
           errors: int = 0, **extra) -> dict:
    p99 = 2 * p50 if p99 is None else p99
    return {"concurrency": concurrency, "images_per_request": images_per_request, "images_per_s": images_per_s,
            "requests_per_s": images_per_s / images_per_request, "requests": 100, "errors": errors,
            "error_kinds": {"503": errors} if errors else {},
            "latency_ms": {"p50": p50, "p95": (p50 + p99) / 2, "p99": p99, "mean": p50, "max": p99}, **extra}


def _batch(size: int, images_per_s: float) -> dict:
    return {"batch_size": size, "threads": 1, "images_per_s": images_per_s, "cpu_ms_per_image": 1000 / images_per_s,
            "latency_ms": {"p50": 1000 * size / images_per_s, "p99": 1000 * size / images_per_s}}


def _results(service_at_16: float = 90.0, service_p50_at_1: float = 7.0, tail_at_16: float = 2.0,
             errors: dict | None = None) -> dict:
    """Engine 500 images/s at batch 1 (2 ms) and 1000 from batch 4; decode 1000 images/s, 1 ms; floor
    500 requests/s, 1 ms p50 at 1 client: the ceiling at 16 clients x 1 image is 1 / (1/1000 + 1/1000 +
    1/500) = 250 images/s, the 1-client budget 2 + 1 + 1 = 4 ms. `errors`: {(clients, images): count}."""
    errors = errors or {}
    floor = [_level(c, k, 500.0 * k, 1.0 * c, 5.0 * c) for k in (1, 16) for c in (1, 16)]
    service = [_level(1, 1, 100.0, service_p50_at_1, errors=errors.get((1, 1), 0)),
               _level(16, 1, service_at_16, 40.0, 40.0 * tail_at_16, errors=errors.get((16, 1), 0)),
               _level(1, 16, 200.0, 80.0, errors=errors.get((1, 16), 0)),
               _level(16, 16, 300.0, 800.0, errors=errors.get((16, 16), 0))]
    results = {"engine": {"batches": [_batch(1, 500.0), _batch(2, 800.0), _batch(4, 1000.0), _batch(64, 900.0)]},
               "decode": {"images_per_s": 1000.0, "latency_ms": {"p50": 1.0}},
               "floor": {"levels": floor}, "service": {"levels": service},
               "naive": {"levels": [_level(c, 1, 10.0, 100.0 * c) for c in (1, 16)]}}
    results["ceiling"] = verdicts.ceilings(results)
    return results


def _by_name(results: dict) -> dict[str, dict]:
    rows = verdicts.targets(results)
    assert all(set(row) == {"target", "measured", "met", "verdict"} for row in rows)
    names = ("vs ceiling", "vs naive", "1 client", "no errors", "all errors", "tail")
    assert len(rows) == len(names)
    return dict(zip(names, rows))


def test_ceiling_is_one_over_the_sum_of_the_three_terms_with_the_fastest_batch_the_level_fills():
    ceilings = {(r["concurrency"], r["images_per_request"]): r for r in _results()["ceiling"]}
    assert set(ceilings) == {(1, 1), (16, 1), (1, 16), (16, 16)}
    assert ceilings[1, 1]["engine_batch"] == 1 and ceilings[1, 1]["ceiling_images_per_s"] == pytest.approx(1 / (1 / 500 + 1 / 1000 + 1 / 500))
    # 16 clients fill batch 64 but batch 4 is faster; the floor at 16 x 16 carries 8000 images/s
    assert ceilings[16, 1]["engine_batch"] == 4 and ceilings[16, 1]["ceiling_images_per_s"] == pytest.approx(250.0)
    assert ceilings[16, 16]["ceiling_images_per_s"] == pytest.approx(1 / (1 / 1000 + 1 / 1000 + 1 / 8000))
    assert verdicts.ceilings({**_results(), "decode": None}) == []


def test_targets_met():
    rows = _by_name(_results(service_at_16=220.0, service_p50_at_1=6.5))
    assert [row["met"] for row in rows.values()] == [True, True, True, True, None, True]
    assert rows["vs ceiling"]["measured"] == "88% (220.0 of 250.0 images/s)"
    assert rows["1 client"]["measured"].startswith("p50 6.5 ms vs 4.0 ms (engine 2.0 + decode 1.0 + floor 1.0): +2.5 ms")
    assert rows["all errors"]["verdict"] == "reported"
    assert rows["tail"]["verdict"] == "met"
    summary = report.summary_lines({"targets": verdicts.targets(_results(service_at_16=220.0))})
    assert [line.split()[0] for line in summary.splitlines()] == ["met"] * 4 + ["reported", "met"]


def test_targets_missed_and_tails_to_explain():
    results = _results(service_at_16=150.0, service_p50_at_1=7.5, tail_at_16=4.0, errors={(16, 1): 2, (16, 16): 5})
    results["naive"]["levels"][1]["images_per_s"] = 40.0
    rows = _by_name(results)
    assert rows["vs ceiling"]["met"] is False and rows["vs ceiling"]["verdict"] == "missed"
    assert rows["vs ceiling"]["measured"] == "60% (150.0 of 250.0 images/s)"
    assert rows["vs naive"]["met"] is False and rows["vs naive"]["measured"].startswith("3.8x")
    assert rows["1 client"]["met"] is False and "+3.5 ms" in rows["1 client"]["measured"]
    assert rows["no errors"]["met"] is False
    assert rows["no errors"]["measured"] == "2 errors, 200 answered; at 16x1: 2 (HTTP 503 x2)"
    assert rows["all errors"]["measured"].startswith("7 errors, 400 answered; at 16x1: 2 (HTTP 503 x2); 16x16: 5")
    tail = rows["tail"]
    assert tail["met"] is None and tail["verdict"] == "see text"
    assert tail["measured"] == "p99 > 3x p50 at 16 clients (4.0x, the floor's 5.0x)"
    summary = report.summary_lines({"targets": verdicts.targets(results)})
    assert summary.count("MISSED") == 4 and "see text" in summary


def test_errors_with_16_images_only_are_reported_beside_a_met_one_image_target():
    rows = _by_name(_results(errors={(16, 16): 5}))
    assert rows["no errors"]["met"] is True
    assert rows["all errors"]["met"] is None and "16x16: 5 (HTTP 503 x5)" in rows["all errors"]["measured"]


def test_targets_not_measured():
    results = _results()
    results["service"]["levels"] = [level for level in results["service"]["levels"] if level["concurrency"] == 1]
    results["engine"]["batches"] = results["engine"]["batches"][1:]  # no batch 1: no budget, not batch 2's time
    results["naive"] = None
    results["ceiling"] = verdicts.ceilings(results)
    rows = _by_name(results)
    assert [rows[name]["verdict"] for name in ("vs ceiling", "vs naive", "1 client")] == ["not measured"] * 3
    assert rows["1 client"]["measured"] == "- (not measured: engine batch 1)"
    assert verdicts.one_client_budget(results)["budget"] is None
    nothing = _by_name({})
    assert all(row["met"] is None and row["verdict"] == "not measured" for row in nothing.values())


def test_batch_1_is_looked_up_by_its_size():
    results = _results()
    results["engine"]["batches"].reverse()
    assert levels.engine_batch(results["engine"], 1)["images_per_s"] == 500.0
    assert verdicts.one_client_budget(results) == {"engine": 2.0, "decode": 1.0, "floor": 1.0, "budget": 4.0, "p50": 7.0,
                                                 "missing": []}
    assert levels.engine_batch(results["engine"], 3) is None and levels.engine_batch(None, 1) is None


def test_plots_name_the_compared_setups_briefly(tmp_path):
    results = _results()
    results["service_compared"] = [{"label": "SERVICE_MAX_BATCH_SIZE=8, SERVICE_INFERENCE_THREADS=1, SERVICE_JPEG_REDUCE=1",
                                    "levels": results["service"]["levels"]}]
    results.update(protocol={"concurrency": [1, 16], "images_per_request": [1, 16]}, model={"tag": "m:1"},
                   images={"label": "made-up"}, settings_given="defaults")
    assert [(s["name"], s["label"]) for s in figures.setups(results)] == [
        ("service", "defaults"), ("compare 1", "SERVICE_MAX_BATCH_SIZE=8, SERVICE_INFERENCE_THREADS=1, SERVICE_JPEG_REDUCE=1")]
    written = figures.draw(results, tmp_path)  # no /metrics split in these levels: no time.png
    assert [path.name for path in written] == ["throughput.png", "latency.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 600


# Runs kept in docs/benchmarks/ whose bench.md the report writes today to the byte (dataset/ and
# phone/ are older runs: their bench.md has an earlier report's wording).
RUNS_AS_WRITTEN = ("protocols", "triton", "triton-2026-12-02")


@pytest.mark.parametrize("run", RUNS_AS_WRITTEN)
def test_a_kept_run_renders_its_kept_report(run):
    folder = REPO / "docs" / "benchmarks" / run
    results = json.loads((folder / "bench.json").read_text())
    # bench.md was written from the run's own results, whose EXIF orientations are int keys; JSON made them strings.
    images = results["images"]
    images["exif_orientations"] = {int(k): v for k, v in images["exif_orientations"].items()}
    assert report_md.markdown(results) == (folder / "bench.md").read_text()


def _locust(url: str, prefix, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--host", url, "--headless",
               "-u", "2", "-r", "2", "-t", "3s", "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary", *options]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def _stats(prefix) -> dict[str, dict]:
    with open(f"{prefix}_stats.csv") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_locustfile_runs_headless_weights_its_tasks_by_the_options_and_counts_every_non_2xx_as_a_failure(tmp_path):
    home = tmp_path / "bentoml"
    register(RGB_MODEL, home)
    with serving(serve_env(home, SERVICE_MODELS=RGB_MODEL.name), tmp_path / "server.log") as server:
        good = _locust(server.url, tmp_path / "good", "--images-per-request", "2", "--top-k", "2")
        bad = _locust(server.url, tmp_path / "bad", "--model", "no-such-model", "--features-weight", "0")

    assert good.returncode == 0, good.stderr[-3000:]
    stats = _stats(tmp_path / "good")
    for route in ("/classify", "/features"):
        assert int(stats[route]["Request Count"]) > 0 and int(stats[route]["Failure Count"]) == 0, stats[route]
    assert "/classify" in (tmp_path / "good.html").read_text()

    assert bad.returncode != 0
    stats = _stats(tmp_path / "bad")
    assert "/features" not in stats  # its weight, 0, is the one the run used
    assert int(stats["Aggregated"]["Failure Count"]) == int(stats["Aggregated"]["Request Count"]) > 0
    with open(tmp_path / "bad_failures.csv") as f:
        errors = [row["Error"] for row in csv.DictReader(f)]
    assert errors and all("HTTP 400" in error and "unknown model" in error for error in errors)


def test_accuracy_measures_models_through_the_service_and_keeps_the_rows_of_rungs_not_measured(
        tmp_path, exported_models, trained_models, models_dir, binary_data, mnist_npz):
    """`loadtests.accuracy` (docs/results.md's table): every test image over HTTP against the offline
    evaluation; a rung measured now replaces its row, the others keep their last measurement."""
    report_path = tmp_path / "results.md"
    report_path.write_text("# Results\n\nprose before\n\n<!-- results:start -->\nold table\n<!-- results:end -->\n\nprose after\n")
    earlier = [
        {"name": "cvd-transfer", "row": "| feature extraction, with augmentation (`cvd-transfer`) | kept row |",
         "measured_on": "2026-01-01", "commit": "abc1234"},
        {"name": "scratch", "row": "| stale row of scratch |", "measured_on": "2026-01-01", "commit": None},
    ]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.json").write_text(json.dumps(earlier))

    command = [sys.executable, "-m", "loadtests.accuracy", "--data", str(binary_data), "--mnist", str(mnist_npz),
               "--models-dir", str(models_dir), "--models", "scratch,mnist", "--report", str(report_path)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    records = json.loads((tmp_path / "results" / "results.json").read_text())
    # The ladder's rungs first, in its order, then other models by name.
    assert [r["name"] for r in records] == ["cvd-transfer", "mnist", "scratch"]
    kept, mnist, scratch = records
    assert kept == earlier[0]
    for record, model in ((scratch, "scratch"), (mnist, "mnist")):
        evaluation = json.loads((trained_models[model] / "evaluation.json").read_text())
        assert record["images"] == sum(map(sum, evaluation["confusion_matrix"])) and record["failed_requests"] == 0
        # The service decodes and resizes as training did: the same answer for every test image.
        assert record["service_confusion_matrix"] == evaluation["confusion_matrix"]
        assert record["service_accuracy"] == record["offline_accuracy"] == evaluation["accuracy"]
        assert record["measured_on"] and "agrees, same confusion matrix" in record["row"] and f"(`{model}`)" in record["row"]
    assert (tmp_path / "results" / "scratch-curves.png").is_file()

    text = report_path.read_text()
    assert text.startswith("# Results\n\nprose before\n") and text.endswith("<!-- results:end -->\n\nprose after\n")
    assert "old table" not in text and "stale row" not in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "(`" in line]
    assert table == [kept["row"], mnist["row"], scratch["row"]]
    assert "`cvd-transfer` 2026-01-01 at abc1234" in text and "![scratch](results/scratch-curves.png)" in text


@pytest.mark.slow
def test_soak_ramps_soaks_overloads_and_writes_its_report(tmp_path):
    """A few seconds of each phase against a tiny model: the report is well formed, the soak's
    answers are all 200, the overload's only 200 or 503, and memory was sampled each second."""
    home = tmp_path / "home"
    register(RGB_MODEL, home)
    out = tmp_path / "soak"
    command = [sys.executable, "-m", "loadtests.soak", "--model", RGB_MODEL.name, "--limit", "4", "--ramp-seconds", "1",
               "--soak-seconds", "4", "--warmup-seconds", "1", "--memory-tolerance", "0.5", "--overload-seconds", "2",
               "--after-seconds", "1", "--set", "SERVICE_WORKERS=1", "--out", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=serve_env(home))
    assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "soak.json").read_text())
    assert [level["concurrency"] for level in results["ramp"]] == [1, 4, 16, 64]
    assert results["maximum_images_per_s"] > 0
    soak, overload, after = (results["phases"][name] for name in ("soak", "overload", "after"))
    assert set(soak["outcomes"]) == {"200"} and soak["requests"] >= 1
    assert set(overload["outcomes"]) <= {"200", "503"} and overload["rate_per_s"] == pytest.approx(4 * soak["rate_per_s"] / 0.7)
    assert set(after["outcomes"]) == {"200"}
    assert len(soak["memory_mib"]) >= 3 and all(mib > 50 for _, mib in soak["memory_mib"])
    assert [row["met"] for row in results["verdicts"]][0] is True and len(results["verdicts"]) == 4
    assert results["exit_code"] == 0  # the server's, on SIGTERM
    markdown = (out / "soak.md").read_text()
    assert "## Verdicts" in markdown and "| soak |" in markdown and "| overload |" in markdown
    with Image.open(out / "soak.png") as image:
        assert image.format == "PNG" and image.width > 300


def test_soak_refuses_a_bad_setting_in_one_line():
    run = subprocess.run([sys.executable, "-m", "loadtests.soak", "--set", "SERVICE_NO_SUCH=1"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and run.stderr.strip().startswith("error: --set 'SERVICE_NO_SUCH=1'"), run.stderr
    assert "Traceback" not in run.stderr
