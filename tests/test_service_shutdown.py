"""SIGTERM drains: every request the server holds is answered, then `bentoml serve` exits 0; one that
cannot finish within SERVICE_SHUTDOWN_GRACE_S is given up on, and the server still exits.

Requests are held in flight deterministically: each client sends its headers and half its body,
the server is signalled, and only then does each client send the rest.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from loadtests.loadgen import multipart_body
from loadtests.servers import Server, serve_env
from tests.service_helpers import JPEG_SAMPLE, RGB_MODEL, register


def _request_bytes(port: int) -> bytes:
    body = multipart_body([("a.jpg", JPEG_SAMPLE)])
    head = (f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {body.content_type}\r\n"
            f"Content-Length: {len(body.data)}\r\n\r\n").encode()
    return head + body.data


def _status(sock: socket.socket) -> int:
    sock.settimeout(30)
    answer = b""
    while b"\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {answer!r}")
        answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def server(tmp_path):
    def start(**settings) -> Server:
        home = tmp_path / "home"
        if not home.exists():
            register(RGB_MODEL, home)
        running = Server.bentoml("service.service:ImageClassifier", serve_env(home, SERVICE_MODELS=RGB_MODEL.name, **settings),
                                 tmp_path / "server.log")
        running.wait_ready()
        started.append(running)
        return running

    started: list[Server] = []
    yield start
    for running in started:
        running.stop()


def _half_sent(server: Server, count: int) -> list[tuple[socket.socket, bytes]]:
    request = _request_bytes(server.port)
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(request[: len(request) // 2])
        held.append((sock, request[len(request) // 2:]))
    time.sleep(0.5)  # every connection accepted and its request begun
    return held


def test_sigterm_answers_every_request_in_flight_then_exits_0(server):
    running = server(SERVICE_WORKERS="2")
    held = _half_sent(running, 8)
    os.kill(running.process.pid, signal.SIGTERM)
    time.sleep(1.0)  # the workers have stopped accepting; the requests they hold go on
    for sock, rest in held:
        sock.sendall(rest)
    assert [_status(sock) for sock, _ in held] == [200] * 8
    assert running.process.wait(30) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.port), timeout=2)
    assert "Traceback" not in running.log()


def test_a_request_that_never_finishes_is_given_up_after_the_grace_period(server):
    running = server(SERVICE_SHUTDOWN_GRACE_S="2")
    (sock, _), = _half_sent(running, 1)
    signalled = time.monotonic()
    os.kill(running.process.pid, signal.SIGTERM)
    running.process.wait(30)
    assert time.monotonic() - signalled < 15
    assert "requests still in flight after the 2 s grace period" in running.log()
    sock.close()
