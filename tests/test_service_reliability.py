"""The service's defences as units: the in-flight pixel budget (service/admission.py), the edge
(service/access.py: routing refusals, API keys, CORS) on a small Starlette application, the
quoting of client input in error messages (service/errors.py) and the new settings. The same
defences over real HTTP: tests/test_service_http.py."""

from __future__ import annotations

import asyncio
import threading
import warnings
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
with warnings.catch_warnings():  # starlette would rather have httpx2, which is not installed
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from service import access, admission, settings
from service.errors import QUOTE_LIMIT, Reason, Rejection, clipped, quoted

# --- admission ---------------------------------------------------------------------------------------


def test_a_request_is_admitted_while_it_fits_and_gives_back_what_it_held():
    budget = admission.Budget(100)
    with budget.admit(60):
        with budget.admit(40):
            assert budget.in_use == 100
            with pytest.raises(Rejection) as caught:
                with budget.admit(1):
                    pass
            assert caught.value.reason is Reason.OVERLOADED and caught.value.status == 503
        assert budget.in_use == 60
    assert budget.in_use == 0 and budget.admitted == 0


def test_a_request_alone_is_admitted_whatever_its_cost():
    budget = admission.Budget(100)
    with budget.admit(10_000):
        with pytest.raises(Rejection):
            budget.admit(1).__enter__()
    assert budget.in_use == 0


def test_what_a_failed_request_held_is_given_back():
    budget = admission.Budget(100)
    with pytest.raises(ValueError):
        with budget.admit(80):
            raise ValueError("the request failed")
    assert budget.in_use == 0
    with budget.admit(100):
        pass


def test_admission_as_an_async_context_manager():
    budget = admission.Budget(10)

    async def main():
        async with budget.admit(6):
            with pytest.raises(Rejection):
                async with budget.admit(6):
                    pass
            return budget.in_use

    assert asyncio.run(main()) == 6 and budget.in_use == 0


def test_the_budget_holds_across_threads():
    budget = admission.Budget(1000)
    peak, refused, lock = [0], [0], threading.Lock()

    def work():
        for _ in range(2000):
            try:
                with budget.admit(300):
                    with lock:
                        peak[0] = max(peak[0], budget.in_use)
            except Rejection:
                with lock:
                    refused[0] += 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] <= 900 and budget.in_use == 0 and budget.admitted == 0


def test_a_requests_cost_is_the_pictures_it_decodes_at_once_and_every_input():
    assert admission.cost([1000, 5000, 3000], 100) == 5000 + 3 * 100
    assert admission.cost([1000, 5000, 3000], 100, at_once=2) == 5000 + 3000 + 3 * 100
    assert admission.cost([1000, 5000, 3000], 100, at_once=8) == 9000 + 3 * 100
    assert admission.cost([], 100) == 0
    assert admission.cost([], 100, tensors=4) == 400  # pixel tensors: their model inputs only
    with pytest.raises(ValueError):
        admission.cost([1], 1, at_once=0)


# --- errors: client input quoted, never whole ---------------------------------------------------------


def test_client_input_is_quoted_to_about_a_hundred_characters():
    assert quoted("resnet") == "'resnet'"
    long = quoted("m" * 1_000_000)
    assert len(long) < QUOTE_LIMIT + 40 and "(1000000 characters)" in long
    assert quoted("a\x00b\nc") == repr("a\x00b\nc")  # control characters shown escaped, on one line


def test_every_rejection_is_one_bounded_line_whoever_wrote_the_message():
    rejection = Rejection(Reason.INVALID_FIELD, "pydantic said: " + "x" * 50_000 + "\nsecond line", ("y" * 5000, 3))
    assert "\n" not in rejection.message and len(rejection.message) <= 1000
    assert len(rejection.loc[0]) <= QUOTE_LIMIT and rejection.loc[1] == 3
    assert clipped("a \n b") == "a b"


# --- the edge --------------------------------------------------------------------------------------------


KEY, OTHER_KEY = "k" * 24, "another-key-0123456789"


def ok(_):
    return PlainTextResponse("ok")


