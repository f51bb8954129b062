"""The benchmark's peer: KServe v2 binary requests and responses (loadtests/v2.py), the comparison
the report makes (loadtests/peer.py), and, in the system tier, Triton Inference Server itself
started through PyTriton in its own venv and measured beside the service for a few seconds.
Nothing here asserts a time: speed is what the reports are for (docs/benchmarks.md)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from loadtests import loadgen, peer, v2
from loadtests.servers import REPO, process_role

FILES = [b"\xff\xd8jpeg\x00", b"", b"png\x00\x00"]  # trailing NUL bytes and an empty file survive


def _split(body: bytes, headers: dict[str, str]) -> tuple[dict, bytes]:
    length = int(headers[v2.HEADER_LENGTH])
    return json.loads(body[:length]), body[length:]


def test_an_infer_request_is_a_json_header_then_each_file_as_its_length_and_bytes():
    body, headers = v2.infer_request(FILES, "images", ["probabilities"])
    header, binary = _split(body, headers)
    assert headers["Content-Type"] == "application/octet-stream" and headers["Accept-Encoding"] == "identity"
    assert header == {"inputs": [{"name": "images", "shape": [3, 1], "datatype": "BYTES",
                                  "parameters": {"binary_data_size": len(binary)}}],
                      "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    assert binary == (struct.pack("<I", 7) + FILES[0] + struct.pack("<I", 0) + struct.pack("<I", 5) + FILES[2])
    assert v2.decode_bytes(binary, 3) == FILES


def test_bytes_tensors_that_do_not_add_up_are_refused():
    data = v2.encode_bytes([b"abc"])
    with pytest.raises(v2.V2Error, match="longer than the data left"):
        v2.decode_bytes(data[:-1])
    with pytest.raises(v2.V2Error, match="inside an element's length"):
        v2.decode_bytes(data + b"\x01")
    with pytest.raises(v2.V2Error, match="of 2 elements holds 1"):
        v2.decode_bytes(data, 2)


def _response(outputs: list[tuple[dict, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A v2 response as Triton writes it: the JSON header, then each binary output in its order."""
    header = json.dumps({"model_name": "m", "model_version": "1", "outputs": [o for o, _ in outputs]}).encode()
    return header + b"".join(data for _, data in outputs), {"inference-header-content-length": str(len(header))}


def test_a_binary_response_gives_its_tensors_by_name():
    scores = np.array([[0.25, 0.75], [0.9, 0.1], [0.5, 0.5]], np.float32)
    names = v2.encode_bytes([b"cat", b"dog\x00\x00"])
    body, headers = _response([
        ({"name": "probabilities", "datatype": "FP32", "shape": [3, 2], "parameters": {"binary_data_size": 24}}, scores.tobytes()),
        ({"name": "ids", "datatype": "INT64", "shape": [3], "data": [4, 5, 6]}, b""),
        ({"name": "names", "datatype": "BYTES", "shape": [2, 1], "parameters": {"binary_data_size": len(names)}}, names),
    ])
    tensors = v2.parse_response(body, headers)  # the header's name in any case
    assert tensors["probabilities"].dtype == np.float32 and np.array_equal(tensors["probabilities"], scores)
    assert tensors["ids"].tolist() == [4, 5, 6] and tensors["ids"].dtype == np.int64
    assert tensors["names"].shape == (2, 1) and tensors["names"][:, 0].tolist() == [b"cat", b"dog\x00\x00"]
    # Without the length header the body is JSON alone.
    assert v2.parse_response(json.dumps({"outputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}).encode(),
                             {})["x"].tolist() == [[1.0, 2.0]]


def _fp32(size: int) -> dict:
    return {"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": size}}]}


@pytest.mark.parametrize("header, binary, message", [
    ({"error": "unknown model"}, None, "error answer: unknown model"),
    (_fp32(8), b"\0" * 4, "8 bytes of binary data, 4 left"),
    (_fp32(4), b"\0" * 4, "4 bytes for 2 FP32 values"),
    ({"outputs": []}, b"\0", "1 bytes of binary data after the last output"),
    ({"outputs": [{"name": "p", "shape": [1]}]}, None, "lacks its name, shape or datatype"),
    ({"outputs": [{"name": "p", "datatype": "FP32", "shape": [1]}]}, None, "neither data nor binary_data_size"),
    ({"outputs": [{"name": "p", "datatype": "FP8", "shape": [1], "parameters": {"binary_data_size": 1}}]}, b"\0", "unknown datatype"),
])
def test_responses_that_do_not_add_up_raise_one_line(header, binary, message):
    body = json.dumps(header).encode()
    headers = {} if binary is None else {v2.HEADER_LENGTH: str(len(body))}
    body += binary or b""
    with pytest.raises(v2.V2Error, match=message):
        v2.parse_response(body, headers)
    assert message in v2.answer(body, headers)


