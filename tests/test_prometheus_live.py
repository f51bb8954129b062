"""The monitoring files against a real Prometheus scraping a real service (system tier: Debian's
prometheus package).

The service (two workers, the hand-built tiny models) and a Prometheus with deploy/prometheus/'s
config and rules, scraping every second, run for the module. After good and refused traffic,
every recording rule and every dashboard panel query, read from the files, must return data
with plausible values through Prometheus' HTTP API: a new rule or panel is checked without
editing this file.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from loadtests.prometheus import alert_rules, dashboard_queries, recording_rules, scraping
from loadtests.servers import serve_env, serving
from tests.service_helpers import GRAY_MODEL, JPEG_SAMPLE, PNG_SAMPLE, RGB_MODEL, check_refusal, register

pytestmark = pytest.mark.system

MAX_BATCH = 8
# Refusals sent, by the errors.Reason each is counted under: BAD_REQUESTS entries, and a body
# that RequestGuard (a middleware before the API) refuses.
REFUSALS = {"not-an-image": "not_an_image", "unknown-model": "unknown_model"}
WRONG_CONTENT_TYPES = 3


def _send_traffic(server, seconds: float = 8.0) -> Counter:
    """Good requests to both models and endpoints from 8 clients for `seconds`, with refusals among
    them; what was sent, by (endpoint, status class) and by refusal reason."""
    sent: Counter = Counter()

    def good(i: int) -> tuple[str, int]:
        route = "/features" if i % 4 == 3 else "/classify"
        files = [("images", (f"{j}.jpg", JPEG_SAMPLE if j % 2 else PNG_SAMPLE, "application/octet-stream")) for j in range(1 + i % 3)]
        model = (RGB_MODEL, GRAY_MODEL)[i % 2].name
        return route, requests.post(server.url + route, files=files, data={"model": model}, timeout=60).status_code

    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(8) as pool:
        i = 0
        while time.monotonic() < deadline:
            for route, status in pool.map(good, range(i, i + 32)):
                assert status == 200
                sent[route.strip("/"), "2xx"] += 1
            i += 32
            for name, reason in REFUSALS.items():
                check_refusal(server, "/classify", name)
                sent["classify", "4xx"] += 1
                sent[reason] += 1
            if sent["wrong_content_type"] < WRONG_CONTENT_TYPES:
                response = requests.post(server.url + "/classify", json={"images": []}, timeout=10)
                assert response.status_code == 415, response.text
                sent["classify", "4xx"] += 1
                sent["wrong_content_type"] += 1
    return sent


def _values(result: list[dict]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def _has_data(result: list[dict]) -> bool:
    return any(math.isfinite(value) for value in _values(result))


def _every_query() -> dict[str, str]:
    """name -> PromQL: the recording rules (by their recorded series) and the dashboard's queries."""
    queries = {record: record for record in recording_rules()}
    queries.update({f"panel {q.panel!r}: {q.expr}": q.expr for q in dashboard_queries()})
    return queries


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """(server, prometheus, what was sent), once every query has data (or 60 s have passed)."""
    home = tmp_path_factory.mktemp("bentoml-home")
    register(RGB_MODEL, home)
    register(GRAY_MODEL, home)
    env = serve_env(home, SERVICE_MODELS=f"{RGB_MODEL.name},{GRAY_MODEL.name}", SERVICE_DEFAULT_MODEL=RGB_MODEL.name,
                    SERVICE_WORKERS="2", SERVICE_MAX_BATCH_SIZE=str(MAX_BATCH))
    with serving(env, tmp_path_factory.mktemp("logs") / "server.log") as server, \
            scraping(f"127.0.0.1:{server.port}", interval_s=1.0) as prometheus:
        deadline = time.monotonic() + 30
        while _values(prometheus.query('up{job="imgcls"}')) != [1.0]:  # scraped once before the traffic: rates see it all
            assert time.monotonic() < deadline, prometheus.targets()
            time.sleep(0.5)
        sent = _send_traffic(server)
        ended, deadline = time.time(), time.monotonic() + 60

        def settled() -> bool:  # a scrape a second after the last answer, and data for every query
            scraped = _values(prometheus.query('timestamp(up{job="imgcls"})'))
            return bool(scraped) and scraped[0] > ended + 1 and all(_has_data(prometheus.query(expr)) for expr in _every_query().values())

        while not settled() and time.monotonic() < deadline:
            time.sleep(1)
        yield server, prometheus, sent


def test_prometheus_loaded_every_rule_and_evaluates_it_without_error(observed):
    _, prometheus, _ = observed
    loaded = {rule["name"]: rule for rule in prometheus.rules()}
    assert set(loaded) == set(recording_rules()) | set(alert_rules())
    assert {name: rule["health"] for name, rule in loaded.items() if rule["health"] != "ok"} == {}


