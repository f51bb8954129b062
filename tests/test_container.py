"""The CPU image built from the Dockerfile and run (system tier: podman, runc and a base image).

The image is built as `make image-cpu` builds it, on the Debian base that
deploy/container/debian-base.sh makes from Debian's packages (no registry serves images here), with
the wheelhouse of `make wheels-cpu` and a bento of the hand-built tiny models. .ci/run prepares the
base and the wheelhouse (the steps that need the network); this test only reads them. Each container
runs as production would: read-only root with a tmpfs on /tmp, no capabilities, no new privileges.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from loadtests.servers import REPO, free_port
from tests.service_helpers import GRAY_MODEL, JPEG_SAMPLE, RGB_MODEL, export_bento, run

pytestmark = pytest.mark.system

ENGINE = os.environ.get("CONTAINER_ENGINE", "podman")
BASE_IMAGE = os.environ.get("CONVNET_BASE_IMAGE", "localhost/convnet-base:bookworm")
WHEELHOUSE = REPO / "build" / "wheels-cpu"
TAG = "localhost/convnet-serving:cpu-test"
USER_ID = "1034"  # the Dockerfile's bentoml user
# How long the service may take to drain; the container engine's stop timeout is above it.
STOP_TIMEOUT_S = 60


def engine(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{ENGINE} {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    """The CPU image of the tiny models' bento, built from the Dockerfile; removed afterwards (the
    engine keeps its layers, so a second run builds in seconds)."""
    if shutil.which(ENGINE) is None:
        pytest.fail(f"{ENGINE} is not installed: .ci/run installs .ci/system-packages.txt")
    if engine("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        pytest.fail(f"no base image {BASE_IMAGE}: deploy/container/debian-base.sh builds it (.ci/run does)")
    tmp = tmp_path_factory.mktemp("image")
    requirements = tmp / "requirements-cpu.txt"
    run(sys.executable, "-m", "service.dependencies", "--cpu", "--pin-installed", "bentoml", str(requirements),
        cwd=REPO, env=dict(os.environ))
    held = WHEELHOUSE / "requirements.txt"
    if not held.is_file() or held.read_text() != requirements.read_text():
        pytest.fail(f"{WHEELHOUSE} is missing or not of today's requirements: `make wheels-cpu` fetches it (.ci/run does)")
    # The build context as `make image-cpu` has it: the Dockerfile, .dockerignore, build/bento.tar
    # and build/wheels-cpu (hard links where the file system allows: the wheels are large).
    context = tmp / "context"
    (context / "build").mkdir(parents=True)
    for name in ("Dockerfile", ".dockerignore"):
        shutil.copy(REPO / name, context)
    shutil.move(export_bento(tmp), context / "build" / "bento.tar")
    try:
        shutil.copytree(WHEELHOUSE, context / "build" / "wheels-cpu", copy_function=os.link)
    except OSError:
        shutil.copytree(WHEELHOUSE, context / "build" / "wheels-cpu", dirs_exist_ok=True)
    env = {**os.environ, "BUILDAH_FORMAT": "docker"}  # as the Makefile: keep the HEALTHCHECK
    build = subprocess.run([ENGINE, "build", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                            "--build-arg", "WHEELHOUSE=build/wheels-cpu", "-t", TAG, str(context)],
                           capture_output=True, text=True, timeout=900, env=env)
    assert build.returncode == 0, f"{ENGINE} build:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    yield TAG
    engine("rmi", "-f", TAG, check=False)


class Container:
    """One container of the image, detached, its port 3000 on a free port of 127.0.0.1."""

    def __init__(self, image: str, **settings: str) -> None:
        self.name = f"convnet-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = [arg for key, value in settings.items() for arg in ("-e", f"{key}={value}")]
        engine("run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:3000",
               "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777,size=256m",
               "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *environment, image)

    def logs(self) -> str:
        result = engine("logs", self.name, check=False)
        return result.stdout + result.stderr

    def running(self) -> bool:
        result = engine("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return result.stdout.strip() == "true"

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            if not self.running():
                pytest.fail(f"{self.name} exited before it was ready:\n{self.logs()[-5000:]}")
            time.sleep(0.5)
        pytest.fail(f"{self.name} not ready after {timeout} s:\n{self.logs()[-5000:]}")

    def exit_code(self, timeout: float) -> int:
        """The container's exit status, once it has stopped."""
        return int(engine("wait", self.name, timeout=timeout).stdout.strip())

    def remove(self) -> None:
        engine("rm", "-f", "-t", "0", self.name, check=False)


@contextlib.contextmanager
def container(image: str, **settings: str):
    started = Container(image, **settings)
    try:
        started.wait_ready()
        yield started
    finally:
        started.remove()


