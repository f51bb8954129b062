"""GET /ui in a real browser (headless Chromium through Selenium; tests/browser.py) against a real
`bentoml serve` of the session's tiny trained models, which /explain can explain.

What the page shows is checked against what the service answers the same file over plain HTTP:
the label, the probabilities, the service's own error messages.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from loadtests.servers import serve_env, serving
from service import settings
from tests import browser
from training.demo_data import draw_shape

pytestmark = pytest.mark.system

MODELS = ("scratch", "finetuned")  # tests/conftest.py: circles and squares, 80x80 and 48x48
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def server(exported_models, tmp_path_factory):
    env = serve_env(SERVICE_MODELS=",".join(MODELS), SERVICE_DEFAULT_MODEL=MODELS[0], SERVICE_MAX_IMAGE_PIXELS=str(MAX_PIXELS))
    with serving(env, tmp_path_factory.mktemp("ui-logs") / "server.log") as running:
        yield running


@pytest.fixture
def driver():
    try:
        with browser.chrome() as running:
            yield running
    except browser.BrowserMissing as err:
        pytest.fail(str(err))  # the system tier fails, never skips, without its packages


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui-images")
    rng = np.random.default_rng(3)
    files = {}
    for kind in ("circles", "squares"):
        files[kind] = folder / f"{kind[:-1]}.jpg"
        draw_shape(rng, kind, 140, 120)[0].save(files[kind], quality=92)
    files["corrupt"] = folder / "broken.jpg"
    files["corrupt"].write_bytes(files["circles"].read_bytes()[:400])  # a JPEG cut short
    files["huge"] = folder / "huge.png"
    Image.new("RGB", (1200, 1000), (90, 140, 200)).save(files["huge"])  # 1.2 million pixels
    return files


def service_answer(server, route: str, path, **fields) -> requests.Response:
    return requests.post(server.url + route, files=[("images", (path.name, path.read_bytes(), "application/octet-stream"))],
                         data=fields, timeout=60)


def test_an_image_gets_the_services_labels_and_a_heatmap_it_can_toggle_and_retarget(server, driver, images, tmp_path):
    browser.open_page(driver, server.url + "/ui")
    assert driver.execute_script("return document.querySelector('#model').value") == MODELS[0]  # the default model
    browser.upload(driver, images["circles"])
    shown = browser.wait_for_heatmap(driver, images["circles"].name)

    expected = service_answer(server, "/classify", images["circles"], model=MODELS[0], top_k="2").json()[0]
    assert shown["error"] is None and shown["predicted"] == expected["label"] == shown["explained"]
    assert [row["label"] for row in shown["labels"]] == [item["label"] for item in expected["top_k"]]
    for row, item in zip(shown["labels"], expected["top_k"]):
        assert row["value"] == f"{100 * item['probability']:.1f}%"
        assert row["width"] == pytest.approx(100 * item["probability"], abs=0.01)
    assert "classify" in shown["timing"] and "explain" in shown["timing"] and " ms" in shown["timing"]

    driver.save_screenshot(str(tmp_path / "ui.png"))
    with Image.open(tmp_path / "ui.png") as picture:
        assert picture.size[0] >= 1000 and picture.size[1] >= 700
    assert browser.pixel_spread(tmp_path / "ui.png") > 20  # a blank or unstyled page is nearly uniform

    card = "#results .card"
    driver.find_element("css selector", f"{card} .show-heatmap").click()
    state = browser.card_state(driver, images["circles"].name)
    assert not state["heatmapShown"] and state["originalShown"]
    driver.find_element("css selector", f"{card} .show-heatmap").click()
    other = next(c for c in ("circles", "squares") if c != expected["label"])
    from selenium.webdriver.support.select import Select

    Select(driver.find_element("css selector", f"{card} .explain-label")).select_by_value(other)
    assert browser.wait_for_heatmap(driver, images["circles"].name, explained=other)["explained"] == other


def test_the_services_own_messages_are_shown_for_a_corrupt_file_and_too_many_pixels(server, driver, images):
    browser.open_page(driver, server.url + "/ui")
    browser.upload(driver, images["corrupt"], images["huge"], images["squares"])
    for name in ("corrupt", "huge"):
        refused = service_answer(server, "/classify", images[name], model=MODELS[0], top_k="2")
        assert refused.status_code in (400, 413, 415)
        assert browser.wait_for_error(driver, images[name].name) == refused.json()["error"]
    assert "more than the limit" in browser.card_state(driver, images["huge"].name)["error"]
    browser.wait_for_heatmap(driver, images["squares"].name)  # the others are answered all the same


def test_another_model_answers_again_for_every_image(server, driver, images):
    from selenium.webdriver.support.select import Select

    browser.open_page(driver, server.url + "/ui")
    browser.upload(driver, images["squares"])
    browser.wait_for_heatmap(driver, images["squares"].name)
    Select(driver.find_element("css selector", "#model")).select_by_value(MODELS[1])
    expected = service_answer(server, "/classify", images["squares"], model=MODELS[1], top_k="2").json()[0]

    def answered(d):
        state = browser.card_state(d, images["squares"].name)
        return state if state["heatmapShown"] and state["labels"] and state["labels"][0]["value"] == \
            f"{100 * expected['probability']:.1f}%" else None

    assert browser.wait(driver, answered, message="no answer of the other model")["predicted"] == expected["label"]


def test_keyboard_and_a_phone_sized_window(server, driver):
    from selenium.webdriver.common.keys import Keys

    browser.open_page(driver, server.url + "/ui")
    # The file chooser cannot be seen headless: count the clicks the drop zone gives the file input.
    driver.execute_script("window.picks = 0; document.querySelector('#files').addEventListener('click', "
                          "e => { window.picks++; e.preventDefault(); });")
    order = []
    body = driver.find_element("css selector", "body")
    for _ in range(6):
        body.send_keys(Keys.TAB) if not order else driver.switch_to.active_element.send_keys(Keys.TAB)
        order.append(driver.execute_script("const e = document.activeElement; return e.id || e.tagName.toLowerCase();"))
    assert order.index("model") < order.index("top-k") < order.index("drop"), order
    drop = driver.find_element("css selector", "#drop")
    assert drop.get_attribute("role") == "button"
    drop.send_keys(Keys.ENTER)
    drop.send_keys(Keys.SPACE)
    assert driver.execute_script("return window.picks") == 2
    for control in ("model", "top-k", "files"):  # every control has a label
        assert driver.execute_script(f"return document.querySelector('#{control}').labels.length") == 1

    driver.set_window_size(390, 844)
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")


@pytest.mark.skipif("SERVICE_API_KEYS" not in settings.VARIABLES, reason="API keys come with the reliability work (issue 13)")
def test_with_api_keys_the_page_asks_for_one_and_sends_it_on_every_call(exported_models, driver, images, tmp_path):
    env = serve_env(SERVICE_MODELS=",".join(MODELS), SERVICE_API_KEYS="a-key-for-the-test")
    with serving(env, tmp_path / "server.log") as keyed:
        assert requests.get(keyed.url + "/models", timeout=10).status_code == 401
        driver.get(keyed.url + "/ui")
        browser.wait(driver, lambda d: d.execute_script("return document.querySelector('#key-dialog').open"),
                     message="no key asked for")
        key = driver.find_element("css selector", "#key")
        key.send_keys("a-wrong-key\n")
        browser.wait(driver, lambda d: d.execute_script("return document.querySelector('#key-dialog').open"),
                     message="a wrong key was taken")
        key.clear()
        key.send_keys("a-key-for-the-test\n")
        browser.wait(driver, lambda d: d.execute_script("return document.querySelectorAll('#model option').length > 0"))
        browser.upload(driver, images["circles"])
        browser.wait_for_heatmap(driver, images["circles"].name)
        assert driver.execute_script("return sessionStorage.getItem('imgcls-api-key')") == "a-key-for-the-test"