@pytest.mark.parametrize("body, headers, message", [
    (b'{"outputs": []}', {v2.HEADER_LENGTH: "99"}, "outside the 15-byte body"),
    (b'{"outputs": []}', {v2.HEADER_LENGTH: "x"}, "is not a number"),
    (b"not json", {}, "not JSON"),
    (b"[1]", {}, "not an object"),
])
def test_bodies_that_are_no_response_raise_one_line(body, headers, message):
    with pytest.raises(v2.V2Error, match=message):
        v2.parse_response(body, headers)
    assert message in v2.answer(body, headers)


def test_the_v2_endpoint_reads_each_images_top_class_and_the_load_generator_sends_its_headers():
    endpoint = v2.infer_endpoint("cats", "images", "probabilities", ("cat", "dog"))
    assert endpoint.path == "/v2/models/cats/infer"
    assert endpoint.labels({"probabilities": np.array([[0.2, 0.8], [0.7, 0.3]])}) == ["dog", "cat"]
    assert endpoint.labels({"probabilities": np.zeros((1, 3))}) is None and endpoint.labels("error answer: x") is None
    bodies = endpoint.bodies([("a.jpg", b"A"), ("b.jpg", b"B"), ("c.jpg", b"C")], 2)  # files in turn, wrapping around
    assert [body.images for body in bodies] == [2, 2]
    assert [v2.decode_bytes(_split(body.data, body.headers)[1]) for body in bodies] == [[b"A", b"B"], [b"C", b"A"]]
    assert bodies[0].content_type == "application/octet-stream" and v2.HEADER_LENGTH in bodies[0].headers
    assert loadgen.classify_endpoint({"model": "m"}).labels([{"label": "cat"}, {"label": "dog"}]) == ["cat", "dog"]


# --- the comparison, on made-up measurements ----------------------------------------------------------


def _level(concurrency: int, images_per_s: float, errors: int = 0, cpu_ms: float = 10.0) -> dict:
    return {"concurrency": concurrency, "images_per_request": 1, "images_per_s": images_per_s, "errors": errors,
            "latency_ms": {"p50": 1000 / images_per_s, "p99": 2000 / images_per_s},
            "server_cpu_ms_per_request": {"a": cpu_ms / 2, "b": cpu_ms / 2}}


def _results(top1_one: list, top1_two: list) -> dict:
    configs = peer.configurations([0, 1], [1], 32)
    return {"service": {"levels": [_level(1, 50.0), _level(4, 120.0, cpu_ms=8.0)], "top1": ["cat", "dog", "cat"]},
            "peer": {"configurations": [peer.measured(configs[0], [_level(1, 40.0), _level(4, 150.0, errors=2)], top1_one),
                                        peer.measured(configs[1], [_level(1, 45.0), _level(4, 100.0, cpu_ms=12.0)], top1_two)]}}


def test_each_level_compares_the_service_with_the_best_triton_configuration_that_gave_no_errors():
    assert [c.label for c in peer.configurations([0, 1, 2], [1, 2], 32)] == [
        "1 instance, queue delay 0 ms", "1 instance, queue delay 1 ms", "1 instance, queue delay 2 ms",
        "2 instances, queue delay 0 ms", "2 instances, queue delay 1 ms", "2 instances, queue delay 2 ms"]
    assert peer.configurations([0.5], [2], 16)[0].queue_delay_us == 500
    one, four = peer.comparison(_results(["cat"] * 3, ["cat"] * 3))
    assert one["configuration"] == "1 instance, queue delay 1 ms" and one["ratio"] == pytest.approx(50 / 45)
    # 150 images/s with errors loses to 100 without
    assert four["configuration"] == "1 instance, queue delay 1 ms" and four["ratio"] == pytest.approx(1.2)
    assert four["service"]["cpu_ms_per_image"] == 8.0 and four["triton"]["cpu_ms_per_image"] == 12.0
    assert four["triton"]["p99_ms"] == 20.0


