"""The edge: what every HTTP request meets first, before any of BentoML's middlewares.

In order:
1. CORS (SERVICE_CORS_ORIGINS; off by default): browsers' preflights answered, the headers added
   to every answer, refusals included, for the origins allowed.
2. Routing: a path the service does not serve is 404 `not_found`, a method a route does not take is
   405 `method_not_allowed` (with Allow), both with the service's JSON body; HEAD is answered
   wherever GET is. Routes are read
   from the application itself (Starlette's own matching, and the files of its static folders),
   so a route added to the service is served without a change here.
3. API keys (SERVICE_API_KEYS; off by default): `Authorization: Bearer <key>`, compared with each
   key in constant time (hmac.compare_digest, every key compared), else 401 `unauthorized`.
   /livez, /healthz and /readyz are always open (probes carry no keys), and so is the page for
   people, /ui and its files (static, no data: it asks for a key and sends it on each API call);
   /metrics too unless SERVICE_METRICS_REQUIRE_KEY=1.

Why before BentoML's middlewares: its metrics middleware labels bentoml_service_request_* with
the request's raw path, so every path a client invents would become a new series on /metrics.
Answered here, only the application's own paths ever reach it: a small fixed set of label values.
BentoML offers no hook outside its middlewares, so `install` wraps the application its service
builds (Service.to_asgi) in this one.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Iterable

from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import Reason, Rejection, quoted
from .ui import PREFIX as PAGE  # the page for people and, under it, its files

log = logging.getLogger("bentoml.image_classifier")

PROBES = ("/livez", "/healthz", "/readyz")
METRICS = "/metrics"


class Edge:
    """ASGI middleware: routing refusals and API keys in front of `app` (a Starlette application)."""

    def __init__(self, app: ASGIApp, *, api_keys: Iterable[str] = (), metrics_require_key: bool = False) -> None:
        self.app = app
        self.keys = [key.encode() for key in api_keys]
        self.open_paths = set(PROBES) | (set() if metrics_require_key else {METRICS})
        self._static: dict[str, set[str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and websockets, which the service has none of)
            return await self.app(scope, receive, send)
        problem = self._route_problem(scope)
        if problem is not None and scope["method"] == "HEAD" and "GET" in problem[1].get("Allow", ""):
            # HEAD is GET without the body (RFC 9110), also where the route was declared for GET alone (FastAPI's).
            scope, send, problem = {**scope, "method": "GET"}, _without_body(send), None
        rejection, headers = problem or (self._key_problem(scope), {})
        if rejection is None:
            return await self.app(scope, receive, send)
        response = rejection.response()
        response.headers.update(headers)
        return await response(scope, receive, send)

    # --- routing --------------------------------------------------------------------------------

    def _route_problem(self, scope: Scope) -> tuple[Rejection, dict[str, str]] | None:
        """None when the application serves the request's path and method; else the refusal and its headers."""
        allowed: set[str] = set()
        for route in getattr(self.app, "routes", ()):
            if isinstance(route, Mount) and isinstance(route.app, StaticFiles):
                if self._is_static_file(route, scope["path"]):
                    if scope["method"] in ("GET", "HEAD"):
                        return None
                    allowed |= {"GET", "HEAD"}
                continue
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return None
            if match is Match.PARTIAL:
                allowed |= set(getattr(route, "methods", None) or ()) or _methods_of(route, scope)
        if allowed:
            methods = ", ".join(sorted(allowed))
            return Rejection(Reason.METHOD_NOT_ALLOWED, f"{scope['path']} takes {methods}, not {quoted(scope['method'])}"), \
                {"Allow": methods}
        return Rejection(Reason.NOT_FOUND, f"no such path: {quoted(scope['path'])}; the service's paths are listed at /docs.json"), {}

    def _is_static_file(self, mount: Mount, path: str) -> bool:
        if self._static is None:  # the files of each static folder, listed once (they are the package's)
            self._static = {}
            for route in self.app.routes:
                if isinstance(route, Mount) and isinstance(route.app, StaticFiles) and route.app.directory:
                    root = Path(route.app.directory)
                    self._static[route.path] = {f"{route.path}/{p.relative_to(root).as_posix()}" for p in root.rglob("*") if p.is_file()}
        return path in self._static.get(mount.path, set())

    # --- API keys -------------------------------------------------------------------------------

    def _key_problem(self, scope: Scope) -> Rejection | None:
        path = scope["path"]
        if not self.keys or path in self.open_paths or (scope["method"] in ("GET", "HEAD") and
                                                         (path == PAGE or path.startswith(PAGE + "/"))):
            return None
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
        # Every key compared, each in constant time: neither which key nor how much of one matched shows in the timing.
        if given and sum(hmac.compare_digest(given, key) for key in self.keys):
            return None
        what = "an invalid API key" if given else "no API key"
        return Rejection(Reason.UNAUTHORIZED, f"{what}: send the header 'Authorization: Bearer <key>'")


def _without_body(send: Send) -> Send:
    async def head_send(message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return head_send


def _methods_of(route, scope: Scope) -> set[str]:
    """The methods a route other than a plain Route (a mount of an application) takes at this path."""
    methods: set[str] = set()
    for child in getattr(getattr(route, "app", None), "routes", ()):
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            match, _ = child.matches({**scope, "method": method})
            if match is Match.FULL:
                methods.add(method)
    return methods


def wrap(app: ASGIApp, *, api_keys: Iterable[str] = (), metrics_require_key: bool = False,
         cors_origins: Iterable[str] = ()) -> ASGIApp:
    """`app` behind the edge (and behind CORS when origins are given)."""
    edge: ASGIApp = Edge(app, api_keys=api_keys, metrics_require_key=metrics_require_key)
    origins = list(cors_origins)
    if origins:
        edge = CORSMiddleware(edge, allow_origins=origins, allow_methods=["GET", "HEAD", "POST"],
                              allow_headers=["Authorization", "Content-Type", "Accept"], max_age=600)
    return edge


def install(service, **options) -> None:
    """Make `service` (a bentoml.Service) serve its application behind the edge: BentoML's worker
    calls service.to_asgi() to build what uvicorn serves. The service is an attrs class with slots,
    so the method is replaced by giving the object a subclass of its class that overrides it."""
    base = type(service)

    class EdgeService(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def to_asgi(self, is_main: bool = True):
            return wrap(base.to_asgi(self, is_main), **options)

    EdgeService.__name__ = EdgeService.__qualname__ = base.__name__
    service.__class__ = EdgeService