@pytest.fixture
def app(tmp_path):
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "style.css").write_text("body {}")
    inner = Starlette(routes=[
        Route("/classify", ok, methods=["POST"]), Route("/models", ok), Route("/livez", ok), Route("/readyz", ok),
        Route("/metrics", ok), Mount("/static_content", StaticFiles(directory=tmp_path / "static")),
    ])
    return inner


def client(app, **options) -> TestClient:
    return TestClient(access.wrap(app, **options))


def reason_of(response) -> str:
    return response.json()["detail"][0]["type"]


@pytest.mark.parametrize("method,path,status,reason", [
    ("GET", "/nope", 404, "not_found"),
    ("GET", "/classify/../../etc/passwd", 404, "not_found"),
    ("GET", "/static_content/../../../etc/passwd", 404, "not_found"),
    ("GET", "/static_content/missing.css", 404, "not_found"),
    ("GET", "/" + "a" * 10_000, 404, "not_found"),
    ("GET", "/classify", 405, "method_not_allowed"),
    ("HEAD", "/classify", 405, "method_not_allowed"),
    ("OPTIONS", "/classify", 405, "method_not_allowed"),
    ("DELETE", "/models", 405, "method_not_allowed"),
    ("POST", "/static_content/style.css", 405, "method_not_allowed"),
])
def test_paths_and_methods_the_application_does_not_serve_are_json_refusals(app, method, path, status, reason):
    response = client(app).request(method, path)
    assert response.status_code == status
    if method != "HEAD":
        assert reason_of(response) == reason and len(response.content) < 1000
    if status == 405:
        assert "Allow" in response.headers


@pytest.mark.parametrize("method,path", [("POST", "/classify"), ("GET", "/models?x=1"), ("HEAD", "/models"),
                                         ("GET", "/static_content/style.css")])
def test_what_the_application_serves_passes(app, method, path):
    assert client(app).request(method, path).status_code == 200


