"""The Open Inference Protocol (KServe v2) over real HTTP, with NVIDIA's own client (tritonclient).

One `bentoml serve` for the module, serving the hand-built models of tests/service_helpers.py: the
RGB model pinned to the first of its two versions in the store (so that the other is in the store
but not served), and the grayscale one. Every answer is compared with /classify's and /features's
for the same files.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from loadtests.images import encode, photo_like
from loadtests.servers import metric_value, serve_env, serving
from tests.service_helpers import (BAD_INPUT_LIMITS, BAD_REQUESTS, GRAY_MODEL, JPEG_SAMPLE, PNG_SAMPLE, RGB_MODEL,
                                   huge_png, register)

LIMITS = {"SERVICE_MAX_IMAGES_PER_REQUEST": "4", **BAD_INPUT_LIMITS}
MPO = encode(photo_like(50, 40, seed=2), "MPO", save_all=True, append_images=[Image.fromarray(photo_like(20, 30))])
FILES = [JPEG_SAMPLE, PNG_SAMPLE, MPO]
RGB = RGB_MODEL.name
# The image cases of the bad-input table (files and nothing else), sent here as v2 image_bytes.
IMAGE_CASES = [name for name, (arguments, *_) in BAD_REQUESTS.items() if set(arguments) == {"images"} and arguments["images"]]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-home")
    served = register(RGB_MODEL, home)
    other = register(RGB_MODEL, home)  # a newer version of the same name, in the store, not served
    register(GRAY_MODEL, home)
    env = serve_env(home, SERVICE_MODELS=f"{served},{GRAY_MODEL.name}", SERVICE_DEFAULT_MODEL=RGB, **LIMITS)
    with serving(env, tmp_path_factory.mktemp("logs") / "server.log") as running:
        running.versions = (served.split(":")[1], other.split(":")[1])
        yield running


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(url=server.url.removeprefix("http://")) as connection:
        yield connection


def files_input(files: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("image_bytes", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=object))
    return tensor


def classify(server, files: list[bytes], route: str = "/classify", **fields) -> list[dict]:
    response = requests.post(server.url + route, files=[("images", (f"{i}", data)) for i, data in enumerate(files)],
                             data={"model": RGB, **fields}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def probabilities_of(answers: list[dict]) -> np.ndarray:
    """/classify's probabilities with top_k = every class, in class order."""
    return np.array([[next(item["probability"] for item in answer["top_k"] if item["label"] == label)
                      for label in RGB_MODEL.classes] for answer in answers])


def test_health_and_server_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready()
    paths = requests.get(server.url + "/docs.json", timeout=10).json()["paths"]  # on the OpenAPI page beside the others
    assert "post" in paths["/v2/models/{name}/infer"] and "get" in paths["/v2/models/{name}/versions/{version}/ready"]
    metadata = client.get_server_metadata()
    assert metadata["name"] == "convnet-serving" and metadata["version"]
    assert set(metadata["extensions"]) == {"binary_tensor_data", "classification"}


def test_model_metadata_and_readiness_by_version(server, client):
    served, other = server.versions
    assert client.is_model_ready(RGB) and client.is_model_ready(RGB, served) and client.is_model_ready(GRAY_MODEL.name)
    metadata = client.get_model_metadata(RGB)
    assert metadata == client.get_model_metadata(RGB, served)
    assert metadata["name"] == RGB and metadata["versions"] == [served]
    assert metadata["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
                                  {"name": "image", "datatype": "FP32", "shape": [-1, 24, 32, 3]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                                   {"name": "features", "datatype": "FP32", "shape": [-1, 3]}]
    # The other version in the store: not ready; a version or model the store lacks: not found.
    assert not client.is_model_ready(RGB, other) and not client.is_model_ready(RGB, "nosuchversion")
    assert not client.is_model_ready("resnet9000")
    not_ready = requests.get(f"{server.url}/v2/models/{RGB}/versions/{other}/ready", timeout=10)
    assert not_ready.status_code == 400 and not_ready.content == b""
    for version, status, says in [(other, 400, "not served"), ("nosuchversion", 404, "no version")]:
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata(RGB, version)
        assert refused.value.status() == str(status) and says in refused.value.message()
    missing = requests.get(server.url + "/v2/models/resnet9000", timeout=10)
    assert missing.status_code == 404 and missing.json()["detail"][0]["type"] == "unknown_model"


def test_infer_image_bytes_answers_what_classify_and_features_answer(server, client):
    result = client.infer(RGB, [files_input(FILES)], outputs=[triton.InferRequestedOutput("probabilities"),
                                                               triton.InferRequestedOutput("features")])
    probabilities, features = result.as_numpy("probabilities"), result.as_numpy("features")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 3) and features.shape == (3, 3)
    np.testing.assert_allclose(probabilities, probabilities_of(classify(server, FILES, top_k=3)), atol=1e-6, rtol=0)
    expected = np.array([answer["embedding"] for answer in classify(server, FILES, "/features")])
    np.testing.assert_allclose(features, expected, atol=1e-6, rtol=0)
    response = result.get_response()
    assert response["model_name"] == RGB and response["model_version"] == server.versions[0]
    # With no outputs named, tritonclient asks for every output as binary data (here with a gzipped body).
    every = client.infer(RGB, [files_input(FILES)], request_compression_algorithm="gzip")
    np.testing.assert_array_equal(every.as_numpy("probabilities"), probabilities)
    np.testing.assert_array_equal(every.as_numpy("features"), features)


