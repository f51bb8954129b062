"""The benchmark's load generator: a closed loop of `concurrency` clients, each sending its next
request as soon as the last one is answered, with asyncio and aiohttp in one thread.

It is built not to be the bottleneck: the bodies (multipart, or KServe v2 binary requests made by
loadtests/v2.py) are encoded once, before the run, and sent as bytes; one connection per client is opened once and reused (keep-alive); answers are read
but parsed only for the first answer of each level (every answer's status is checked). Its own CPU
time is measured (`cpu_s`), so that a report can say what share of the machine it took.

A level runs in three phases: warm-up (until `warmup_s` have passed and every client has had an
answer, so that queues are full), the measurement window (`duration_s`, longer if needed until
`min_requests` answers came in it), then a drain (no new requests; answers still in flight are
awaited, not counted, so that the next level starts on an idle server). Counted: answers that
arrive inside the window; throughput = their images / window length.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

import aiohttp
import numpy as np

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Body:
    """One pre-encoded request body: multipart/form-data (multipart_body) or a KServe v2 binary
    infer request (loadtests/v2.py, whose length header goes in `headers`)."""

    data: bytes
    content_type: str
    images: int
    headers: Mapping[str, str] = field(default_factory=dict)  # more HTTP headers than Content-Type


def multipart_body(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None, field_name: str = "images") -> Body:
    """A multipart/form-data body with each file as a part named `field_name`, then the text `fields`."""
    boundary = "loadtest-" + secrets.token_hex(12)
    chunks = []
    for name, data in files:
        chunks += [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{name}\"\r\n"
                   f"Content-Type: {_content_type(name)}\r\n\r\n".encode(), data, b"\r\n"]
    for key, value in (fields or {}).items():
        chunks.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n{value}\r\n".encode())
    chunks.append(f"--{boundary}--\r\n".encode())
    return Body(b"".join(chunks), f"multipart/form-data; boundary={boundary}", len(files))


def _content_type(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower()
    return {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
            "bmp": "image/bmp", "gif": "image/gif"}.get(suffix, "application/octet-stream")


def request_bodies(files: list[tuple[str, bytes]], images_per_request: int, fields: dict[str, str] | None = None,
                   count: int | None = None, encode: Callable[[list[tuple[str, bytes]]], Body] | None = None) -> list[Body]:
    """Bodies of `images_per_request` files each, taking the files in turn (wrapping around), so that
    every file is sent about equally often; `count` bodies (default: enough to use every file once).
    `encode` makes a body of some files (default: multipart_body with `fields`)."""
    count = count or max(1, -(-len(files) // images_per_request))
    cycle = itertools.cycle(files)
    encode = encode or (lambda chunk: multipart_body(chunk, fields))
    return [encode([next(cycle) for _ in range(images_per_request)]) for _ in range(count)]


def classify_labels(answer: object) -> list[str] | None:
    """The top-1 label of each image in a /classify answer (the service's, the floor's, the naive
    server's: a list of {"label": ...}), or None where the answer is not one."""
    if not isinstance(answer, list) or not all(isinstance(entry, dict) and "label" in entry for entry in answer):
        return None
    return [entry["label"] for entry in answer]


def parse_json(payload: bytes, headers: Mapping[str, str] | None = None) -> object:
    """A JSON answer, or its first 200 characters where it is not JSON."""
    try:
        return json.loads(payload)
    except ValueError:
        return payload[:200].decode(errors="replace")


@dataclass(frozen=True)
class Endpoint:
    """What a load test sends to a server and how it reads the answers: the URL path, the bodies
    of N images each (made once per level), the parser of an answer (body, HTTP headers), and the
    top-1 label of each image in a parsed answer (None: not an answer)."""

    path: str
    bodies: Callable[[list[tuple[str, bytes]], int], list[Body]]
    parse: Callable[[bytes, Mapping[str, str]], object] = parse_json
    labels: Callable[[object], list[str] | None] = classify_labels


def classify_endpoint(fields: dict[str, str] | None = None) -> Endpoint:
    """POST /classify with multipart bodies (and the text `fields`): the service's API."""
    return Endpoint("/classify", lambda files, per_request: request_bodies(files, per_request, fields))


@dataclass
class LevelResult:
    """What one level measured; `summary()` is what reports keep."""

    concurrency: int
    images_per_request: int
    window_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0  # the load generator's own CPU time in the window
    snapshots: tuple[object, object] | None = None  # what `snapshot` returned at the window's start and end
    first_answer: object = None

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    def summary(self) -> dict:
        latencies_ms = np.asarray(self.latencies_s) * 1000
        window = max(self.window_s, 1e-9)
        answered = {
            "concurrency": self.concurrency,
            "images_per_request": self.images_per_request,
            "window_s": round(self.window_s, 3),
            "requests": self.requests,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "requests_per_s": self.requests / window,
            "images_per_s": self.requests * self.images_per_request / window,
            "latency_ms": {f"p{p}": float(np.percentile(latencies_ms, p)) if len(latencies_ms) else None for p in PERCENTILES}
                          | {"mean": float(latencies_ms.mean()) if len(latencies_ms) else None,
                             "max": float(latencies_ms.max()) if len(latencies_ms) else None},
            "client_cpu_ms_per_request": 1000 * self.cpu_s / self.requests if self.requests else None,
            "client_cpu_share": self.cpu_s / window,  # of one core
        }
        return answered


async def _run_level(url: str, bodies: list[Body], concurrency: int, *, warmup_s: float, duration_s: float,
                     min_requests: int, max_window_s: float, timeout_s: float,
                     snapshot: Callable[[], Awaitable[object]] | None,
                     parse: Callable[[bytes, Mapping[str, str]], object]) -> LevelResult:
    result = LevelResult(concurrency, bodies[0].images)
    headers = [{"Content-Type": body.content_type, **body.headers} for body in bodies]
    loop = asyncio.get_running_loop()
    started = loop.time()
    answered_once = 0
    all_answered = asyncio.Event()
    window_open = window_close = None  # loop times
    stop = False

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, force_close=False,
                                     enable_cleanup_closed=True, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)) as session:

        async def client(index: int) -> None:
            nonlocal answered_once
            first = True
            for turn in itertools.count():
                if stop:
                    return
                which = (index + turn * concurrency) % len(bodies)
                sent = loop.time()
                try:
                    async with session.post(url, data=bodies[which].data, headers=headers[which]) as response:
                        payload = await response.read()
                        outcome = str(response.status) if not 200 <= response.status < 300 else None
                        answer_headers = response.headers
                except asyncio.TimeoutError:
                    payload, outcome = b"", "timeout"
                except aiohttp.ClientError as err:
                    payload, outcome = b"", type(err).__name__
                done = loop.time()
                if first:
                    first = False
                    answered_once += 1
                    if answered_once == concurrency:
                        all_answered.set()
                if window_open is not None and window_open <= done and (window_close is None or done <= window_close):
                    if outcome is None:
                        result.latencies_s.append(done - sent)
                        if result.first_answer is None:
                            result.first_answer = parse(payload, answer_headers)
                    else:
                        result.errors[outcome] = result.errors.get(outcome, 0) + 1

        tasks = [asyncio.create_task(client(i)) for i in range(concurrency)]
        # warm-up: every client answered once, and at least warmup_s
        await all_answered.wait()
        await asyncio.sleep(max(0.0, started + warmup_s - loop.time()))
        first_snapshot = await snapshot() if snapshot else None
        cpu_start = time.process_time()
        window_open = loop.time()
        await asyncio.sleep(duration_s)
        while result.requests + sum(result.errors.values()) < min_requests and loop.time() - window_open < max_window_s:
            await asyncio.sleep(0.05)
        window_close = loop.time()
        result.cpu_s = time.process_time() - cpu_start
        result.window_s = window_close - window_open
        last_snapshot = await snapshot() if snapshot else None
        result.snapshots = (first_snapshot, last_snapshot)
        stop = True  # drain: the answers in flight come back, uncounted
        await asyncio.gather(*tasks)
    return result


def run_level(url: str, bodies: list[Body], concurrency: int, *, warmup_s: float = 2.0, duration_s: float = 5.0,
              min_requests: int = 0, max_window_s: float = 60.0, timeout_s: float = 300.0,
              snapshot: Callable[[], object] | None = None,
              parse: Callable[[bytes, Mapping[str, str]], object] = parse_json) -> LevelResult:
    """Load `url` (POST) with `concurrency` clients sending `bodies` in turn; see the module docstring.

    `snapshot`, called (in a thread) right before and after the window, records what the server
    reports (its /metrics, its CPU time), so that the window's differences can be taken. `parse(body,
    headers)` reads the level's first answer (LevelResult.first_answer; default: JSON)."""
    async def snap():
        return await asyncio.to_thread(snapshot) if snapshot else None

    return asyncio.run(_run_level(url, bodies, concurrency, warmup_s=warmup_s, duration_s=duration_s,
                                  min_requests=min_requests, max_window_s=max_window_s, timeout_s=timeout_s,
                                  snapshot=snap if snapshot else None, parse=parse))
