"""GET /ui's files (service/ui.py) on a bare FastAPI app: what is served, with which content type,
and that the page loads nothing from elsewhere. The page in a real browser: test_ui_browser.py."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service import ui


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    ui.mount(app)
    return TestClient(app)


@pytest.mark.parametrize("path,content_type", [("/ui", "text/html"), ("/ui/index.html", "text/html"),
                                               ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")])
def test_the_page_and_its_assets_with_their_content_types(client, path, content_type):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{content_type}; charset=utf-8"
    assert response.content == (ui.UI_DIR / (path.removeprefix("/ui").lstrip("/") or ui.PAGE)).read_bytes()


@pytest.mark.parametrize("path", ["/ui/missing.js", "/ui/..%2Fui.py", "/ui/%2E%2E%2Fsettings.py", "/ui/ui.py"])
def test_nothing_else_is_served(client, path):
    assert client.get(path).status_code == 404


def test_every_file_the_page_loads_is_one_of_the_assets_and_nothing_comes_from_elsewhere():
    page = (ui.UI_DIR / ui.PAGE).read_text()
    loaded = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert {"/ui/app.js", "/ui/style.css"} <= set(loaded)
    for url in loaded:
        assert url == "/" or url.removeprefix("/ui/") in ui.ASSETS, url  # "/" is the API's own page
    for name in ui.ASSETS:
        text = (ui.UI_DIR / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name  # no other host
        assert "@import" not in text and "import(" not in text, name


def test_the_package_ships_every_asset():
    assert sorted(p.name for p in ui.UI_DIR.iterdir()) == sorted(ui.ASSETS)