def test_top1_agreement_names_every_file_where_a_configuration_differs():
    names = ["a.jpg", "b.jpg", "c.jpg"]
    same = peer.agreement(_results(["cat", "dog", "cat"], ["cat", "dog", "cat"]), names)
    assert same == {"files": 3, "configurations": 2, "same": True, "different": []}
    differ = peer.agreement(_results(["cat", "dog", "cat"], ["cat", None, "dog"]), names)
    assert not differ["same"]
    assert differ["different"] == [
        {"file": "b.jpg", "service": "dog", "triton": None, "configuration": "1 instance, queue delay 1 ms"},
        {"file": "c.jpg", "service": "cat", "triton": "dog", "configuration": "1 instance, queue delay 1 ms"}]


def test_the_bench_says_in_one_line_how_to_make_the_peers_venv(tmp_path):
    run = subprocess.run([sys.executable, "-m", "loadtests.bench", "--peer", "triton", "--peer-python", str(tmp_path / "python")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert "is missing; make it with `make triton-peer`" in run.stderr


def test_the_processes_of_tritons_tree_are_named():
    assert process_role([".venv-triton/bin/python", "-m", "loadtests.triton_peer", "--model", "m"]) == "triton:pytriton callables"
    assert process_role(["/root/.cache/pytriton/workspace_x/tritonserver/bin/tritonserver", "--exit-on-error"]) == "triton:tritonserver"
    assert process_role(["/w/tritonserver/backends/python/triton_python_backend_stub", "model.py"]) == "triton:python backend stub"


# --- Triton itself (system tier: the peer's venv comes from PyPI) ---------------------------------------------


@pytest.fixture(scope="session")
def peer_python():
    """The peer's venv, made as `make bench BENCH_ARGS='--peer triton'` makes it (pyproject.toml's triton-peer extra)."""
    run = subprocess.run(["make", "triton-peer"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert peer.PYTHON.is_file()
    return peer.PYTHON


@pytest.mark.system
def test_bench_measures_triton_beside_the_service_and_both_give_every_file_the_same_top_class(
        tmp_path, exported_models, peer_python):
    out = tmp_path / "report"
    command = [sys.executable, "-m", "loadtests.bench", "--model", "scratch", "--limit", "6",
               "--concurrency", "1", "2", "--images-per-request", "1", "2",
               "--skip", "engine", "--skip", "decode", "--skip", "floor", "--skip", "naive", "--skip", "v2",
               "--warmup", "0.2", "--duration", "0.5", "--min-requests", "1",
               "--peer", "triton", "--peer-python", str(peer_python), "--peer-queue-delays-ms", "1", "--peer-instances", "1", "2",
               "--out", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    results = json.loads((out / "bench.json").read_text())
    found = results["peer"]
    assert found["versions"]["nvidia-pytriton"].startswith("0.7.") and found["versions"]["numpy"].startswith("1.")
    assert found["versions"]["tritonserver"]
    assert [c["label"] for c in found["configurations"]] == ["1 instance, queue delay 1 ms", "2 instances, queue delay 1 ms"]
    levels = {(1, 1), (2, 1), (1, 2), (2, 2)}
    for config in found["configurations"]:
        assert {(l["concurrency"], l["images_per_request"]) for l in config["levels"]} == levels
        for level in config["levels"]:
            assert level["requests"] > 0 and level["errors"] == 0 and level["answer_ok"], level
            assert level["server"]["mean_batch"] >= 1
            # The whole tree: PyTriton's process (the callables), tritonserver, a Python backend stub per instance.
            assert {"triton:pytriton callables", "triton:tritonserver", "triton:python backend stub"} <= set(level["server_cpu_ms_per_request"])
        assert all(label in ("circles", "squares") for label in config["top1"]) and len(config["top1"]) == 6
    assert {(r["concurrency"], r["images_per_request"]) for r in results["peer_comparison"]} == levels
    for row in results["peer_comparison"]:
        assert row["ratio"] > 0 and row["service"]["cpu_ms_per_image"] > 0 and row["triton"]["cpu_ms_per_image"] > 0
    assert results["top1_agreement"] == {"files": 6, "configurations": 2, "same": True, "different": []}

    markdown = (out / "bench.md").read_text()
    assert "## The service against Triton Inference Server (same run)" in markdown
    assert "| clients | service images/s | Triton images/s | service / Triton | Triton's best configuration |" in markdown
    assert "Top-1 class: the same from the service and from each of the 2 Triton configurations on every one of the 6 files." in markdown
    assert {p.name for p in (out / "logs").iterdir()} == {"service.log", "triton-1x-1000us.log", "triton-2x-1000us.log"}
    assert "vs Triton" in run.stdout
