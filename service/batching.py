"""Adaptive batching in the worker that received the request: one BentoML batching queue per model and kind.

A request's images join their model's queue (`BatchQueue.run`); BentoML's own adaptive batcher
(CorkDispatcher, what `@bentoml.api(batchable=True)` uses) gathers the images of concurrent requests
into one batch, within SERVICE_MAX_BATCH_SIZE and SERVICE_MAX_LATENCY_MS, and calls the engine once
for it, in a thread of its own (ONNX Runtime releases the GIL: the event loop goes on parsing and
decoding meanwhile). A queue runs up to `concurrency` batches at once (SERVICE_CONCURRENT_BATCHES,
what Triton calls instances; on the CPU the worker's share of the cores, each batch on one intra-op
thread: docs/benchmarks.md compares the choices), and gathers the next batch while they run. Every
model, and /explain's graph, has its own queue, so no model's batch waits behind another's.

Why here and not in a second BentoML service: BentoML batches only calls that reach a batchable API
over HTTP, so a batching service of its own costs each request a second HTTP call between processes
carrying its tensors, which cost as much CPU as the inference (docs/benchmarks.md measures both
designs side by side). The batcher is the same; the hop is gone.

What the queue reports: imgcls_queue_wait_seconds{model} (enqueued until its batch starts),
imgcls_requests_in_flight{model} (images admitted and not yet answered), and the engine's own
inference time and batch size histograms. A request the batcher sheds (it could not be answered
within SERVICE_MAX_LATENCY_MS) is a 503 `overloaded`; a batch that does not finish within the
queue's `timeout_s` (an engine stuck or far too slow) is a 503 `unavailable` for the requests in it,
logged in one line; the batch itself cannot be stopped, so it keeps its place among the queue's
concurrent batches until it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import anyio
import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher, NonBlockSema

from . import metrics
from .errors import Reason, Rejection

# A batch function: images [N, H, W, C] float32 -> named outputs, each with N rows.
BatchFunction = Callable[[np.ndarray], dict[str, np.ndarray]]
_STARTED = "_started"
log = logging.getLogger("bentoml.image_classifier")


class _Shed(Exception):
    """The batcher's fallback: the call waited longer than the queue's latency budget."""


def _shed() -> None:
    raise _Shed()


class BatchQueue:
    """One model's (and kind's) batching queue, in this worker."""

    def __init__(self, model: str, run_batch: BatchFunction, *, max_batch_size: int, max_latency_ms: int,
                 timeout_s: float, concurrency: int = 1) -> None:
        self.model = model
        self.max_latency_ms = max_latency_ms
        self.timeout_s = timeout_s
        self._run_batch = run_batch
        self._dispatcher = CorkDispatcher(max_latency_in_ms=max_latency_ms, max_batch_size=max_batch_size,
                                          shared_sema=NonBlockSema(concurrency), fallback=_shed,
                                          get_batch_size=len, batch_dim=(0, 0))
        self._call = self._dispatcher(self._batch)
        self._in_flight = metrics.IN_FLIGHT.labels(model=model)
        self._queue_wait = metrics.QUEUE_WAIT_SECONDS.labels(model=model)

    async def run(self, images: np.ndarray) -> np.ndarray:
        """The outputs for `images` [n, H, W, C] (float32 0-255), one structured row per image, or a
        503 Rejection when the queue sheds them."""
        self._in_flight.inc(len(images))
        enqueued = time.time()
        call = asyncio.ensure_future(self._call(images))
        call.add_done_callback(_drop_outcome)
        try:
            # Shielded: a call given up on stays in its batch, which cannot be stopped; its outcome is dropped.
            rows = await asyncio.wait_for(asyncio.shield(call), self.timeout_s)
        except _Shed:
            raise Rejection(Reason.OVERLOADED, f"model {self.model} has more requests queued than it can answer "
                                               f"within {self.max_latency_ms} ms; retry later") from None
        except asyncio.TimeoutError:
            log.error("inference of model %s gave no answer within %g s", self.model, self.timeout_s)
            raise Rejection(Reason.UNAVAILABLE, f"model {self.model} gave no answer within {self.timeout_s:g} s; "
                                                "retry later") from None
        finally:
            self._in_flight.dec(len(images))
        # A request larger than the room left in a batch is split across batches: it waited until the first began.
        self._queue_wait.observe(max(0.0, float(rows[_STARTED].min()) - enqueued))
        return rows

    async def _batch(self, parts: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        """The dispatcher's callback: the requests' arrays as one batch, through the engine in a thread."""
        started = time.time()
        sizes = [len(part) for part in parts]
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        outputs = await anyio.to_thread.run_sync(self._run_batch, batch)
        rows = np.empty(len(batch), dtype=[(_STARTED, np.float64)] + [
            (name, array.dtype, array.shape[1:]) for name, array in outputs.items()])
        rows[_STARTED] = started
        for name, array in outputs.items():
            rows[name] = array
        return np.split(rows, np.cumsum(sizes)[:-1])


def _drop_outcome(call: asyncio.Future) -> None:
    """Retrieve a call's outcome, so that asyncio does not log one that nobody waited for any more."""
    if not call.cancelled():
        call.exception()