@pytest.mark.parametrize("name", list(_every_query()))
def test_every_rule_and_panel_returns_data(observed, name):
    _, prometheus, _ = observed
    result = prometheus.query(_every_query()[name])
    assert _has_data(result), f"{name}: no data: {result}"
    assert all(value >= 0 for value in _values(result) if math.isfinite(value)), result


def test_throughput_counts_every_image_answered(observed):
    _, prometheus, _ = observed
    by_model = {s["metric"]["model"]: float(s["value"][1]) for s in prometheus.query(
        "sum by (model) (model_endpoint:imgcls_images_processed:rate1m)")}
    assert by_model[RGB_MODEL.name] > 0 and by_model[GRAY_MODEL.name] > 0, by_model


@pytest.mark.parametrize("series", ["endpoint:imgcls_request_duration_seconds", "model:imgcls_queue_wait_seconds",
                                    "model:imgcls_inference_duration_seconds"])
def test_p99_is_at_least_p50(observed, series):
    _, prometheus, _ = observed
    def by_labels(expr: str) -> dict[tuple, float]:
        return {tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): float(s["value"][1])
                for s in prometheus.query(expr)}

    p50, p99 = by_labels(f"{series}:p50_1m"), by_labels(f"{series}:p99_1m")
    pairs = {labels: (p50[labels], p99[labels]) for labels in p50 if labels in p99 and math.isfinite(p50[labels])}
    assert pairs, (p50, p99)
    assert all(0 <= low <= high for low, high in pairs.values()), pairs


def test_latency_percentiles_lie_within_the_histograms_buckets(observed):
    """p99 of a fast local service: under a second, and more than zero (the buckets start at 1 ms)."""
    _, prometheus, _ = observed
    p99 = {s["metric"]["endpoint"]: float(s["value"][1]) for s in prometheus.query("endpoint:imgcls_request_duration_seconds:p99_1m")}
    assert 0 < p99["classify"] < 1 and 0 < p99["features"] < 1, p99


def test_mean_batch_size_is_between_one_and_the_largest_batch(observed):
    _, prometheus, _ = observed
    means = _values(prometheus.query("model:imgcls_batch_size_images:mean1m"))
    assert len(means) == 2 and all(1 <= mean <= MAX_BATCH for mean in means), means


def test_refusals_are_counted_by_reason(observed):
    _, prometheus, sent = observed
    counted = {s["metric"]["reason"]: float(s["value"][1]) for s in prometheus.query(
        "sum by (reason) (imgcls_rejected_requests_total) > 0")}
    assert counted == {reason: sent[reason] for reason in [*REFUSALS.values(), "wrong_content_type"]}
    ratios = {s["metric"]["reason"]: float(s["value"][1]) for s in prometheus.query("reason:imgcls_rejected_requests:ratio_rate1m")}
    assert all(0 < ratios[reason] < 1 for reason in counted), ratios
    assert ratios["overloaded"] == 0


def test_request_durations_are_counted_by_endpoint_and_status_class(observed):
    """Every request sent, under its endpoint and status class; RequestGuard's 415s included."""
    _, prometheus, sent = observed
    counted = {(s["metric"]["endpoint"], s["metric"]["status_class"]): float(s["value"][1]) for s in prometheus.query(
        'sum by (endpoint, status_class) (imgcls_request_duration_seconds_count{endpoint=~"classify|features"}) > 0')}
    assert counted == {key: count for key, count in sent.items() if isinstance(key, tuple)}
    assert _values(prometheus.query('sum(imgcls_request_duration_seconds_count{endpoint="metrics"})'))[0] > 0  # the scrapes


def test_images_in_flight_are_back_to_zero_once_answered(observed):
    _, prometheus, _ = observed
    assert sorted(_values(prometheus.query("imgcls_requests_in_flight"))) == [0.0, 0.0]


def test_served_models_panel_names_each_model_version_and_provider(observed):
    _, prometheus, _ = observed
    (query,) = [q for q in dashboard_queries() if "imgcls_model_info" in q.expr]
    rows = [s["metric"] for s in prometheus.query(query.expr)]
    assert sorted(row["model"] for row in rows) == sorted([RGB_MODEL.name, GRAY_MODEL.name])
    assert all(row["version"] and row["provider"].endswith("ExecutionProvider") for row in rows), rows


def test_a_healthy_service_fires_no_alert(observed):
    _, prometheus, _ = observed
    states = {rule["name"]: rule["state"] for rule in prometheus.rules() if rule["type"] == "alerting"}
    assert states == {name: "inactive" for name in alert_rules()}
