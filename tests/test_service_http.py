"""The service over real HTTP: `bentoml serve` in a subprocess, started once for this module.

The server serves two hand-built ONNX models (tests/service_helpers.py: one RGB, one grayscale)
from a temporary BentoML home, with two workers so that the metrics are checked in
Prometheus' multiprocess mode, and small limits so that the bad-input tests send small bodies.
"""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import urllib3
from PIL import Image

from service import imaging
from loadtests.images import encode, photo_like
from loadtests.servers import metric_value, serve_env, serving
from tests.service_helpers import (BAD_INPUT_LIMITS, BAD_REQUESTS, GRAY_MODEL, JPEG_SAMPLE, PNG_SAMPLE, RGB_MODEL,
                                   batch_concurrently, check_refusal, register, send_bad)

LIMITS = {"SERVICE_MAX_IMAGES_PER_REQUEST": "4", "SERVICE_MAX_BATCH_SIZE": "8", **BAD_INPUT_LIMITS}
JPEG, PNG = JPEG_SAMPLE, PNG_SAMPLE
# A JPEG with a second picture after it (MPF), as many phones write: Pillow calls it MPO.
MPO = encode(photo_like(50, 40, seed=2), "MPO", save_all=True, append_images=[Image.fromarray(photo_like(20, 30))])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-home")
    register(RGB_MODEL, home)
    register(GRAY_MODEL, home)
    env = serve_env(home, SERVICE_MODELS=f"{RGB_MODEL.name},{GRAY_MODEL.name}", SERVICE_DEFAULT_MODEL=RGB_MODEL.name,
                    SERVICE_WORKERS="2", **LIMITS)
    with serving(env, tmp_path_factory.mktemp("logs") / "server.log") as running:
        yield running


def post(server, route: str, images=(("a.jpg", JPEG),), **fields) -> requests.Response:
    files = [("images", (name, data, "application/octet-stream")) for name, data in images]
    return requests.post(server.url + route, files=files, data={k: str(v) for k, v in fields.items()}, timeout=60)


def expected_output(model, files) -> tuple[np.ndarray, np.ndarray]:
    """What the model must answer: training's preprocessing (test_service_imaging.py proves
    imaging.preprocess is it) and the hand-built graph's arithmetic in numpy."""
    batch = np.stack([imaging.preprocess(data, imaging.InputSpec(model.height, model.width, model.channels),
                                         max_pixels=1 << 40, jpeg_reduce=False) for data in files])
    return model.predict(batch)


def test_health_endpoints(server):
    assert requests.get(server.url + "/livez", timeout=10).status_code == 200
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200


def test_startup_logs_one_line_per_model_and_worker_with_its_provider(server):
    """Each of the two workers loads every model into its own session and says so once (the second
    worker may still be loading when the first answers /readyz: it accepts no request until done)."""
    deadline = time.monotonic() + 60
    while True:
        lines = [line for line in server.log().splitlines() if "on CPUExecutionProvider" in line or "on CUDAExecutionProvider" in line]
        if len(lines) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    loaded = {(re.search(r"\[entry_service:image_classifier:(\d+)\]", line).group(1), re.search(r"model ([\w-]+):", line).group(1))
              for line in lines}
    assert len(lines) == 4 and loaded == {(w, m.name) for w in ("1", "2") for m in (RGB_MODEL, GRAY_MODEL)}, lines
    assert "[E:onnxruntime" not in server.log()  # no alarming ONNX Runtime errors on a machine without GPU


