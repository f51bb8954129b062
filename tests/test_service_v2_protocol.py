"""service/v2.py without a server: requests as NVIDIA's own client encodes them (tritonclient's
generate_request_body), responses as it decodes them (parse_response_body), and the refusals."""

from __future__ import annotations

import base64
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from service import v2
from service.errors import Reason, Rejection
from service.imaging import InputSpec
from service.registry import ModelPackage

SPEC = v2.ModelSpec("tiny", "v1", 4, 5, 3, ("cat", "dog", "eel"), 3)


def encoded(inputs, outputs=None) -> tuple[bytes, str | None]:
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs)
    return body, None if json_size is None else str(json_size)


def files_input(files: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image_bytes", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=object), binary_data=binary)
    return tensor


def pixels_input(pixels: np.ndarray, datatype: str, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", list(pixels.shape), datatype)
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


def refusal(call, *args, **kwargs) -> Rejection:
    with pytest.raises(Rejection) as caught:
        call(*args, **kwargs)
    return caught.value


def test_metadata_names_the_models_inputs_and_outputs():
    meta = v2.model_metadata(SPEC)
    assert meta["name"] == "tiny" and meta["versions"] == ["v1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
                              {"name": "image", "datatype": "FP32", "shape": [-1, 4, 5, 3]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                               {"name": "features", "datatype": "FP32", "shape": [-1, 3]}]
    assert v2.server_metadata("1.2")["extensions"] == ["binary_tensor_data", "classification"]


def test_spec_of_a_package_reads_the_manifest():
    manifest = {"outputs": {"features": {"shape": [None, 1280]}}}
    package = ModelPackage("m", "v9", Path("."), manifest, InputSpec(224, 224, 3), ("a", "b"), Path("m.onnx"))
    assert v2.ModelSpec.of(package) == v2.ModelSpec("m", "v9", 224, 224, 3, ("a", "b"), 1280)
    assert v2.ModelSpec.of(ModelPackage("m", "v9", Path("."), {}, InputSpec(8, 8, 1), ("a",), Path("m.onnx"))).feature_dim == -1


def test_binary_bytes_input_as_tritonclient_sends_it():
    files = [b"\xff\xd8first", b"", b"third file"]
    body, length = encoded([files_input(files)], [triton.InferRequestedOutput("probabilities", class_count=2)])
    request = v2.parse_request(body, length)
    wanted = v2.images(request, SPEC, max_images=16)
    assert wanted.files == tuple(files) and wanted.pixels is None and len(wanted) == 3
    assert wanted.outputs == (v2.Output("probabilities", True, 2),)


def test_json_bytes_input_base64_or_text():
    body = json.dumps({"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                                   "parameters": {"content_type": "base64"},
                                   "data": [base64.b64encode(b"\x00\x01").decode(), base64.b64encode(b"png").decode()]}]})
    wanted = v2.images(v2.parse_request(body.encode(), None), SPEC, max_images=16)
    assert wanted.files == (b"\x00\x01", b"png")
    # No request outputs: every output, as JSON unless binary_data_output.
    assert wanted.outputs == (v2.Output("probabilities", False), v2.Output("features", False))
    text, _ = encoded([files_input([b"plain text"], binary=False)])
    assert v2.images(v2.parse_request(text, None), SPEC, max_images=16).files == (b"plain text",)


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_pixel_input_in_either_datatype_and_form(datatype, binary):
    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3)).astype(np.uint8 if datatype == "UINT8" else np.float32)
    body, length = encoded([pixels_input(pixels, datatype, binary)])
    wanted = v2.images(v2.parse_request(body, length), SPEC, max_images=16)
    assert wanted.pixels.dtype == np.float32 and wanted.files == ()
    np.testing.assert_array_equal(wanted.pixels, pixels.astype(np.float32))
    # tritonclient asks for binary outputs when it names none.
    assert all(output.binary for output in wanted.outputs)


def test_binary_data_on_an_output_overrides_binary_data_output():
    request = {**bytes_request(), "parameters": {"binary_data_output": True},
               "outputs": [{"name": "features", "parameters": {"binary_data": False}}, {"name": "probabilities"}]}
    outputs = v2.images(v2.parse_request(json.dumps(request).encode(), None), SPEC, max_images=16).outputs
    assert outputs == (v2.Output("features", False), v2.Output("probabilities", True))


def test_gzip_body_inflates_within_the_limit():
    body = json.dumps({"inputs": []}).encode()
    assert v2.decompress(gzip.compress(body), "gzip", 1000) == body
    assert refusal(v2.decompress, gzip.compress(bytes(5000)), "gzip", 1000).reason is Reason.BODY_TOO_LARGE
    assert refusal(v2.decompress, b"not gzip", "gzip", 1000).reason is Reason.MALFORMED_BODY
    assert refusal(v2.decompress, body, "br", 1000).reason is Reason.WRONG_CONTENT_TYPE


