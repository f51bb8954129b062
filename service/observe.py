"""How long each HTTP request takes, by endpoint and status class: imgcls_request_duration_seconds.

RequestDuration is an ASGI middleware around the whole app (the APIs, GET /models, BentoML's
/readyz, /livez and /metrics). Its label values come from small fixed sets whatever a client
sends: the endpoint is the path's name when the path is one of ENDPOINTS, otherwise "other";
the status class is the status code's hundreds ("2xx", "3xx" for a redirect, "4xx", "5xx").

It sits inside BentoML's own middlewares: a request that BentoML's timeout (504) or concurrency
limit (503) answers before the app runs is not seen here (bentoml_service_request_duration_seconds
counts those). It sits outside RequestGuard, so its 413 and 415 answers are counted.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics

# The service's routes: its APIs, the model list, and BentoML's health and metrics endpoints.
ENDPOINTS = ("classify", "features", "explain", "models", "readyz", "livez", "healthz", "metrics", "v2")
# The ones whose series exist from the start (at 0), so that ratios over them are 0 rather than absent.
API_ENDPOINTS = ENDPOINTS[:4]
OTHER = "other"
STATUS_CLASSES = ("2xx", "4xx", "5xx")


def endpoint_label(path: str) -> str:
    """The endpoint label of a request path: '/classify' -> 'classify', every Open Inference Protocol
    path (/v2/...) -> 'v2'; anything not a route -> 'other'."""
    name = path.strip("/")
    if name == "v2" or name.startswith("v2/"):
        return "v2"
    return name if name in ENDPOINTS else OTHER


def status_class(status: int) -> str:
    """'2xx' for 200..299, '4xx' for 400..499, ...: the hundreds of an HTTP status."""
    return f"{status // 100}xx"


class RequestDuration:
    """Observes every HTTP request's duration, from the call into the app until it returns (the
    whole body sent), under its endpoint and the status class of the answer. A request whose app
    raises or is cancelled (a timeout) before an answer starts counts as 5xx: the service did not answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        for endpoint in API_ENDPOINTS:
            for status in STATUS_CLASSES:
                metrics.REQUEST_SECONDS.labels(endpoint=endpoint, status_class=status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            metrics.REQUEST_SECONDS.labels(endpoint=endpoint_label(scope["path"]), status_class=status_class(status)).observe(
                time.perf_counter() - start)