def test_models_lists_every_model_with_its_manifest_and_provider(server):
    listing = requests.get(server.url + "/models", timeout=10).json()
    assert listing["default_model"] == RGB_MODEL.name
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == {RGB_MODEL.name, GRAY_MODEL.name}
    rgb = by_name[RGB_MODEL.name]
    assert rgb["classes"] == list(RGB_MODEL.classes)
    assert rgb["input"] == {"height": 24, "width": 32, "channels": 3, "color_mode": "rgb"}
    assert rgb["recipe"] == "tiny-test" and rgb["test_accuracy"] == 0.5 and rgb["default"] is True
    assert rgb["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert re.fullmatch(r"[a-z0-9]+", rgb["version"])
    assert by_name[GRAY_MODEL.name]["input"]["color_mode"] == "grayscale"


def test_classify_answers_what_the_model_computes(server):
    files = [("a.jpg", JPEG), ("b.png", PNG), ("c.jpg", MPO)]
    response = post(server, "/classify", files, top_k=3)
    assert response.status_code == 200, response.text
    answers = response.json()
    probabilities, _ = expected_output(RGB_MODEL, [data for _, data in files])
    assert len(answers) == 3
    for answer, expected in zip(answers, probabilities):
        assert answer["model"] == RGB_MODEL.name  # the default model
        assert answer["label"] == RGB_MODEL.classes[int(np.argmax(expected))]
        assert answer["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
        ranked = [item["probability"] for item in answer["top_k"]]
        assert ranked == sorted(ranked, reverse=True) and len(ranked) == 3
        for item in answer["top_k"]:
            assert item["probability"] == pytest.approx(float(expected[RGB_MODEL.classes.index(item["label"])]), abs=1e-5)
    versions = {m["name"]: m["version"] for m in requests.get(server.url + "/models", timeout=10).json()["models"]}
    assert answers[0]["version"] == versions[RGB_MODEL.name]


def test_classify_with_the_grayscale_model(server):
    response = post(server, "/classify", [("b.png", PNG)], model=GRAY_MODEL.name)
    assert response.status_code == 200, response.text
    (answer,) = response.json()
    probabilities, _ = expected_output(GRAY_MODEL, [PNG])
    assert answer["model"] == GRAY_MODEL.name and len(answer["top_k"]) == 1
    assert answer["probability"] == pytest.approx(float(probabilities[0].max()), abs=1e-5)


def test_features_are_the_models_embeddings(server):
    response = post(server, "/features", [("a.jpg", JPEG), ("b.png", PNG)])
    assert response.status_code == 200, response.text
    _, features = expected_output(RGB_MODEL, [JPEG, PNG])
    for answer, expected in zip(response.json(), features):
        assert answer["dim"] == len(expected) == len(answer["embedding"])
        np.testing.assert_allclose(answer["embedding"], expected, atol=1e-5)
    normalized = post(server, "/features", [("a.jpg", JPEG)], normalize="true").json()[0]["embedding"]
    assert np.linalg.norm(normalized) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(normalized, features[0] / np.linalg.norm(features[0]), atol=1e-5)


def test_bentoml_python_client(server, tmp_path):
    """The README's Python client: BentoML's own, which reads the service's schema."""
    import bentoml

    (tmp_path / "a.jpg").write_bytes(JPEG)
    with bentoml.SyncHTTPClient(server.url) as client:
        (answer,) = client.classify(images=[tmp_path / "a.jpg"], model=GRAY_MODEL.name, top_k=2)
        (embedding,) = client.features(images=[tmp_path / "a.jpg"], normalize=True)
    assert answer["model"] == GRAY_MODEL.name and len(answer["top_k"]) == 2
    assert np.linalg.norm(embedding["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_openapi_documents_every_endpoint_and_field(server):
    spec = requests.get(server.url + "/docs.json", timeout=10).json()
    paths = spec["paths"]
    for path, method in [("/classify", "post"), ("/features", "post"), ("/models", "get"), ("/readyz", "get"),
                         ("/livez", "get"), ("/metrics", "get")]:
        assert method in paths.get(path, {}), path
    classify = paths["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(classify["properties"]) == {"images", "model", "top_k"}
    features = paths["/features"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(features["properties"]) == {"images", "model", "normalize"}
    explain = paths["/explain"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(explain["properties"]) == {"images", "model", "label", "format"}
    assert requests.get(server.url + "/", timeout=10).status_code == 200  # the OpenAPI page itself


# --- bad input: a 4xx naming the problem, then the server still answers -----------------------------


def test_the_page_for_people_is_served_beside_the_apis(server):
    """GET /ui and its files (service/ui.py; in a browser: test_ui_browser.py), outside the OpenAPI page."""
    for path, kind in (("/ui", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        response = requests.get(server.url + path, timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), path
    assert requests.get(server.url + "/ui/nothing.js", timeout=10).status_code == 404
    assert "/ui" not in requests.get(server.url + "/docs.json", timeout=10).json()["paths"]


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_naming_the_problem_and_the_server_keeps_serving(server, name):
    check_refusal(server, "/classify", name)
    assert post(server, "/classify").status_code == 200


@pytest.mark.parametrize("route,field,value,says", [
    ("/classify", "top_k", "three", "valid integer"),
    ("/features", "normalize", "maybe", "valid boolean"),
    ("/explain", "format", "gif", "'png'"),
])
def test_a_value_of_the_wrong_type_is_invalid_field_with_pydantics_message(server, route, field, value, says):
    """pydantic finds these; the type is still one of the service's, pydantic's words are the message."""
    response = send_bad(server, route, [("a.jpg", JPEG)], **{field: value})
    assert response.status_code == 400, response.text
    (detail,) = response.json()["detail"]
    assert detail["type"] == "invalid_field" and detail["loc"] == [field] and says in detail["msg"], detail
    assert post(server, "/classify").status_code == 200


def test_explain_needs_a_package_with_the_gradcam_graph(server):
    # The hand-built models have no gradcam.onnx (like packages exported before it came): a 400, not a 500.
    response = post(server, "/explain")
    assert response.status_code == 400 and response.json()["detail"][0]["type"] == "cannot_explain", response.text
    assert post(server, "/classify").status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(server):
    # BAD_REQUESTS' body-too-large has a Content-Length; without one the body is counted as it arrives.
    body, content_type = urllib3.encode_multipart_formdata([("images", ("big.jpg", bytes(1 << 20)))])
    chunked = requests.post(server.url + "/classify", data=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                            headers={"Content-Type": content_type}, timeout=60)
    assert chunked.status_code == 413 and chunked.json()["detail"][0]["type"] == "body_too_large"
    assert post(server, "/classify").status_code == 200


@pytest.mark.parametrize("headers,data,status,kind", [
    ({"Content-Type": "application/json"}, json.dumps({"images": ["a.jpg"]}), 415, "wrong_content_type"),
    ({"Content-Type": "text/plain"}, "hello", 415, "wrong_content_type"),
    ({}, None, 415, "wrong_content_type"),
    ({"Content-Type": "multipart/form-data; boundary=xyz"}, "not really multipart", 400, "malformed_body"),
], ids=["json", "text", "no-content-type", "malformed-multipart"])
def test_wrong_content_type_or_malformed_body(server, headers, data, status, kind):
    response = requests.post(server.url + "/features", headers=headers, data=data, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["detail"][0]["type"] == kind
    assert post(server, "/features").status_code == 200


# --- batching and metrics ------------------------------------------------------------------------


def test_concurrent_requests_for_each_model_are_batched(server):
    """Concurrent single-image requests reach ONNX Runtime in batches larger than one, per model."""
    batched, metrics = batch_concurrently(server, [RGB_MODEL.name, GRAY_MODEL.name], JPEG)
    for model, (calls, images) in batched.items():
        assert images > calls, f"{model}: {images} images in {calls} calls, never batched"
        assert metric_value(metrics, "imgcls_queue_wait_seconds_count", model=model) >= calls


def test_metrics_count_right_across_workers(server):
    """Two workers count into one /metrics: every image counted once, by model and by label."""
    before = requests.get(server.url + "/metrics", timeout=10).text
    sent = 0
    for _ in range(5):
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda i: post(server, "/classify", [("a.jpg", JPEG), ("b.png", PNG)]).status_code, range(32)))
        assert set(codes) == {200}
        sent += 2 * len(codes)
        workers = set(re.findall(r"\[entry_service:image_classifier:(\d+)\][^\n]*path=/classify", server.log()))
        if len(workers) > 1:
            break
    assert len(workers) > 1, "one worker answered everything: the multiprocess mode was not exercised"
    assert send_bad(server, "/classify", [("notes.txt", b"text")]).status_code == 400
    after = requests.get(server.url + "/metrics", timeout=10).text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    model = RGB_MODEL.name
    assert delta("imgcls_images_processed_total", model=model, endpoint="classify") == sent
    assert delta("imgcls_predictions_total", model=model) == sent
    assert delta("imgcls_preprocess_duration_seconds_count", model=model) == sent
    assert delta("imgcls_batch_size_images_sum", model=model) == sent
    assert delta("imgcls_inference_duration_seconds_count", model=model) == delta("imgcls_batch_size_images_count", model=model) > 0
    assert delta("imgcls_rejected_requests_total", reason="not_an_image") == 1
    for m in (RGB_MODEL, GRAY_MODEL):
        assert re.search(rf'imgcls_model_info\{{[^}}]*model="{m.name}"[^}}]*provider="\w+ExecutionProvider"', after)
    for line in after.splitlines():  # label values come from fixed sets only
        if line.startswith("imgcls_predictions_total{"):
            assert re.search(r'label="(red|green|blue|dark|light)"', line), line


@pytest.mark.slow
def test_overload_is_a_503_to_retry_never_a_500(tmp_path):
    """A batching queue that cannot keep its latency bound sheds calls: 503 with Retry-After."""
    home = tmp_path / "home"
    register(RGB_MODEL, home)
    env = serve_env(home, SERVICE_MODELS=RGB_MODEL.name, SERVICE_MAX_LATENCY_MS="1")
    with serving(env, tmp_path / "server.log") as server, ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda i: post(server, "/classify", [("a.jpg", JPEG)] * 4), range(256)))
        log = server.log()
    codes = {r.status_code for r in responses}
    assert codes <= {200, 503} and 503 in codes, codes
    shed = next(r for r in responses if r.status_code == 503)
    assert shed.json()["detail"][0]["type"] == "overloaded" and shed.headers["Retry-After"] == "1"
    assert "Traceback" not in log



# --- hostile clients: cost nothing, answered in the service's JSON ------------------------------------


def raw_request(server, head: bytes, body_parts: list[bytes]) -> None:
    """Send `head` and the body parts over a raw socket, then leave without reading an answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(head)
        for part in body_parts:
            connection.sendall(part)
            time.sleep(0.05)


def wait_for_log(server, since: int, text: str, count: int, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while (new := server.log()[since:]).count(text) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return new


def test_a_client_that_leaves_mid_body_is_one_log_line_never_a_500(server):
    body, content_type = urllib3.encode_multipart_formdata([("images", ("a.jpg", JPEG))])
    since = len(server.log())
    with_length = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode()
    raw_request(server, with_length, [body[: len(body) // 2]])
    chunked = f"POST /features HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    raw_request(server, chunked, [b"%x\r\n%s\r\n" % (100, body[:100])])
    new = wait_for_log(server, since, "client gone", 2)
    assert new.count("client gone") == 2, new
    assert "Traceback" not in new and "Exception on" not in new and " 500 " not in new, new
    assert post(server, "/classify").status_code == 200


@pytest.mark.parametrize("method,path,status,kind", [
    ("GET", "/nope", 404, "not_found"),
    ("POST", "/classify/", 404, "not_found"),
    ("GET", "/classify/../../etc/passwd", 404, "not_found"),
    ("GET", "/static_content/../../../../etc/passwd", 404, "not_found"),
    ("GET", "/%00", 404, "not_found"),
    ("GET", "/classify", 405, "method_not_allowed"),
    ("HEAD", "/classify", 405, None),
    ("OPTIONS", "/explain", 405, "method_not_allowed"),
    ("PUT", "/features", 405, "method_not_allowed"),
    ("DELETE", "/models", 405, "method_not_allowed"),
    ("POST", "/metrics", 405, "method_not_allowed"),
    ("POST", "/readyz", 405, "method_not_allowed"),
    ("PATCH", "/livez", 405, "method_not_allowed"),
    ("HEAD", "/livez", 200, None),
    ("HEAD", "/models", 200, None),
    ("GET", "/models?model=x&" + "a" * 2000, 200, None),
    ("GET", "/docs.json", 200, None),
], ids=lambda value: str(value)[:40])
def test_every_path_and_method_is_answered_and_refusals_are_json(server, method, path, status, kind):
    response = requests.request(method, server.url + path, timeout=30)
    assert response.status_code == status, response.text[:500]
    if kind is not None:
        assert response.headers["content-type"] == "application/json"
        assert response.json()["detail"][0]["type"] == kind and len(response.content) < 1000
    if status == 405:
        assert response.headers["Allow"]


def endpoint_labels(metrics: str) -> set[str]:
    return set(re.findall(r'^bentoml_service_request_\w+\{[^}]*endpoint="([^"]*)"', metrics, re.MULTILINE))


def test_metric_labels_stay_a_fixed_set_whatever_paths_clients_invent(server):
    before = requests.get(server.url + "/metrics", timeout=10).text
    invented = [f"/invented-{i}" for i in range(30)] + ["/classify/x", "/" + "z" * 3000, "/static_content/nothing.js"]
    for path in invented:
        assert requests.get(server.url + path, timeout=10).status_code == 404
    after = requests.get(server.url + "/metrics", timeout=10).text
    assert not any(path in label for path in invented for label in endpoint_labels(after))
    assert endpoint_labels(after) <= endpoint_labels(before) | {"/classify", "/features", "/explain", "/models", "/livez",
                                                                "/readyz", "/healthz", "/docs.json", "/", "/schema.json"}
    assert (metric_value(after, "imgcls_rejected_requests_total", reason="not_found")
            - metric_value(before, "imgcls_rejected_requests_total", reason="not_found")) == len(invented)


KEY = "test-key-0123456789abcdef"


@pytest.mark.slow
def test_api_keys_cors_and_the_pixel_budget(tmp_path):
    """One server with every guard on: API keys (for /metrics too), a CORS origin, and a pixel budget
    of two requests' worth (the budget's refusals are unit-tested in test_service_reliability.py: the
    in-process core has no separate inference process left to stop and hold a request with)."""
    home = tmp_path / "home"
    register(RGB_MODEL, home)
    one_request = 60 * 80 + RGB_MODEL.height * RGB_MODEL.width  # JPEG's pixels + the model input's
    env = serve_env(home, SERVICE_MODELS=RGB_MODEL.name, SERVICE_API_KEYS=f"{KEY},another-key-0123456789",
                    SERVICE_METRICS_REQUIRE_KEY="1", SERVICE_CORS_ORIGINS="https://app.example",
                    SERVICE_MAX_IMAGE_PIXELS=str(one_request), SERVICE_MAX_INFLIGHT_PIXELS=str(one_request + 100))
    authorized = {"Authorization": f"Bearer {KEY}"}
    files = [("images", ("a.jpg", JPEG))]
    with serving(env, tmp_path / "server.log") as guarded:
        url = guarded.url
        for headers in ({}, {"Authorization": "Bearer not-the-key-0123456789"}, {"Authorization": KEY}):
            refused = requests.post(url + "/classify", files=files, headers=headers, timeout=30)
            assert refused.status_code == 401 and refused.json()["detail"][0]["type"] == "unauthorized", refused.text
        assert requests.post(url + "/classify", files=files, headers=authorized, timeout=30).status_code == 200
        assert requests.get(url + "/models", timeout=30).status_code == 401
        assert requests.get(url + "/metrics", timeout=30).status_code == 401
        assert requests.get(url + "/livez", timeout=30).status_code == requests.get(url + "/readyz", timeout=30).status_code == 200
        assert "imgcls_rejected_requests_total" in requests.get(url + "/metrics", headers=authorized, timeout=30).text
        preflight = requests.options(url + "/classify", timeout=30, headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://app.example"
        cross = requests.post(url + "/classify", files=files, headers={**authorized, "Origin": "https://app.example"}, timeout=30)
        assert cross.status_code == 200 and cross.headers["access-control-allow-origin"] == "https://app.example"

        assert "Traceback" not in guarded.log()
