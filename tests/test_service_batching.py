"""The batching queue (service/batching.py) in-process, on BentoML's own adaptive batcher: concurrent
calls share batches, each caller gets its own rows back, oversized requests are split, a full queue
sheds with 503 `overloaded`, a stuck batch is 503 `unavailable`, and the saturation metrics add up.

The batch function stands in for ONNX Runtime (the queue is what is tested; the service's HTTP
tests run the real engine behind it): each image's "probabilities" are its own pixel sum, so a
row that reached the wrong caller shows.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.batching import BatchQueue
from service.errors import Reason, Rejection


def _images(n: int, start: int = 0) -> np.ndarray:
    return np.stack([np.full((2, 2, 1), start + i, np.float32) for i in range(n)])


class Engine:
    """Records the batch sizes it is given; takes `seconds` per batch; blocks while `gate` is clear."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.gate.wait()
        time.sleep(self.seconds)
        self.batches.append(len(images))
        total = images.reshape(len(images), -1).sum(axis=1)
        return {"probabilities": total[:, None], "features": np.repeat(total[:, None], 3, axis=1)}


def _queue(model: str, engine: Engine, **options) -> BatchQueue:
    return BatchQueue(model, engine, **{"max_batch_size": 8, "max_latency_ms": 5000, "timeout_s": 30.0, **options})


def _sample(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": model}) or 0.0


def test_concurrent_calls_share_batches_and_each_gets_its_own_rows():
    engine = Engine(seconds=0.02)

    async def main():
        queue = _queue("batch-share", engine)
        return await asyncio.gather(*(queue.run(_images(1, start=10 * i)) for i in range(24)))

    answers = asyncio.run(main())
    assert [float(rows["probabilities"][0, 0]) for rows in answers] == [4.0 * 10 * i for i in range(24)]
    assert max(engine.batches) > 1 and sum(engine.batches) == 24 and max(engine.batches) <= 8
    assert _sample("imgcls_queue_wait_seconds_count", "batch-share") == 24
    assert _sample("imgcls_requests_in_flight", "batch-share") == 0


def test_a_request_larger_than_a_batch_is_split_and_answered_in_order():
    engine = Engine()

    async def main():
        return await _queue("batch-split", engine, max_batch_size=4).run(_images(10))

    rows = asyncio.run(main())
    assert rows["probabilities"][:, 0].tolist() == [4.0 * i for i in range(10)]
    assert rows["features"].shape == (10, 3) and max(engine.batches) <= 4 and sum(engine.batches) == 10


def test_a_full_queue_sheds_calls_as_overloaded():
    engine = Engine(seconds=0.05)

    async def main():
        queue = _queue("batch-shed", engine, max_latency_ms=20, max_batch_size=2)
        return await asyncio.gather(*(queue.run(_images(2)) for _ in range(40)), return_exceptions=True)

    outcomes = asyncio.run(main())
    shed = [o for o in outcomes if isinstance(o, Rejection)]
    assert shed and all(o.reason is Reason.OVERLOADED and o.status == 503 for o in shed)
    assert all(isinstance(o, np.ndarray) for o in outcomes if not isinstance(o, Rejection)), outcomes
    assert _sample("imgcls_requests_in_flight", "batch-shed") == 0


def test_a_batch_that_never_finishes_is_unavailable_and_the_queue_recovers(caplog):
    engine = Engine()
    engine.gate.clear()

    async def main():
        queue = _queue("batch-stuck", engine, timeout_s=0.3)
        with pytest.raises(Rejection) as caught:
            await queue.run(_images(1))
        engine.gate.set()  # the engine goes on: the next call is answered
        return caught.value, await queue.run(_images(1, start=3))

    rejection, rows = asyncio.run(main())
    assert rejection.reason is Reason.UNAVAILABLE and rejection.status == 503
    assert float(rows["probabilities"][0, 0]) == 12.0
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "inference of model batch-stuck gave no answer within 0.3 s"]
