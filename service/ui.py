"""GET /ui: a page for people, served by the service itself.

Static files in service/ui/ (HTML, CSS, JavaScript; no build step, nothing fetched from elsewhere)
that call the service's own APIs from the browser: GET /models, POST /classify, POST /explain.
The page holds no data, so it is served to anyone; the APIs it calls check an API key when
SERVICE_API_KEYS is set, and the page asks for one when they answer 401.

Only the files of ASSETS are served, each with its content type: no path from the request ever
reaches the file system.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response

UI_DIR = Path(__file__).with_name("ui")
PAGE = "index.html"
PREFIX = "/ui"  # where the page is served (open without an API key: service/access.py)
# file -> content type
ASSETS = {
    PAGE: "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The files change only with the package: a browser may keep them a while, but asks again after a deploy.
CACHE_CONTROL = "max-age=300"


def asset(name: str) -> Response:
    """The file `name` of ASSETS with its content type (404 for any other name)."""
    if name not in ASSETS:
        return Response(status_code=404)
    return Response((UI_DIR / name).read_bytes(), media_type=ASSETS[name], headers={"Cache-Control": CACHE_CONTROL})


def mount(app: FastAPI, prefix: str = PREFIX) -> None:
    """Add GET `prefix` (the page) and GET `prefix`/<asset> to `app`, outside the OpenAPI schema."""

    @app.get(prefix, include_in_schema=False)
    async def page() -> Response:
        return asset(PAGE)

    @app.get(prefix + "/{name}", include_in_schema=False)
    async def file(name: str) -> Response:
        return asset(name)