def classify(url: str, model: str = RGB_MODEL.name, timeout: float = 60) -> requests.Response:
    return requests.post(url + "/classify", files=[("images", ("a.jpg", JPEG_SAMPLE, "image/jpeg"))],
                         data={"model": model}, timeout=timeout)


def test_the_image_serves_its_baked_in_models_as_a_non_root_user_on_a_read_only_root(image):
    with container(image) as served:
        response = classify(served.url)
        assert response.status_code == 200, response.text
        assert response.json()[0]["label"] in RGB_MODEL.classes
        listing = requests.get(served.url + "/models", timeout=10).json()
        assert sorted(m["name"] for m in listing["models"]) == sorted([RGB_MODEL.name, GRAY_MODEL.name])
        assert requests.get(served.url + "/livez", timeout=10).status_code == 200
        assert "imgcls_model_info" in requests.get(served.url + "/metrics", timeout=10).text
        assert engine("exec", served.name, "id", "-u").stdout.strip() == USER_ID
        # The root file system refuses writes, the bento included; /tmp takes them.
        for path in ("/home/bentoml/bento/written", "/opt/venv/written", "/written"):
            refused = engine("exec", served.name, "touch", path, check=False)
            assert refused.returncode != 0 and "Read-only file system" in refused.stderr, (path, refused.stderr)
        engine("exec", served.name, "touch", "/tmp/written")
        # The image's HEALTHCHECK (run by hand: podman runs it from systemd timers, absent here).
        assert engine("healthcheck", "run", served.name, check=False).returncode == 0


def test_the_healthcheck_fails_until_the_service_is_ready(image):
    """The HEALTHCHECK asks /readyz, not whether the process is up: right after start it fails."""
    started = Container(image)
    try:
        assert engine("healthcheck", "run", started.name, check=False).returncode != 0
        started.wait_ready()
        assert engine("healthcheck", "run", started.name, check=False).returncode == 0
    finally:
        started.remove()


def trickled_request(port: int, body_sent_half: threading.Event, finish: threading.Event, answers: list) -> None:
    """POST /classify whose body comes in two halves: the second only once `finish` is set. The
    server has the request (its headers and half its body) before SIGTERM, and must still answer it."""
    boundary = "trickle" + uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + JPEG_SAMPLE + \
           f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{RGB_MODEL.name}\r\n--{boundary}--\r\n".encode()
    head = (f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(head + body[: len(body) // 2])
            body_sent_half.set()
            finish.wait(60)
            sock.sendall(body[len(body) // 2:])
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        answers.append(received.split(b" ", 2)[1].decode() if received.startswith(b"HTTP/") else f"no answer: {received[:80]!r}")
    except OSError as err:
        answers.append(f"{type(err).__name__}: {err}")


def test_sigterm_answers_every_request_in_flight_then_exits_0(image):
    """The drain: requests the service holds when SIGTERM comes are answered 200, then it exits 0.
    Two kinds in flight: requests whose body is still arriving (deterministically in flight) and a
    steady stream of ordinary ones from 8 clients, which stop sending 0.3 s before the signal so that
    none is caught between the engine's port and the server's accept."""
    with container(image) as served:
        assert classify(served.url).status_code == 200
        finish, trickled, threads = threading.Event(), [], []
        for _ in range(4):
            half = threading.Event()
            thread = threading.Thread(target=trickled_request, args=(served.port, half, finish, trickled))
            thread.start()
            threads.append(thread)
            assert half.wait(30)
        stop_sending, ordinary, lock = threading.Event(), [], threading.Lock()

        def client() -> None:
            with requests.Session() as session:
                while not stop_sending.is_set():
                    files = [("images", (f"{i}.jpg", JPEG_SAMPLE, "image/jpeg")) for i in range(8)]
                    try:
                        status = session.post(served.url + "/classify", files=files, data={"model": RGB_MODEL.name},
                                              timeout=120).status_code
                    except requests.RequestException as err:
                        status = type(err).__name__
                    with lock:
                        ordinary.append(status)

        clients = [threading.Thread(target=client) for _ in range(8)]
        for thread in clients:
            thread.start()
        time.sleep(3)
        stop_sending.set()
        time.sleep(0.3)
        engine("kill", "--signal", "TERM", served.name)
        time.sleep(1.0)  # the service is draining: the trickled bodies arrive now
        finish.set()
        for thread in threads + clients:
            thread.join(120)
        status = served.exit_code(timeout=STOP_TIMEOUT_S)
        logs = served.logs()
    assert trickled == ["200"] * 4, f"requests in flight at SIGTERM: {trickled}\n{logs[-4000:]}"
    assert ordinary and set(ordinary) == {200}, f"{len(ordinary)} requests: {sorted(set(map(str, ordinary)))}\n{logs[-4000:]}"
    assert status == 0, f"exit status {status} after SIGTERM\n{logs[-4000:]}"