def test_classification_extension_answers_classifys_top_k(server, client):
    result = client.infer(RGB, [files_input(FILES)], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)])
    strings = result.as_numpy("probabilities")
    assert strings.shape == (3, 2)
    for row, answer in zip(strings, classify(server, FILES, top_k=2)):
        expected = [f"{item['probability']:f}:{RGB_MODEL.classes.index(item['label'])}:{item['label']}".encode()
                    for item in answer["top_k"]]
        assert list(row) == expected


def test_raw_uint8_tensor_answers_what_classify_answers_for_the_same_pixels(server, client):
    # PNGs of exactly the model's size: /classify's decoding and resizing give back these very pixels.
    pixels = np.stack([photo_like(24, 32, seed=seed) for seed in (3, 4)])
    tensor = triton.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer(RGB, [tensor], outputs=[triton.InferRequestedOutput("probabilities")])
    expected = probabilities_of(classify(server, [encode(p, "PNG") for p in pixels], top_k=3))
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6, rtol=0)
    # The grayscale model: its own shape, one channel.
    gray = triton.InferInput("image", [1, 28, 28, 1], "UINT8")
    gray.set_data_from_numpy(np.full((1, 28, 28, 1), 200, np.uint8))
    light = client.infer(GRAY_MODEL.name, [gray], outputs=[triton.InferRequestedOutput("probabilities", class_count=1)])
    top = int(GRAY_MODEL.predict(np.full((1, 28, 28, 1), 200.0))[0][0].argmax())
    assert light.as_numpy("probabilities")[0, 0].decode().endswith(f":{top}:{GRAY_MODEL.classes[top]}")


def test_a_plain_json_request_as_curl_sends_it(server, client):
    """The README's curl example: a file as base64 in JSON, classifications back as JSON strings."""
    request = {"id": "curl-1",
               "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "parameters": {"content_type": "base64"},
                           "data": [base64.b64encode(JPEG_SAMPLE).decode()]}],
               "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}
    response = requests.post(f"{server.url}/v2/models/{RGB}/infer", data=json.dumps(request),
                             headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json" and "Inference-Header-Content-Length" not in response.headers
    body = response.json()
    assert body["id"] == "curl-1" and body["model_name"] == RGB
    (output,) = body["outputs"]
    assert output["name"] == "probabilities" and output["datatype"] == "BYTES" and output["shape"] == [1, 3]
    (answer,) = classify(server, [JPEG_SAMPLE], top_k=3)
    assert output["data"][0] == f"{answer['probability']:f}:{RGB_MODEL.classes.index(answer['label'])}:{answer['label']}"
    # A raw FP32 tensor in JSON, nested as numpy writes it, every output as JSON: what the same
    # pixels as binary FP32 from tritonclient give. (4 images of fractional values: a JSON header of
    # 170 kB, parsed off the event loop.)
    pixels = np.stack([photo_like(24, 32, seed=seed) for seed in range(4)]).astype(np.float32) * np.float32(0.987654)
    request = {"inputs": [{"name": "image", "shape": list(pixels.shape), "datatype": "FP32", "data": pixels.tolist()}]}
    assert len(json.dumps(request)) > 100_000
    body = requests.post(f"{server.url}/v2/models/{RGB}/infer", json=request, timeout=60).json()
    by_name = {output["name"]: np.array(output["data"], np.float32).reshape(output["shape"]) for output in body["outputs"]}
    tensor = triton.InferInput("image", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    binary = client.infer(RGB, [tensor])
    for name in ("probabilities", "features"):
        np.testing.assert_array_equal(by_name[name], binary.as_numpy(name))
    np.testing.assert_allclose(by_name["probabilities"], RGB_MODEL.predict(pixels)[0], atol=1e-5)


def post_files(server, files: list[bytes], model: str = RGB) -> requests.Response:
    """image_bytes as binary tensor data, encoded by tritonclient, sent with requests to see the raw answer."""
    body, json_size = triton.InferenceServerClient.generate_request_body([files_input(files)])
    return requests.post(f"{server.url}/v2/models/{model}/infer", data=body,
                         headers={"Inference-Header-Content-Length": str(json_size)}, timeout=60)


def assert_refused(response: requests.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"], body  # the protocol's error object
    assert body["detail"][0]["type"] == kind, body


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_the_bad_input_table_against_v2(server, name):
    arguments, status, kind, *_ = BAD_REQUESTS[name]
    files = [huge_png() if data is None else data for _, data in arguments["images"]]
    assert_refused(post_files(server, files), status, kind)
    assert post_files(server, [JPEG_SAMPLE]).status_code == 200


@pytest.mark.parametrize("path,headers,data,status,kind", [
    (f"/v2/models/{RGB}/infer", {"Content-Type": "text/plain"}, b"{}", 415, "wrong_content_type"),
    (f"/v2/models/{RGB}/infer", {"Content-Type": "application/json"}, b"{not json", 400, "malformed_body"),
    (f"/v2/models/{RGB}/infer", {"Inference-Header-Content-Length": "5000"}, b"{}", 400, "malformed_body"),
    (f"/v2/models/{RGB}/infer", {}, json.dumps({"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES",
                                                            "data": ["x"]}]}).encode(), 400, "unknown_field"),
    (f"/v2/models/{RGB}/infer", {}, json.dumps({"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8",
                                                            "data": [0] * 12}]}).encode(), 400, "invalid_field"),
    ("/v2/models/resnet9000/infer", {}, b"{}", 404, "unknown_model"),
    (f"/v2/models/{RGB}/versions/nosuchversion/infer", {}, b"{}", 404, "unknown_model"),
], ids=["text-plain", "not-json", "header-length-past-body", "unknown-input", "wrong-shape", "unknown-model", "unknown-version"])
def test_v2_refusals_over_http(server, path, headers, data, status, kind):
    assert_refused(requests.post(server.url + path, data=data, headers=headers, timeout=60), status, kind)