def test_with_api_keys_every_route_but_the_probes_needs_one(app):
    guarded = client(app, api_keys=[KEY, OTHER_KEY])
    for headers in ({}, {"Authorization": "Bearer wrong-key-000000000"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY[:-1]}"}, {"Authorization": "Bearer \u00e9\u00e9".encode("latin-1")}):
        response = guarded.post("/classify", headers=headers)
        assert response.status_code == 401 and reason_of(response) == "unauthorized", headers
        assert response.headers["WWW-Authenticate"] == "Bearer"
    for key in (KEY, OTHER_KEY):
        assert guarded.post("/classify", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert guarded.post("/classify", headers={"authorization": f"bearer {key}"}).status_code == 200
    for path in ("/livez", "/readyz", "/metrics"):
        assert guarded.get(path).status_code == 200
    assert client(app, api_keys=[KEY], metrics_require_key=True).get("/metrics").status_code == 401
    assert client(app).post("/classify").status_code == 200  # no keys: open


def test_cors_is_off_by_default_and_on_for_the_origins_given(app):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    assert "access-control-allow-origin" not in client(app).post("/classify", headers={"Origin": "https://app.example"}).headers
    assert client(app).options("/classify", headers=preflight).status_code == 405
    cors = client(app, api_keys=[KEY], cors_origins=["https://app.example"])
    answer = cors.options("/classify", headers=preflight)  # a preflight carries no key
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    refused = cors.post("/classify", headers={"Origin": "https://app.example"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://app.example"
    other = cors.post("/classify", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


# --- settings ----------------------------------------------------------------------------------------------


def test_the_new_settings_are_read_and_checked():
    config = settings.load({"SERVICE_API_KEYS": f"{KEY}, {OTHER_KEY}", "SERVICE_CORS_ORIGINS": "https://a.example:8443",
                            "SERVICE_METRICS_REQUIRE_KEY": "1", "SERVICE_MAX_INFLIGHT_PIXELS": "50000000"})
    assert config.api_keys == (KEY, OTHER_KEY) and config.cors_origins == ("https://a.example:8443",)
    assert config.metrics_require_key and config.max_inflight_pixels == 50_000_000
    defaults = settings.load({})
    assert defaults.api_keys == () and defaults.cors_origins == () and not defaults.metrics_require_key
    for environ, named in [({"SERVICE_API_KEYS": "short"}, "SERVICE_API_KEYS"),
                           ({"SERVICE_CORS_ORIGINS": "https://a.example/path"}, "SERVICE_CORS_ORIGINS"),
                           ({"SERVICE_METRICS_REQUIRE_KEY": "1"}, "SERVICE_METRICS_REQUIRE_KEY"),
                           ({"SERVICE_MAX_INFLIGHT_PIXELS": "1000"}, "SERVICE_MAX_INFLIGHT_PIXELS")]:
        with pytest.raises(settings.SettingsError) as caught:
            settings.load(environ)
        assert named in str(caught.value)
    with pytest.raises(settings.SettingsError) as caught:
        settings.load({"SERVICE_API_KEYS": f"{KEY},has space in it 0123"})
    assert KEY not in str(caught.value)  # a key never in a log line


def test_describe_never_prints_the_keys():
    text = settings.describe({"SERVICE_API_KEYS": f"{KEY},{OTHER_KEY}"})
    assert KEY not in text and OTHER_KEY not in text and "2 keys" in text


# --- the budget on the Open Inference Protocol's route ------------------------------------------------


def test_v2_infer_holds_the_pixel_budget_until_answered():
    """service/v2_routes.py's infer under a real Budget, in process: while one request waits in the
    (held) batching queue, a second that does not fit is 503 `overloaded` with Retry-After and the
    protocol's error body; once the first is answered there is room again. Pixel tensors pay for
    their model inputs."""
    import io

    import anyio
    import httpx
    import numpy as np
    import tritonclient.http as triton
    from fastapi import FastAPI
    from PIL import Image

    from service import v2, v2_routes
    from service.imaging import InputSpec
    from service.registry import ModelPackage

    package = ModelPackage("tiny", "v1", Path("."), {"outputs": {"features": {"shape": [None, 3]}}}, InputSpec(4, 5, 3),
                           ("cat", "dog", "eel"), Path("m.onnx"))
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, format="PNG")
    png, input_pixels = buffer.getvalue(), 4 * 5
    one_request = admission.cost([40 * 30], input_pixels)
    budget = admission.Budget(one_request + 10)
    admitted: list[int] = []

    def admit(package, files, tensors):
        pixels = admission.cost([40 * 30 for _ in files], input_pixels, tensors=tensors)
        admitted.append(pixels)
        return budget.admit(pixels)

    async def decode_all(package, files):
        return np.zeros((len(files), 4, 5, 3), np.float32)

    def body(inputs) -> tuple[bytes, dict[str, str]]:
        data, json_size = triton.InferenceServerClient.generate_request_body(inputs, None)
        return data, {v2.HEADER_LENGTH: str(json_size)} if json_size is not None else {}

    files = triton.InferInput("image_bytes", [1], "BYTES")
    files.set_data_from_numpy(np.array([png], dtype=object))
    pixels = triton.InferInput("image", [3, 4, 5, 3], "UINT8")
    pixels.set_data_from_numpy(np.zeros((3, 4, 5, 3), np.uint8))

    async def main():
        entered, release = anyio.Event(), anyio.Event()

        async def infer(package, batch):
            entered.set()
            await release.wait()
            return {"probabilities": np.full((len(batch), 3), 1 / 3, np.float32), "features": np.zeros((len(batch), 3), np.float32)}

        async def ready():
            return True

        core = v2_routes.Core({"tiny": package}, settings.load({"SERVICE_MODELS": "tiny"}, default_models=()), admit=admit,
                              decode_all=decode_all, infer=infer, ready=ready,
                              decode_limiter=lambda: anyio.CapacityLimiter(2), store_versions=lambda name: ("v1",))
        app = FastAPI()
        app.include_router(v2_routes.router(core))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            url = "/v2/models/tiny/infer"
            first_answer: list[httpx.Response] = []

            async def first():
                first_answer.append(await client.post(url, content=body([files])[0], headers=body([files])[1]))

            async with anyio.create_task_group() as group:
                group.start_soon(first)
                await entered.wait()
                assert budget.in_use == one_request and budget.admitted == 1
                shed = await client.post(url, content=body([files])[0], headers=body([files])[1])
                assert shed.status_code == 503 and shed.headers["Retry-After"] == "1", shed.text
                assert shed.json()["detail"][0]["type"] == "overloaded" and "retry later" in shed.json()["error"]
                release.set()
            assert first_answer[0].status_code == 200 and budget.in_use == 0 and budget.admitted == 0
            again = await client.post(url, content=body([pixels])[0], headers=body([pixels])[1])
            assert again.status_code == 200, again.text
        assert admitted == [one_request, one_request, 3 * input_pixels]

    anyio.run(main)


def test_the_decode_queue_refuses_at_arrival_what_would_wait_too_long():
    queue = admission.DecodeQueue(threads=2, max_wait_s=1.0)
    with queue.enter(1000):  # nothing measured yet: no estimate, no refusal
        assert queue.waiting == 1000
    assert queue.waiting == 0  # places never started are given back
    queue._decoded(0.1)
    first = queue.enter(15)  # 15 x 0.1 s / 2 threads = 0.75 s
    assert queue.predicted_wait_s(10) == pytest.approx(1.25)
    with pytest.raises(Rejection) as refused:
        queue.enter(10)
    assert refused.value.reason is Reason.OVERLOADED and refused.value.status == 503
    assert "15 images are waiting" in refused.value.message and queue.waiting == 15
    with first:
        for _ in range(5):
            first.start()
        assert queue.waiting == 10
    assert queue.waiting == 0
    queue._decoded(0.2)
    assert queue.mean_s == pytest.approx(0.11)  # a moving average


def test_a_ticket_that_waited_too_long_is_refused_before_decoding():
    queue = admission.DecodeQueue(threads=1, max_wait_s=0.05)
    with queue.enter(2) as ticket:
        ticket.start()
        threading.Event().wait(0.1)
        with pytest.raises(Rejection) as late:
            ticket.start()
        assert late.value.reason is Reason.OVERLOADED and "waited" in late.value.message
    assert queue.waiting == 0


def test_the_decode_queue_refuses_while_images_wait_long_and_recovers_when_it_empties():
    queue = admission.DecodeQueue(threads=2, max_wait_s=1.0, smoothing=1.0)  # the average: the last wait
    with queue.enter(3) as slow:
        assert queue.overloaded() is None
        slow.entered -= 0.9  # it has waited 0.9 s by the time its first image starts
        slow.start()
        assert queue.waiting == 2 and queue.wait_s == pytest.approx(0.9, abs=0.05)
        refusal = queue.overloaded()  # more than half the allowed wait, images still waiting
        assert refusal is not None and refusal.reason is Reason.OVERLOADED and "2 images are waiting" in refusal.message
    # Everything left: an empty queue refuses nothing (the lag of the average never locks it shut).
    assert queue.waiting == 0 and queue.wait_s == 0.0 and queue.overloaded() is None


# --- memory given back (service/memory.py) ------------------------------------------------------------

_FRAGMENT = """
import os, sys
if sys.argv[1] == "fixed":
    from service.memory import give_back_large_blocks
    assert give_back_large_blocks()
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
block = bytearray(8 << 20)  # an 8 MiB block, freed: glibc raises its mmap threshold to 8 MiB
del block
before = resident()
pinned, blocks = [], []
for _ in range(200):  # 1 MiB blocks with small long-lived ones between them, as requests leave them
    blocks.append(bytearray(1 << 20))
    pinned.append(bytearray(4096))  # above pymalloc's 512 bytes: from malloc's heap
del blocks
print((resident() - before) >> 20)
"""


@pytest.mark.parametrize("mode, most_mib", [("fixed", 20), ("default", None)])
def test_large_blocks_go_back_to_the_system_when_freed(mode, most_mib):
    import subprocess
    import sys

    from loadtests.servers import REPO

    run = subprocess.run([sys.executable, "-c", _FRAGMENT, mode], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    kept_mib = int(run.stdout)
    if most_mib is None:  # glibc's own behaviour, which the fix is for: 200 MiB freed and kept
        assert kept_mib > 150
    else:
        assert kept_mib <= most_mib