def bytes_request(**changes) -> dict:
    tensor = {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["x"], **changes}
    return {"inputs": [{k: v for k, v in tensor.items() if v is not None}]}


def pixels_request(**changes) -> dict:
    tensor = {"name": "image", "shape": [1, 4, 5, 3], "datatype": "UINT8", "data": [7] * 60, **changes}
    return {"inputs": [tensor]}


BAD = {
    # name: (JSON request or (body, header length), reason, words in the message)
    "not-json": ((b"{inputs", None), Reason.MALFORMED_BODY, "not JSON"),
    "binary-without-header-length": ((b'{"inputs": []}\x00\x01', None), Reason.MALFORMED_BODY, "Inference-Header-Content-Length"),
    "header-length-past-the-body": ((b'{"inputs": []}', "99"), Reason.MALFORMED_BODY, "at most"),
    "not-an-object": ([1, 2], Reason.MALFORMED_BODY, "JSON object"),
    "no-inputs": ({"inputs": []}, Reason.MISSING_FIELD, "no inputs"),
    "input-without-data": (bytes_request(data=None), Reason.MISSING_FIELD, "no data"),
    "unknown-input": (bytes_request(name="pixels"), Reason.UNKNOWN_FIELD, "unknown input 'pixels'"),
    "both-inputs": ({"inputs": bytes_request()["inputs"] + pixels_request()["inputs"]}, Reason.INVALID_FIELD, "not both"),
    "bytes-as-fp32": (bytes_request(datatype="FP32"), Reason.INVALID_FIELD, "must be BYTES"),
    "bytes-shape-2d": (bytes_request(shape=[1, 1]), Reason.INVALID_FIELD, "shape must be [n]"),
    "bytes-count-differs": (bytes_request(shape=[2]), Reason.INVALID_FIELD, "but 1 elements"),
    "bytes-not-strings": (bytes_request(data=[3]), Reason.INVALID_FIELD, "must be strings"),
    "bad-base64": (bytes_request(parameters={"content_type": "base64"}, data=["@@@"]), Reason.INVALID_FIELD, "not base64"),
    "negative-shape": (bytes_request(shape=[-1]), Reason.INVALID_FIELD, "non-negative"),
    "too-many-images": (bytes_request(shape=[5], data=["x"] * 5), Reason.TOO_MANY_IMAGES, "more than 4"),
    "pixels-int32": (pixels_request(datatype="INT32"), Reason.INVALID_FIELD, "UINT8 or FP32"),
    "pixels-wrong-size": (pixels_request(shape=[1, 5, 4, 3]), Reason.INVALID_FIELD, "[-1, 4, 5, 3]"),
    "pixels-count-differs": (pixels_request(data=[7] * 59), Reason.INVALID_FIELD, "but 59 elements"),
    "pixels-over-255": (pixels_request(datatype="FP32", data=[256.0] * 60), Reason.INVALID_FIELD, "0-255"),
    "pixels-negative": (pixels_request(data=[-1] * 60), Reason.INVALID_FIELD, "0-255"),
    "pixels-fractional-uint8": (pixels_request(data=[0.5] * 60), Reason.INVALID_FIELD, "integers"),
    "unknown-output": ({**bytes_request(), "outputs": [{"name": "logits"}]}, Reason.UNKNOWN_FIELD, "unknown output 'logits'"),
    "classification-zero": ({**bytes_request(), "outputs": [{"name": "probabilities", "parameters": {"classification": 0}}]},
                            Reason.TOP_K_OUT_OF_RANGE, "at least 1"),
    "classification-text": ({**bytes_request(), "outputs": [{"name": "probabilities", "parameters": {"classification": "2"}}]},
                            Reason.INVALID_FIELD, "integer"),
    "binary-data-not-bool": ({**bytes_request(), "parameters": {"binary_data_output": 1}}, Reason.INVALID_FIELD, "true or false"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_requests_are_refused_with_the_services_reasons(name):
    request, reason, says = BAD[name]
    body, length = request if isinstance(request, tuple) else (json.dumps(request).encode(), None)

    def check():
        v2.images(v2.parse_request(body, length), SPEC, max_images=4)

    rejection = refusal(check)
    assert rejection.reason is reason and says in rejection.message, (rejection.reason, rejection.message)
    assert rejection.status < 500


def test_binary_sizes_must_account_for_the_whole_body():
    header = json.dumps({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    element = struct.pack("<I", 4) + b"abcd"
    assert v2.parse_request(header + element, str(len(header))).inputs[0].binary == element
    for tail, says in [(element[:6], "does not fit"), (element + b"!", "after the inputs")]:
        assert says in refusal(v2.parse_request, header + tail, str(len(header))).message
    # A BYTES element whose length runs past its tensor's data.
    cut = struct.pack("<I", 9) + b"abcd"
    rejection = refusal(lambda: v2.images(v2.parse_request(header + cut, str(len(header))), SPEC, max_images=4))
    assert rejection.reason is Reason.MALFORMED_BODY and "runs past" in rejection.message
    # A raw tensor whose binary size is not its shape's.
    pixels = json.dumps({"inputs": [{"name": "image", "shape": [1, 4, 5, 3], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 60}}]}).encode()
    rejection = refusal(lambda: v2.images(v2.parse_request(pixels + bytes(60), str(len(pixels))), SPEC, max_images=4))
    assert "240 bytes" in rejection.message


def test_fp32_nan_is_refused():
    pixels = np.full((1, 4, 5, 3), np.nan, np.float32)
    body, length = encoded([pixels_input(pixels, "FP32")])
    assert "0-255" in refusal(lambda: v2.images(v2.parse_request(body, length), SPEC, max_images=4)).message


def test_classifications_in_tritons_format():
    probabilities = np.array([[0.1, 0.7, 0.2], [0.25, 0.25, 0.5]], np.float32)
    strings = v2.classifications(probabilities, 2, SPEC.classes)
    assert strings.shape == (2, 2)
    assert strings.tolist() == [[b"0.700000:1:dog", b"0.200000:2:eel"], [b"0.500000:2:eel", b"0.250000:0:cat"]]
    assert v2.classifications(probabilities, 10, SPEC.classes).shape == (2, 3)  # capped at the classes, as Triton does


def arrays(n: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(3), n).astype(np.float32)
    return {"probabilities": probabilities, "features": rng.normal(size=(n, 3)).astype(np.float32)}


def test_binary_response_reads_back_with_tritonclient():
    outputs = arrays()
    body, length = v2.response(SPEC, "42", [v2.Output("probabilities", True), v2.Output("features", True),], outputs)
    result = triton.InferenceServerClient.parse_response_body(body, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), outputs["probabilities"])
    np.testing.assert_array_equal(result.as_numpy("features"), outputs["features"])
    response = result.get_response()
    assert response["id"] == "42" and response["model_name"] == "tiny" and response["model_version"] == "v1"


def test_json_and_classification_response_reads_back_with_tritonclient():
    outputs = arrays()
    for binary in (True, False):
        body, length = v2.response(SPEC, None, [v2.Output("probabilities", binary, 2), v2.Output("features", False)], outputs)
        assert (length is None) is (not binary)
        result = triton.InferenceServerClient.parse_response_body(body, header_length=length)
        expected = v2.classifications(outputs["probabilities"], 2, SPEC.classes)
        # The client gives BYTES as bytes from binary data, as str from JSON.
        assert result.as_numpy("probabilities").tolist() == (expected if binary else expected.astype(str)).tolist()
        np.testing.assert_array_equal(result.as_numpy("features"), outputs["features"])  # JSON floats are exact
    plain = json.loads(v2.response(SPEC, None, [v2.Output("probabilities", False)], outputs)[0])
    assert plain["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [2, 3],
                                 "data": outputs["probabilities"].ravel().tolist()}]
    assert "id" not in plain


def asgi_post(app, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One POST through an ASGI app, as a server would hand it over: (status, body)."""
    import anyio

    async def run() -> list[dict]:
        sent, incoming = [], [{"type": "http.request", "body": body, "more_body": False}]
        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in {**headers, "Content-Length": str(len(body))}.items()]}

        async def receive() -> dict:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    sent = anyio.run(run)
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


def test_the_request_guard_checks_each_route_for_its_own_content_types():
    from starlette.responses import Response

    from service.requests import IMAGE_FORM, RequestGuard
    from service.v2_routes import INFER_BODY, INFER_ROUTE

    async def answered(scope, receive, send):
        await Response("answered")(scope, receive, send)

    guard = RequestGuard(answered, routes={"/classify": IMAGE_FORM, INFER_ROUTE: INFER_BODY}, max_body_bytes=1024)
    for path in ("/v2/models/tiny/infer", "/v2/models/tiny/versions/v1/infer"):
        for content_type in ({}, {"Content-Type": "application/json"}, {"Content-Type": "application/octet-stream"}):
            assert asgi_post(guard, path, b"{}", content_type) == (200, b"answered")
        status, body = asgi_post(guard, path, b"{}", {"Content-Type": "text/plain"})
        assert status == 415 and "expected application/json" in json.loads(body)["error"]
        status, body = asgi_post(guard, path, bytes(2000), {})
        assert status == 413 and json.loads(body)["detail"][0]["type"] == "body_too_large"
    status, body = asgi_post(guard, "/classify", b"{}", {"Content-Type": "application/json"})
    assert status == 415 and "multipart/form-data" in json.loads(body)["error"]
    # Only POSTs to the routes given: the rest pass as they are.
    assert asgi_post(guard, "/v2/models/tiny/ready", bytes(2000), {}) == (200, b"answered")
    assert asgi_post(guard, "/v2/models/tiny/infer/more", b"{}", {"Content-Type": "text/plain"}) == (200, b"answered")