def test_a_version_in_the_store_but_not_served_is_refused(server, client):
    with pytest.raises(InferenceServerException) as refused:
        client.infer(RGB, [files_input([JPEG_SAMPLE])], model_version=server.versions[1])
    assert refused.value.status() == "400" and "not served" in refused.value.message()


def test_v2_images_and_refusals_are_counted(server, client):
    before = requests.get(server.url + "/metrics", timeout=10).text
    client.infer(RGB, [files_input(FILES)])
    assert post_files(server, [b"just some text"]).status_code == 400
    after = requests.get(server.url + "/metrics", timeout=10).text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("imgcls_images_processed_total", model=RGB, endpoint="v2") == len(FILES)
    assert delta("imgcls_preprocess_duration_seconds_count", model=RGB) == len(FILES)
    assert delta("imgcls_predictions_total", model=RGB) == len(FILES)
    assert delta("imgcls_rejected_requests_total", reason="not_an_image") == 1


def test_v2_and_classify_requests_share_a_batch(server):
    """Three v2 clients of one image per request and one /classify client of four, each with one
    request at a time: alone, either kind fills at most 4 images of a batched call, so a call of
    more than 4 holds images of both."""
    def over_four(text: str) -> float:
        return (metric_value(text, "imgcls_batch_size_images_count", model=RGB)
                - metric_value(text, "imgcls_batch_size_images_bucket", model=RGB, le="4.0"))

    def shared() -> bool:
        return over_four(requests.get(server.url + "/metrics", timeout=10).text) > before

    before = over_four(requests.get(server.url + "/metrics", timeout=10).text)
    stop, done = time.monotonic() + 60, threading.Event()
    codes: list[int] = []

    def loop(send) -> None:
        while not done.is_set() and time.monotonic() < stop:
            codes.append(send())
            if shared():
                done.set()

    senders = [lambda: post_files(server, [JPEG_SAMPLE]).status_code] * 3 + [
        lambda: requests.post(server.url + "/classify", files=[("images", (f"{i}.jpg", JPEG_SAMPLE)) for i in range(4)],
                              timeout=60).status_code]
    threads = [threading.Thread(target=loop, args=(send,)) for send in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(codes) == {200} and shared(), "no batched call held images of both endpoints"


def test_no_refusal_left_a_traceback_in_the_log(server):
    # Last in this module: every request above, refused or not, was answered without a server error.
    log = server.log()
    assert "path=/v2/models/" in log  # the access log, whose lines say status=...
    assert "Traceback" not in log and "status=5" not in log
