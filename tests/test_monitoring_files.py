"""The monitoring pieces that need no Prometheus: the request-duration middleware around a real
Starlette app, and the rule, alert and dashboard files naming only series that exist
(tests/test_prometheus_rules.py and tests/test_prometheus_live.py run them on promtool and Prometheus)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from loadtests.prometheus import PROMETHEUS_DIR, DASHBOARD, REPO, dashboard_queries, recording_rules, rule_files
from service import metrics, observe

GRAFANA = REPO / "deploy" / "grafana"


# --- the middleware ---------------------------------------------------------------------------------


def _app() -> Starlette:
    async def ok(request):
        return PlainTextResponse("ok")

    async def fail(request):
        raise RuntimeError("broken")

    return Starlette(routes=[Route("/classify", ok, methods=["POST"]), Route("/models", ok), Route("/explain", fail)])


def _call(app, path: str, method: str = "GET") -> list[dict]:
    """One HTTP request through `app` as an ASGI server makes it; the messages the app sent."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": [],
             "server": ("127.0.0.1", 3000), "client": ("127.0.0.1", 1234)}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _count(endpoint: str, status_class: str) -> float:
    return REGISTRY.get_sample_value("imgcls_request_duration_seconds_count",
                                     {"endpoint": endpoint, "status_class": status_class}) or 0.0


@pytest.mark.parametrize("path, method, endpoint, status_class", [
    ("/classify", "POST", "classify", "2xx"),
    ("/classify/", "POST", "classify", "3xx"),  # Starlette redirects to /classify
    ("/models", "GET", "models", "2xx"),
    ("/classify", "GET", "classify", "4xx"),   # 405
    ("/admin/../etc/passwd", "GET", "other", "4xx"),
    ("/" + "x" * 500, "GET", "other", "4xx"),
])
def test_each_request_is_timed_under_a_fixed_endpoint_and_its_status_class(path, method, endpoint, status_class):
    app = observe.RequestDuration(_app())
    before = _count(endpoint, status_class)
    messages = _call(app, path, method)
    assert messages[0]["type"] == "http.response.start"
    assert _count(endpoint, status_class) == before + 1


def test_a_request_the_app_fails_is_a_5xx_and_the_error_goes_on():
    app = observe.RequestDuration(_app())
    before = _count("explain", "5xx")
    with pytest.raises(RuntimeError):
        _call(app, "/explain")
    assert _count("explain", "5xx") == before + 1


def test_the_api_endpoints_series_exist_from_the_start():
    observe.RequestDuration(_app())
    for endpoint in observe.API_ENDPOINTS:
        for status_class in observe.STATUS_CLASSES:
            assert REGISTRY.get_sample_value("imgcls_request_duration_seconds_count",
                                             {"endpoint": endpoint, "status_class": status_class}) is not None


def test_every_route_of_the_service_is_an_endpoint_label():
    source = (REPO / "service" / "service.py").read_text()
    routes = set(re.findall(r'route="/(\w+)"', source)) | set(re.findall(r'@http\.get\("/(\w+)"', source))
    assert routes and routes <= set(observe.ENDPOINTS), routes - set(observe.ENDPOINTS)


@pytest.mark.parametrize("status, expected", [(200, "2xx"), (204, "2xx"), (404, "4xx"), (413, "4xx"), (503, "5xx")])
def test_status_class(status, expected):
    assert observe.status_class(status) == expected


# --- the series the files name -----------------------------------------------------------------------


def _sample_names() -> set[str]:
    """Every name of service/metrics.py's metrics: the families and their samples (histograms'
    _bucket, _sum and _count, counters' _total)."""
    suffixes = {"histogram": ("", "_bucket", "_sum", "_count"), "counter": ("", "_total"), "gauge": ("",)}
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for metric in value.describe():
                names.update(metric.name + suffix for suffix in suffixes[metric.type])
    return names


def _monitoring_texts() -> dict[str, str]:
    files = [*rule_files(), PROMETHEUS_DIR / "alerts_test.yml", DASHBOARD]
    return {path.name: path.read_text() for path in files}


def test_the_series_the_core_and_the_autoscaler_rely_on_are_defined():
    assert metrics.IN_FLIGHT._labelnames == ("model",) and metrics.IN_FLIGHT._multiprocess_mode == "livesum"
    assert metrics.QUEUE_WAIT_SECONDS._labelnames == ("model",)
    assert metrics.REQUEST_SECONDS._labelnames == ("endpoint", "status_class")
    assert {"imgcls_requests_in_flight", "imgcls_queue_wait_seconds_bucket", "imgcls_request_duration_seconds_bucket",
            "imgcls_images_processed_total", "imgcls_model_info"} <= _sample_names()


@pytest.mark.parametrize("name", sorted(_monitoring_texts()))
def test_the_files_name_only_series_the_service_exposes_or_the_rules_record(name):
    text = _monitoring_texts()[name]
    raw = set(re.findall(r"\b(imgcls_[a-z_]+)\b", re.sub(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", "", text)))
    assert raw - _sample_names() == set(), f"{name} names series the service does not expose"
    recorded = set(re.findall(r"\b([a-z_]+:imgcls_[a-z0-9_]+:[a-z0-9_]+)\b", text))
    assert recorded - set(recording_rules()) == set(), f"{name} names series no rule records"


# --- the dashboard and its provisioning ----------------------------------------------------------


def test_the_dashboard_reads_its_datasource_variable_and_has_a_query_for_every_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${%s}" % variable["name"] and panel["description"], panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == panel["datasource"]["uid"] and t["expr"] for t in panel["targets"])
    assert len(dashboard_queries()) == sum(len(panel["targets"]) for panel in panels)
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert variable["current"]["value"] in {d["uid"] for d in datasources if d["type"] == "prometheus"}
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "imgcls.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
